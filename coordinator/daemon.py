"""The coordinator as a process: signals, logging, event loop, exit codes.

``run_daemon(settings)`` runs one ``Coordinator`` (saying so in one line on stderr once it
runs) until SIGINT/SIGTERM, then drains (bounded by
``drain_timeout``) and returns 0; a second signal exits at once with 128 + signal number. A
coordinator that cannot start (Redis unreachable, bad settings) returns 1, as does one whose loops
died. This is the only place agentbus installs signal handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from schemas.errors import AgentbusError

__all__ = ["configure_logging", "run_daemon", "serve"]

log = logging.getLogger("agentbus.coordinator.daemon")


def configure_logging(settings: CoordinatorSettings, level: int | str = logging.INFO) -> None:
    """Log to stderr, each line naming the coordinator id (no-op if logging is configured)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s coordinator[{settings.coordinator_id}] "
            "%(name)s: %(message)s"
        )
    )
    root.addHandler(handler)
    root.setLevel(level)


async def serve(settings: CoordinatorSettings) -> int:
    """Run a coordinator until a signal; return the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s received: draining (again to exit at once)", signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("second signal: exiting without draining")
            os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    coordinator = Coordinator(settings)
    try:
        try:
            await coordinator.start()
        except AgentbusError as e:
            log.error("cannot start: %s", e)
            return 1
        print(  # one line whatever the log level: what it serves, and who it is
            f"agentbus coordinator {settings.coordinator_id}: running on {settings.display_url} "
            f"(namespace {settings.namespace}); SIGTERM drains, a second one exits",
            file=sys.stderr,
            flush=True,
        )
        stopping = asyncio.ensure_future(stop.wait())
        stopped = asyncio.ensure_future(coordinator.wait_stopped())
        await asyncio.wait({stopping, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        stopped.cancel()
        fatal = not stop.is_set()
        await coordinator.stop()
        if fatal:
            log.error("coordinator stopped on its own after a fatal error")
            return 1
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def run_daemon(settings: CoordinatorSettings) -> int:
    """Run a coordinator in this process until SIGINT/SIGTERM; return the exit code."""
    configure_logging(settings)
    return _run(serve(settings))
