"""Starting, checking and stopping one plugin worker process (``coordinator.plugins.worker``).

``start_worker`` copies the plugin directory into a snapshot (the worker runs the copy, so a
half-saved edit is never imported, and the version can be started again after its files
changed), starts ``python -m coordinator.plugins.worker`` on it, waits for its ``ready`` line
(``ready_timeout``: a plugin that hangs while importing is killed), then asks each agent's
``healthcheck`` handler, if it has one. Any failure kills the worker, removes the snapshot and
raises ``WorkerFailed`` with the reason. ``Worker.stop`` drains: SIGTERM (the worker stops
taking work, finishes what it holds within ``shutdown_grace``, leaves), SIGKILL after a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent_sdk.bus import Bus
from agent_sdk.plugin import HEALTHCHECK
from agent_sdk.tasks import cancel_and_wait
from schemas.errors import AgentbusError
from schemas.plugin import PluginManifest

__all__ = ["Worker", "WorkerFailed", "start_worker"]

log = logging.getLogger("agentbus.plugins")

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "*~", "*.swp")
_TAIL = 20


class WorkerFailed(AgentbusError):
    """A plugin version could not be started, or did not pass its checks (``reason``)."""


@dataclass(eq=False)
class Worker:
    """One running worker process: a plugin version's agents."""

    manifest: PluginManifest
    source: Path
    snapshot: Path
    slot: str
    proc: asyncio.subprocess.Process
    agents: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL))
    #: Set when the supervisor stops it (an exit before that is a crash).
    stopping: bool = False
    _pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        """The last lines it wrote on stderr (for a reason)."""
        lines = [line for line in self.stderr_tail if line.strip()]
        return " | ".join(lines[-3:]) or "(nothing on stderr)"

    async def stop(self, grace: float) -> int:
        """Drain and stop; SIGKILL after ``grace`` seconds. Returns the exit status."""
        self.stopping = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.proc.wait()
            except TimeoutError:
                log.warning("%s: worker %d did not drain in %.1fs: killed",
                            self.manifest.name, self.pid, grace)  # fmt: skip
                await self.kill()
        await self._close()
        return self.proc.returncode if self.proc.returncode is not None else -1

    async def kill(self) -> None:
        self.stopping = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        await self._close()

    async def _close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        if self._pumps:  # the process has exited: its pipes end; give the last lines a moment
            await asyncio.wait(self._pumps, timeout=1.0)
        for task in self._pumps:
            await cancel_and_wait(task)
        self._pumps.clear()

    def remove_snapshot(self) -> None:
        shutil.rmtree(self.snapshot, ignore_errors=True)


async def _pump_stderr(worker: Worker, stream: asyncio.StreamReader) -> None:
    prefix = f"[{worker.manifest.name} {worker.manifest.version} pid {worker.pid}]"
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        worker.stderr_tail.append(text)
        sys.stderr.write(f"{prefix} {text}\n")


async def _read_ready(worker: Worker, stream: asyncio.StreamReader) -> None:
    """Wait for the worker's ``ready`` line; raise ``WorkerFailed`` for anything else."""
    while True:
        line = await stream.readline()
        if not line:
            code = await worker.proc.wait()
            await asyncio.sleep(0)  # let the stderr pump take the last lines
            raise WorkerFailed(
                f"the worker exited with status {code} before it was ready: {worker.tail()}"
            )
        try:
            message: dict[str, Any] = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if message.get("event") == "ready":
            worker.agents = list(message.get("agents", []))
            worker.handlers = list(message.get("handlers", []))
            return
        if message.get("event") == "failed":
            await worker.proc.wait()
            reason = str(message.get("reason", "the plugin could not be loaded"))
            # name the user's directory, not the snapshot the worker ran
            raise WorkerFailed(reason.replace(str(worker.snapshot), str(worker.source)))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass


async def start_worker(
    source: Path,
    manifest: PluginManifest,
    *,
    snapshot: Path,
    slot: str,
    names: list[str],
    bus: Bus,
    env: dict[str, str],
    ready_timeout: float,
    health_timeout: float,
    grace: float,
) -> Worker:
    """Snapshot ``source``, start its worker, wait until it serves and passes its checks."""
    await asyncio.to_thread(shutil.copytree, source, snapshot, ignore=_IGNORED)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coordinator.plugins.worker", str(snapshot),
            "--names", ",".join(names),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise WorkerFailed(f"cannot start a worker process: {e}") from e
    worker = Worker(manifest, source, snapshot, slot, proc)
    assert proc.stdout is not None
    assert proc.stderr is not None
    worker._pumps.append(asyncio.create_task(_pump_stderr(worker, proc.stderr)))
    try:
        try:
            async with asyncio.timeout(ready_timeout):
                await _read_ready(worker, proc.stdout)
        except TimeoutError:
            raise WorkerFailed(
                f"not ready within {ready_timeout:g}s (hanging while importing or starting?): "
                f"{worker.tail()}"
            ) from None
    except BaseException:
        await worker.kill()
        worker.remove_snapshot()
        raise
    worker._pumps.append(asyncio.create_task(_drain(proc.stdout)))
    try:
        if HEALTHCHECK in worker.handlers:
            await _healthcheck(worker, bus, health_timeout)
    except BaseException:
        await worker.stop(grace)  # registered: it leaves (its names are free at once)
        worker.remove_snapshot()
        raise
    return worker


async def _healthcheck(worker: Worker, bus: Bus, timeout: float) -> None:
    for agent in worker.agents:
        try:
            await bus.request(agent, HEALTHCHECK, {}, timeout=timeout)
        except AgentbusError as e:
            raise WorkerFailed(f"the healthcheck of {agent} failed: {e}") from e
