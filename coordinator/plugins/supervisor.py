"""``PluginSupervisor``: hosts every plugin found in some directories, one worker per plugin.

::

    async with PluginSupervisor(settings, [Path("plugins")], watch=True) as plugins:
        ...   # each plugin directory's agents serve; edits reload; deletions drain

What it does with a plugin directory (``<root>/<dir>/manifest.yaml``):

* **load**: read the manifest, start a worker process on a snapshot of the directory
  (``coordinator.plugins.workers``), wait until its agents serve and answer their
  ``healthcheck``; record it in the catalogue, emit ``plugin_loaded``.
* **reload** (the directory changed): start the new version the same way *beside* the running
  one (its agents take the other of two name slots, ``<name>.a0`` / ``<name>.b0``); only once it
  serves is the old worker drained (SIGTERM: no new work, in-flight work finishes, its agents
  leave); emit ``plugin_reloaded``. If any step fails, the new worker is killed, the old one
  keeps serving, and ``plugin_failed`` carries the reason.
* **crash** (a worker exits on its own): ``plugin_failed``; within ``probation`` seconds of a
  reload the previous version is started again (rollback), otherwise the same version is
  restarted with a growing delay (up to ``MAX_RESTARTS`` in a row).
* **unload** (the directory or its manifest is gone): drain the worker, remove the catalogue
  entry, emit ``plugin_unloaded``.

Operations on one plugin never overlap (a lock per plugin); plugins never wait on each other.
A plugin that fails never takes the supervisor or other plugins down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from redis.exceptions import RedisError

from agent_sdk.bus import Bus
from agent_sdk.plugin_manifest import read_manifest
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from coordinator.plugins.catalogue import Catalogue
from coordinator.plugins.watcher import watch_plugin_dirs
from coordinator.plugins.workers import Worker, start_worker
from schemas.errors import AgentbusError, InvalidInput, PluginError
from schemas.events import RegistryEventType as Ev
from schemas.plugin import MANIFEST_FILE, PluginManifest

__all__ = ["MAX_RESTARTS", "PluginSupervisor", "find_plugin_dirs"]

log = logging.getLogger("agentbus.plugins")

#: Restarts in a row of a version that keeps crashing before the supervisor gives up on it.
MAX_RESTARTS = 5
#: A worker that ran this long before crashing resets the restart count.
_STABLE_AFTER = 30.0


def find_plugin_dirs(root: Path) -> list[Path]:
    """The plugin directories directly under ``root`` (those holding a manifest; hidden ones,
    such as ``agentbus new``'s staging directories, are skipped)."""
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    )


@dataclass(eq=False)
class _Plugin:
    name: str
    source: Path
    manifest: PluginManifest
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    current: Worker | None = None
    #: The version before the last reload (its snapshot): what a crash in probation rolls back to.
    previous: tuple[PluginManifest, Path] | None = None
    #: The name slot of the last worker that started: the next one takes the other (the
    #: running one's names, or a crashed one's until its TTL runs out, are never reused).
    slot: str = "b"  # the first worker takes "a"
    restarts: int = 0
    monitors: set[asyncio.Task[None]] = field(default_factory=set)

    def next_slot(self) -> str:
        return "a" if self.slot == "b" else "b"


class PluginSupervisor:
    """An async context manager; ``start``/``stop`` are idempotent. Runnable by
    ``agent_sdk.runner.serve`` (``agentbus run --plugins``)."""

    def __init__(
        self,
        settings: Settings,
        roots: Sequence[Path | str],
        *,
        watch: bool = False,
        ready_timeout: float = 30.0,
        health_timeout: float = 5.0,
        debounce_ms: int = 300,
        probation: float = 10.0,
        name: str = "plugins",
    ) -> None:
        if not roots:
            raise InvalidInput("give at least one plugin directory")
        self.settings = settings
        self.roots = [Path(r).resolve() for r in roots]
        self.watch = watch
        self.ready_timeout = ready_timeout
        self.health_timeout = health_timeout
        self.debounce_ms = debounce_ms
        self.probation = probation
        self.name = name
        self.bus = Bus(settings)
        self.catalogue: Catalogue | None = None
        #: Loaded plugins by name (also those whose worker failed: a change retries them).
        self.plugins: dict[str, _Plugin] = {}
        self.stopped = asyncio.Event()
        #: Set once the watcher runs (and after each batch of changes it applied: ``applied``).
        self.watching = asyncio.Event()
        self.applied = 0
        self._state = "new"
        self._workdir: Path | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watching: asyncio.Event | None = None
        self._env = self._worker_env(settings)

    @staticmethod
    def _worker_env(settings: Settings) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in settings.model_dump().items():
            if value is not None and key != "redis_url":
                env[f"AGENTBUS_{key.upper()}"] = str(value)
        env["AGENTBUS_REDIS_URL"] = settings.url
        return env

    def __repr__(self) -> str:
        return (
            f"PluginSupervisor(roots={[str(r) for r in self.roots]}, plugins={len(self.plugins)})"
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> PluginSupervisor:
        if self._state != "new":
            return self
        self._state = "starting"
        missing = [str(r) for r in self.roots if not r.is_dir()]
        if missing:
            self._state = "stopped"
            self.stopped.set()
            raise InvalidInput(f"no such plugin directory: {', '.join(missing)}")
        await self.bus.start()
        self.catalogue = Catalogue(self.bus.client, self.settings.keys)
        self._workdir = Path(tempfile.mkdtemp(prefix="agentbus-plugins-"))
        dirs = [d for root in self.roots for d in find_plugin_dirs(root)]
        if not dirs:
            log.warning("no plugin found in %s", ", ".join(str(r) for r in self.roots))
        await asyncio.gather(*(self._load(d) for d in dirs))
        if self.watch:
            self._stop_watching = asyncio.Event()
            ready = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(ready), name="agentbus-plugins-watch")
            await ready.wait()
        self._state = "running"
        return self

    async def stop(self) -> None:
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            self.stopped.set()
            return
        if self._state == "stopping":
            await self.stopped.wait()
            return
        self._state = "stopping"
        try:
            if self._stop_watching is not None:
                self._stop_watching.set()
            if self._watcher is not None:
                await cancel_and_wait(self._watcher)
            await asyncio.gather(*(self._shutdown(p) for p in list(self.plugins.values())))
        finally:
            await self.bus.stop()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._state = "stopped"
            self.stopped.set()

    async def _shutdown(self, plugin: _Plugin) -> None:
        async with plugin.lock:
            for task in list(plugin.monitors):
                await cancel_and_wait(task)
            if plugin.current is not None:
                await plugin.current.stop(self._grace)
                plugin.current = None
                await self._catalogue_update(plugin.name, status="stopped", agents="")

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    async def __aenter__(self) -> PluginSupervisor:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def _grace(self) -> float:
        return self.settings.shutdown_grace + 5.0

    # -- one plugin ----------------------------------------------------------------------------
    def _names(self, manifest: PluginManifest, slot: str) -> list[str]:
        return [f"{manifest.name}.{slot}{i}" for i in range(manifest.replicas.min)]

    async def _start(self, plugin: _Plugin, source: Path, manifest: PluginManifest) -> Worker:
        assert self._workdir is not None
        slot = plugin.next_slot()
        snapshot = self._workdir / f"{manifest.name}-{slot}-{time.monotonic_ns()}"
        worker = await start_worker(
            source, manifest, snapshot=snapshot, slot=slot, names=self._names(manifest, slot),
            bus=self.bus, env=self._env, ready_timeout=self.ready_timeout,
            health_timeout=self.health_timeout, grace=self._grace,
        )  # fmt: skip
        plugin.slot = slot
        task = asyncio.create_task(
            self._monitor(plugin, worker), name=f"agentbus-plugin:{plugin.name}"
        )
        plugin.monitors.add(task)
        task.add_done_callback(plugin.monitors.discard)
        return worker

    async def _read(self, source: Path) -> PluginManifest:
        manifest = await asyncio.to_thread(read_manifest, source)
        owner = self.plugins.get(manifest.name)
        if owner is not None and owner.source != source and owner.source.exists():
            raise PluginError(
                f"{source}: plugin name {manifest.name!r} is already taken by {owner.source}",
                details={"plugin": str(source), "file": MANIFEST_FILE, "field": "name",
                         "reason": "name clash"},
            )  # fmt: skip
        return manifest

    async def _load(self, source: Path) -> None:
        try:
            manifest = await self._read(source)
        except AgentbusError as e:
            await self._failed(source.name, None, str(e))
            return
        plugin = self.plugins.get(manifest.name)
        if plugin is not None:  # known (failed before, or moved here): treat as a change
            await self._reload(plugin, source)
            return
        plugin = _Plugin(manifest.name, source, manifest)
        self.plugins[manifest.name] = plugin
        async with plugin.lock:
            try:
                plugin.current = await self._start(plugin, source, manifest)
            except AgentbusError as e:
                await self._record(plugin, manifest, status="failed", error=str(e))
                await self._failed(manifest.name, manifest, str(e))
                return
            await self._record(plugin, manifest, status="running")
            await self._event(Ev.PLUGIN_LOADED, manifest)
            log.info("plugin %s %s serves as %s", manifest.name, manifest.version,
                     ", ".join(plugin.current.agents))  # fmt: skip

    async def _reload(self, plugin: _Plugin, source: Path) -> None:
        async with plugin.lock:
            try:
                manifest = await self._read(source)
                if manifest.name != plugin.name:
                    raise PluginError(
                        f"{source}: the plugin's name changed from {plugin.name!r} to "
                        f"{manifest.name!r}: a rename is a new plugin (move it to a new "
                        "directory)",
                        details={"plugin": str(source), "field": "name", "reason": "renamed"},
                    )
                new = await self._start(plugin, source, manifest)
            except AgentbusError as e:
                old = plugin.current
                note = "; the running version keeps serving" if old is not None else ""
                await self._catalogue_update(plugin.name, last_error=str(e))
                if old is None:
                    await self._catalogue_update(plugin.name, status="failed")
                await self._failed(plugin.name, plugin.manifest, f"{e}{note}")
                return
            old, plugin.current = plugin.current, new
            plugin.source, previous, plugin.manifest = source, plugin.manifest, manifest
            await self._record(plugin, manifest, status="running")
            if old is not None:
                await old.stop(self._grace)
                self._forget_previous(plugin)
                plugin.previous = (previous, old.snapshot)
            await self._event(Ev.PLUGIN_RELOADED if old else Ev.PLUGIN_LOADED, manifest)
            drained = " (the previous version drained)" if old else ""
            log.info("plugin %s %s serves as %s%s", manifest.name, manifest.version,
                     ", ".join(new.agents), drained)  # fmt: skip

    async def _unload(self, plugin: _Plugin) -> None:
        async with plugin.lock:
            for task in list(plugin.monitors):
                await cancel_and_wait(task)
            if plugin.current is not None:
                await plugin.current.stop(self._grace)
                plugin.current.remove_snapshot()
                plugin.current = None
            self._forget_previous(plugin)
            self.plugins.pop(plugin.name, None)
            assert self.catalogue is not None
            await self.catalogue.remove(plugin.name)
            await self._event(Ev.PLUGIN_UNLOADED, plugin.manifest)
            log.info("plugin %s unloaded (its directory is gone)", plugin.name)

    @staticmethod
    def _forget_previous(plugin: _Plugin) -> None:
        if plugin.previous is not None:
            shutil.rmtree(plugin.previous[1], ignore_errors=True)
            plugin.previous = None

    async def _monitor(self, plugin: _Plugin, worker: Worker) -> None:
        """Wait for the worker to exit; an exit the supervisor did not ask for is a crash."""
        code = await worker.proc.wait()
        if worker.stopping:
            return
        lived = time.monotonic() - worker.started_at
        await worker.kill()  # closes its pipes
        reason = f"the worker of {worker.manifest.version} exited with status {code} after " \
                 f"{lived:.1f}s: {worker.tail()}"  # fmt: skip
        async with plugin.lock:
            if plugin.current is not worker:
                return
            plugin.current = None
            plugin.restarts = 0 if lived > _STABLE_AFTER else plugin.restarts + 1
            rollback = plugin.previous if lived < self.probation else None
            await self._catalogue_update(plugin.name, status="failed", agents="", last_error=reason)
            await self._failed(plugin.name, worker.manifest, reason)
            if rollback is not None:
                manifest, snapshot = rollback
                log.warning("plugin %s: rolling back to %s", plugin.name, manifest.version)
                plugin.previous = None
                await self._restart(plugin, snapshot, manifest, remove_source=True)
                worker.remove_snapshot()
                return
        if plugin.restarts > MAX_RESTARTS:
            log.error("plugin %s crashed %d times in a row: not restarted until it changes",
                      plugin.name, plugin.restarts)  # fmt: skip
            return
        await asyncio.sleep(min(30.0, 0.5 * 2**plugin.restarts))  # restart backoff
        async with plugin.lock:
            if plugin.current is None and self._state == "running":
                await self._restart(plugin, worker.snapshot, worker.manifest, remove_source=True)

    async def _restart(
        self, plugin: _Plugin, snapshot: Path, manifest: PluginManifest, *, remove_source: bool
    ) -> None:
        """Start ``manifest``'s version from a snapshot (caller holds the lock)."""
        try:
            plugin.current = await self._start(plugin, snapshot, manifest)
        except AgentbusError as e:
            await self._failed(plugin.name, manifest, f"restarting {manifest.version}: {e}")
            return
        finally:
            if remove_source:
                shutil.rmtree(snapshot, ignore_errors=True)
        plugin.manifest = manifest
        await self._record(plugin, manifest, status="running")
        await self._event(Ev.PLUGIN_LOADED, manifest)

    # -- watching ------------------------------------------------------------------------------
    async def _watch(self, ready: asyncio.Event) -> None:
        assert self._stop_watching is not None
        async for dirs in watch_plugin_dirs(
            self.roots, stop=self._stop_watching, debounce_ms=self.debounce_ms, ready=ready
        ):
            try:
                await self.apply(dirs)
            except Exception:
                log.exception("applying plugin changes in %s failed", sorted(map(str, dirs)))

    async def apply(self, dirs: Iterable[Path]) -> None:
        """Bring the plugins in line with these directories (what the watcher calls for each
        batch of changes): load new ones, reload changed ones, follow moves, unload gone ones."""
        dirs = [d for d in dirs if not d.name.startswith(".")]  # staging, editors' temp dirs
        present = sorted(d for d in dirs if (d / MANIFEST_FILE).is_file())
        gone = sorted(d for d in dirs if d not in present)
        by_source = {p.source: p for p in self.plugins.values()}
        work = []
        for d in present:
            plugin = by_source.get(d)
            work.append(self._reload(plugin, d) if plugin else self._load(d))
        await asyncio.gather(*work)
        by_source = {p.source: p for p in self.plugins.values()}  # moves updated sources
        await asyncio.gather(*(self._unload(by_source[d]) for d in gone if d in by_source))
        self.applied += 1
        self.watching.set()

    # -- catalogue and events --------------------------------------------------------------------
    async def _record(
        self, plugin: _Plugin, manifest: PluginManifest, *, status: str, error: str = ""
    ) -> None:
        assert self.catalogue is not None
        agents = plugin.current.agents if plugin.current is not None else []
        try:
            await self.catalogue.record(
                manifest, status=status, path=str(plugin.source), agents=agents, last_error=error
            )
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not update the catalogue: %s", plugin.name, e)

    async def _catalogue_update(self, name: str, **fields: str) -> None:
        assert self.catalogue is not None
        try:
            await self.catalogue.update(name, **fields)
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not update the catalogue: %s", name, e)

    async def _event(self, type: Ev, manifest: PluginManifest, reason: str | None = None) -> None:
        assert self.catalogue is not None
        try:
            await self.catalogue.event(
                type, manifest.name, role=manifest.role, version=manifest.version, reason=reason
            )
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not write the %s event: %s", manifest.name, type, e)

    async def _failed(self, name: str, manifest: PluginManifest | None, reason: str) -> None:
        log.error("plugin %s failed: %s", name, reason)
        assert self.catalogue is not None
        try:
            await self.catalogue.event(
                Ev.PLUGIN_FAILED, name,
                role=manifest.role if manifest else None,
                version=manifest.version if manifest else None, reason=reason,
            )  # fmt: skip
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not write the plugin_failed event: %s", name, e)
