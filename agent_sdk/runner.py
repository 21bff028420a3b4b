"""Running a service until SIGTERM or SIGINT: the executable edge.

``run(agent)`` (what ``agent.run()`` and ``agentbus run`` call) starts the service, waits for a
signal, then stops it gracefully: no new work is taken, in-flight handlers finish within
``shutdown_grace``, the agent leaves the registry at once (so a restart right away is never
refused). A second signal exits at once (status 128 + signal number). This module is the only
place the SDK installs signal handlers; library code never does.

It also sets Python's garbage collector for a process that carries many objects for long
(``tune_gc``), and collects while the event loop is idle (``paced``: ``agent_sdk._gcpace``).
Exit status: 0 after a clean stop; 1 when the service could not start (one line on stderr: no
traceback) or stopped on its own (an agent that lost its name to another instance).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from schemas.errors import AgentbusError, InvalidInput

__all__ = ["Service", "paced", "run", "serve", "tune_gc"]

log = logging.getLogger("agentbus.run")

T = TypeVar("T")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Service(Protocol):
    """What can be run: an ``Agent`` (a ``Host`` too, and the coordinator)."""

    async def start(self) -> Any: ...

    async def stop(self) -> None: ...

    async def wait_stopped(self) -> None: ...


def _describe(service: Service) -> str:
    return str(getattr(service, "name", None) or type(service).__name__)


async def serve(
    service: Service,
    *,
    install_signals: bool = True,
    started: Callable[[], None] | None = None,
) -> int:
    """Start ``service``, run it until SIGINT/SIGTERM (or until it stops on its own), stop it;
    return the process exit status. ``started`` is called once it runs (e.g. to say so)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []
    what = _describe(service)

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.warning(
                "%s: %s received: draining (again to exit at once)",
                what,
                signal.Signals(signum).name,
            )
            stop.set()
        else:
            log.warning("%s: second signal: exiting without draining", what)
            os._exit(128 + signum)

    if install_signals:
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            await service.start()
        except AgentbusError as e:
            log.error("%s cannot start: %s", what, e)
            return 1
        log.info("%s is running; SIGTERM or Ctrl-C stops it", what)
        if started is not None:
            started()
        stopping = asyncio.ensure_future(stop.wait())
        stopped = asyncio.ensure_future(service.wait_stopped())
        await asyncio.wait({stopping, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        stopped.cancel()
        on_its_own = not stop.is_set()
        await service.stop()
        if on_its_own:
            reason = getattr(service, "name_lost", None)
            log.error("%s stopped on its own%s", what, f": {reason}" if reason else "")
            return 1
        log.info("%s stopped cleanly", what)
        return 0
    finally:
        if install_signals:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr (no-op if the program configured logging itself)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


#: The collector's thresholds ``tune_gc`` sets (``AGENTBUS_GC_THRESHOLD`` names the first).
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> bool:
    """Collect garbage cycles less often than Python's default (every 700 new objects, and the
    whole heap every 100 such collections at most): ``GC_THRESHOLDS``, or
    ``AGENTBUS_GC_THRESHOLD`` (the first threshold; ``0`` leaves Python's). A host of 1,100
    agents adding 100 at once spent about a sixth of its CPU in the collector, most of it
    walking the long-lived agents again (docs/BENCHMARKS.md, session 11). Left alone when the
    program set its own thresholds. ``agentbus run``, ``agent.run()``, ``host.run()`` and the
    coordinator call it (and run ``paced``); a program that embeds a host may call it at start
    too. Whether it set the thresholds."""
    raw = os.environ.get("AGENTBUS_GC_THRESHOLD", "").strip()
    try:
        first = int(raw) if raw else GC_THRESHOLDS[0]
    except ValueError:
        first = -1
    if first < 0:
        raise InvalidInput(
            f"AGENTBUS_GC_THRESHOLD must be a whole number >= 0 (0: Python's own), got {raw!r}"
        )
    if first == 0 or gc.get_threshold() != (700, 10, 10):
        return False
    gc.set_threshold(first, *GC_THRESHOLDS[1:])
    return True


async def paced(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` with the collector paced (``agent_sdk._gcpace``: young collections in the
    idle moments of the loop rather than in the middle of a burst of work)."""
    from agent_sdk._gcpace import pace

    pacer = asyncio.create_task(pace(), name="agentbus-gc-pacer")
    try:
        return await coro
    finally:
        pacer.cancel()
        await asyncio.gather(pacer, return_exceptions=True)


def run_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when installed (the ``fast`` extra), else asyncio's loop (``tune_gc``
    first, and ``paced`` if it set the collector)."""
    try:
        tuned = tune_gc()
    except InvalidInput:
        coro.close()
        raise
    main = paced(coro) if tuned else coro
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


def run(service: Service) -> int:
    """Run ``service`` in this process until SIGINT/SIGTERM; return the exit status."""
    configure_logging(logging.WARNING)
    log.setLevel(logging.INFO)  # its start and stop lines
    return run_coroutine(serve(service))
