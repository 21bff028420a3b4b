"""Fallback launcher: ``python -m bench.run_coordinator`` runs ``coordinator.service.Coordinator``
from ``AGENTBUS_*`` variables until SIGTERM (used when ``python -m coordinator`` is missing)."""

from __future__ import annotations

import asyncio
import signal

from bench.procs import pick_loop, run


async def _main() -> None:
    from coordinator.service import Coordinator
    from coordinator.settings import CoordinatorSettings

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Coordinator(CoordinatorSettings()) as coordinator:
        waiter = asyncio.ensure_future(coordinator.wait_stopped())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()


if __name__ == "__main__":
    run(_main(), pick_loop())
