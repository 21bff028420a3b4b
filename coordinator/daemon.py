"""The coordinator as a process: signals, logging, event loop, exit codes.

``run_daemon(settings)`` runs one ``Coordinator`` (saying so in one line on stderr once it runs)
until SIGINT/SIGTERM, then drains (bounded by ``drain_timeout``) and returns 0; a second signal
exits at once with 128 + signal number. A coordinator that cannot start (Redis unreachable, bad
settings) returns 1, as does one whose loops died. The signal handling is ``agent_sdk.runner``'s,
the one place agentbus installs handlers.
"""

from __future__ import annotations

import logging
import sys

from agent_sdk.runner import run_coroutine
from agent_sdk.runner import serve as serve_service
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings

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

    def started() -> None:  # one line whatever the log level: what it serves, and who it is
        print(
            f"agentbus coordinator {settings.coordinator_id}: running on {settings.display_url} "
            f"(namespace {settings.namespace}); SIGTERM drains, a second one exits",
            file=sys.stderr,
            flush=True,
        )

    return await serve_service(Coordinator(settings), started=started)


def run_daemon(settings: CoordinatorSettings) -> int:
    """Run a coordinator in this process until SIGINT/SIGTERM; return the exit code."""
    configure_logging(settings)
    return run_coroutine(serve(settings))
