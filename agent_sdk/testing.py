"""A real, private bus for your own tests: one line, no mocks.

``agentbus_for_tests()`` starts a ``redis-server`` on a free port (in a temporary directory) and a
coordinator as a subprocess (``python -m coordinator``), waits until the coordinator's health key
is up, and stops both afterwards. It works as a context manager in sync and async code::

    async with agentbus_for_tests() as bus:
        async with Agent(name="a1", role="worker", settings=bus.settings()) as agent:
            ...

or as a pytest fixture (one bus for the whole session)::

    # conftest.py
    from agent_sdk.testing import agentbus_fixture
    agentbus = agentbus_fixture()

    # test_mine.py
    async def test_it(agentbus):
        async with Agent(name="a1", role="worker", settings=agentbus.settings()) as agent: ...

The settings default to fast liveness (heartbeat 0.1 s, TTL 0.5 s) so dead agents vanish quickly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from schemas.errors import ConnectionFailed, NoCoordinator
from schemas.keys import DEFAULT_NAMESPACE, KeySpace

__all__ = ["PrivateBus", "agentbus_fixture", "agentbus_for_tests"]


class PrivateBus:
    """A ``redis-server`` (unless ``redis_url`` is given) plus one coordinator subprocess.

    ``start``/``stop`` are idempotent. ``settings()`` gives ``Settings`` pointing at the bus.
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        redis_url: str | None = None,
        heartbeat_interval: float = 0.1,
        ttl: float = 0.5,
        coordinator_env: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self._external_url = redis_url
        self.heartbeat_interval = heartbeat_interval
        self.ttl = ttl
        self.coordinator_env = dict(coordinator_env or {})
        self.startup_timeout = startup_timeout
        self.server: RedisServer | None = None
        self.coordinator: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    # -- what tests use ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._external_url is not None:
            return self._external_url
        if self.server is None:
            raise RuntimeError("the private bus is not started")
        return self.server.url

    def settings(self, **overrides: Any) -> Settings:
        """Settings for an agent or client on this bus (keyword arguments override)."""
        values: dict[str, Any] = {
            "redis_url": self.url,
            "namespace": self.namespace,
            "heartbeat_interval": self.heartbeat_interval,
            "ttl": self.ttl,
            "claim_interval": min(1.0, self.ttl),
        }
        values.update(overrides)
        return Settings(**values)

    @property
    def env(self) -> dict[str, str]:
        """``AGENTBUS_*`` variables for a subprocess that should join this bus."""
        return {
            "AGENTBUS_REDIS_URL": self.url,
            "AGENTBUS_NAMESPACE": self.namespace,
            "AGENTBUS_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
            "AGENTBUS_TTL": str(self.ttl),
        }

    @property
    def coordinator_log(self) -> Path | None:
        return self._workdir / "coordinator.log" if self._workdir else None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PrivateBus:
        if self.coordinator is not None and self.coordinator.poll() is None:
            return self
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="agentbus-test-"))
            if self._external_url is None:
                self.server = RedisServer(data_dir=self._workdir / "redis").start()
            self._start_coordinator()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_coordinator(self) -> None:
        assert self.coordinator_log is not None
        env = {**os.environ, **self.env, **self.coordinator_env}
        with self.coordinator_log.open("wb") as log:
            self.coordinator = subprocess.Popen(
                [sys.executable, "-m", "coordinator"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        keys = KeySpace(self.namespace)
        deadline = time.monotonic() + self.startup_timeout
        client = redis.Redis.from_url(
            self.url, socket_connect_timeout=1.0, socket_timeout=1.0, decode_responses=True
        )
        try:
            while True:
                assert self.coordinator is not None
                if self.coordinator.poll() is not None:
                    raise NoCoordinator(
                        f"the test coordinator exited with {self.coordinator.returncode}: "
                        + self._log_tail()
                    )
                try:
                    ids: list[str] = list(client.zrange(keys.coordinators(), 0, -1))  # type: ignore[arg-type]
                    if ids and client.exists(*(keys.coordinator_health(i) for i in ids)):
                        return
                except redis.RedisError as e:
                    raise ConnectionFailed(f"cannot reach the test Redis at {self.url}: {e}") from e
                if time.monotonic() > deadline:
                    raise NoCoordinator(
                        f"the test coordinator was not healthy within {self.startup_timeout}s: "
                        + self._log_tail()
                    )
                time.sleep(0.02)  # polling a child process: no event to wait on across processes
        finally:
            client.close()

    def _log_tail(self) -> str:
        log = self.coordinator_log
        text = log.read_text(errors="replace") if log and log.exists() else ""
        return text.strip()[-800:] or "(no output)"

    def stop(self) -> None:
        proc, self.coordinator = self.coordinator, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> PrivateBus:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def agentbus_for_tests(
    *,
    namespace: str = DEFAULT_NAMESPACE,
    redis_url: str | None = None,
    heartbeat_interval: float = 0.1,
    ttl: float = 0.5,
    coordinator_env: dict[str, str] | None = None,
    startup_timeout: float = 30.0,
) -> PrivateBus:
    """A private bus; use ``with`` or ``async with``. Arguments: see ``PrivateBus``."""
    return PrivateBus(
        namespace=namespace, redis_url=redis_url, heartbeat_interval=heartbeat_interval,
        ttl=ttl, coordinator_env=coordinator_env, startup_timeout=startup_timeout,
    )  # fmt: skip


def agentbus_fixture(
    *, name: str = "agentbus", scope: str = "session", **kwargs: Any
) -> Callable[..., Any]:
    """A pytest fixture giving a started ``PrivateBus``; assign it in ``conftest.py``.

    ``agentbus = agentbus_fixture()`` makes a fixture named ``agentbus`` (``name=`` changes it;
    one bus per session by default, ``scope="function"`` for one per test). Other keyword
    arguments go to ``PrivateBus``. pytest is imported only when this is called.
    """
    import pytest

    def _fixture() -> Iterator[PrivateBus]:
        with PrivateBus(**kwargs) as bus:
            yield bus

    return pytest.fixture(scope=scope, name=name)(_fixture)  # type: ignore[call-overload,no-any-return]
