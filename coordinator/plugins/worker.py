"""One plugin's worker process: ``python -m coordinator.plugins.worker DIR --names a,b``.

The supervisor (``coordinator.plugins.supervisor``) starts one per plugin version. The worker
applies the manifest's memory limit, loads the plugin (``agent_sdk.plugin.load_plugin``), puts
its agents on a ``Host`` under the given names and runs it until SIGTERM (drain, leave, exit 0),
or until its standard input closes (the supervisor is gone: it drains the same way).

It tells the supervisor how loading went with one JSON line on its original standard output,
which is kept for that alone (the plugin's own prints go to standard error)::

    {"event": "ready", "agents": ["echo.a0"], "handlers": ["echo", "healthcheck"]}
    {"event": "failed", "reason": "...manifest.yaml: version: ...", "details": {...}}

Exit status: 0 after a clean stop, 1 when the host could not start or stopped on its own, 3 when
the plugin could not be loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import threading
from pathlib import Path
from typing import Any, TextIO

import orjson

from agent_sdk.host import Host
from agent_sdk.plugin import load_plugin
from agent_sdk.plugin_manifest import read_manifest
from agent_sdk.runner import configure_logging, run_coroutine, serve
from agent_sdk.settings import Settings
from schemas.errors import AgentbusError, PluginError

__all__ = ["EXIT_LOAD_FAILED", "main"]

log = logging.getLogger("agentbus.plugins.worker")

#: Exit status when the plugin could not be loaded (its reason was reported).
EXIT_LOAD_FAILED = 3


def _report(channel: TextIO, event: str, **fields: Any) -> None:
    channel.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    channel.flush()


def _limit_memory(directory: Path) -> None:
    """Apply ``resources.memory`` as the process's address-space limit (best effort: the
    manifest is checked again, with a clear error, by the load that follows)."""
    try:
        memory = read_manifest(directory).resources.memory
    except PluginError:
        return
    if memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))


def _stop_when_orphaned() -> None:
    """Drain (as on SIGTERM) once standard input closes: the supervisor has gone."""

    def wait() -> None:
        try:
            while os.read(0, 4096):  # unbuffered: no lock held at interpreter shutdown
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="agentbus-orphan-watch", daemon=True).start()


async def _run(directory: Path, names: list[str], channel: TextIO) -> int:
    try:
        plugin = load_plugin(directory)
        host = Host(Settings(), name=f"plugins.{names[0]}.{os.getpid()}", max_agents=len(names))
        agents = await plugin.build(host, names)
    except PluginError as e:
        _report(channel, "failed", reason=e.description, details=e.details)
        return EXIT_LOAD_FAILED
    except AgentbusError as e:  # a card the registry would refuse, bad settings
        _report(channel, "failed", reason=str(e), details=e.details)
        return EXIT_LOAD_FAILED
    handlers = sorted({t for agent in agents for t in agent.handlers.types})

    def started() -> None:
        _report(channel, "ready", agents=[a.name for a in agents], handlers=handlers)

    return await serve(host, started=started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.plugins.worker")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--names", required=True, help="agent names, comma-separated")
    args = parser.parse_args(argv)
    # fd 1 is the supervisor's channel: keep it, and send everything else printed to stderr
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    configure_logging(logging.INFO)
    _limit_memory(args.directory)
    _stop_when_orphaned()
    names = [n for n in args.names.split(",") if n]
    return run_coroutine(_run(args.directory, names, channel))


if __name__ == "__main__":
    raise SystemExit(main())
