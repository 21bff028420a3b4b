"""``PluginSupervisor``: hosts every plugin found in some directories, one worker per version.

::

    async with PluginSupervisor(settings, [Path("plugins")], watch=True) as plugins:
        ...   # each plugin directory's agents serve; edits reload; deletions drain

What it does with a plugin directory (``<root>/<dir>/manifest.yaml``), a **unit**
(``coordinator.plugins.units``; several versions of one plugin may run side by side, one
directory each):

* **load**: read the manifest, start a worker process on a snapshot of the directory
  (``coordinator.plugins.workers``), wait until its agents serve and answer their
  ``healthcheck``; record it in the catalogue, emit ``plugin_loaded``.
* **reload** (the directory changed): start the new version the same way *beside* the running
  one (its agents take the other slot of the unit's pair, ``<name>.a0`` / ``<name>.b0``); only
  once it serves does the role's default version follow it (if it was the old version), and is
  the old worker drained (SIGTERM: no new work, in-flight work finishes, its agents leave); emit
  ``plugin_reloaded``. If any step fails, the new worker is killed, the old one keeps serving,
  and ``plugin_failed`` carries the reason.
* **crash** (a worker exits on its own): ``plugin_failed``; within ``probation`` seconds of a
  reload the previous version is started again (rollback), otherwise the same version is
  restarted with a growing delay (up to ``MAX_RESTARTS`` in a row).
* **unload** (the directory or its manifest is gone): drain the worker, remove the version's
  catalogue entry (and the role's default, if it was this version), emit ``plugin_unloaded``.
* **scale** (``replicas.max > replicas.min``): ``coordinator.plugins.scaler`` decides; a replica
  is one more worker process of one agent.

Operations on one unit never overlap (a lock per unit); units never wait on each other.
A plugin that fails never takes the supervisor or other plugins down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from redis.exceptions import RedisError

from agent_sdk.bus import Bus
from agent_sdk.plugin_manifest import read_manifest
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from coordinator.plugins.catalogue import Catalogue
from coordinator.plugins.installed import installed_plugins
from coordinator.plugins.scaler import ScalePolicy, read_unit
from coordinator.plugins.units import MAX_UNITS_PER_NAME, Unit, free_pair, replica_names
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


def _clash(source: Path, manifest: PluginManifest, reason: str) -> PluginError:
    return PluginError(
        f"{source}: {reason}",
        details={"plugin": str(source), "file": MANIFEST_FILE, "field": "name",
                 "reason": "name clash"},
    )  # fmt: skip


class PluginSupervisor:
    """An async context manager; ``start``/``stop`` are idempotent. Runnable by
    ``agent_sdk.runner.serve`` (``agentbus run --plugins``)."""

    def __init__(
        self,
        settings: Settings,
        roots: Sequence[Path | str],
        *,
        watch: bool = False,
        installed: bool = False,
        ready_timeout: float = 30.0,
        health_timeout: float = 5.0,
        debounce_ms: int = 300,
        probation: float = 10.0,
        scaling: ScalePolicy | None = None,
        name: str = "plugins",
    ) -> None:
        if not roots and not installed:
            raise InvalidInput("give at least one plugin directory (or host installed plugins)")
        self.settings = settings
        self.roots = [Path(r).resolve() for r in roots]
        self.watch = watch
        self.installed = installed
        self.ready_timeout = ready_timeout
        self.health_timeout = health_timeout
        self.debounce_ms = debounce_ms
        self.probation = probation
        self.scaling = scaling or ScalePolicy()
        self.name = name
        self.bus = Bus(settings)
        self.catalogue: Catalogue | None = None
        #: Every unit (plugin version) loaded, also those whose worker failed: a change retries.
        self.units: list[Unit] = []
        self.stopped = asyncio.Event()
        #: Set once the watcher runs (and after each batch of changes it applied: ``applied``).
        self.watching = asyncio.Event()
        self.applied = 0
        #: Replicas added and removed by the scaler (for tests and logs).
        self.scaled_up = 0
        self.scaled_down = 0
        self._state = "new"
        self._workdir: Path | None = None
        self._tasks: list[asyncio.Task[None]] = []
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
        return f"PluginSupervisor(roots={[str(r) for r in self.roots]}, units={len(self.units)})"

    def unit(self, name: str, version: str | None = None) -> Unit | None:
        """The unit of plugin ``name`` (at ``version``; the newest when not given)."""
        found = [u for u in self.units if u.name == name and version in (None, u.version)]
        return found[-1] if found else None

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
        if self.installed:
            dirs += await self._installed_dirs()
        if not dirs:
            log.warning("no plugin found in %s", ", ".join(str(r) for r in self.roots))
        await asyncio.gather(*(self._load(d) for d in dirs))
        self._tasks.append(asyncio.create_task(self._scale_loop(), name="agentbus-plugins-scale"))
        if self.watch and self.roots:
            self._stop_watching = asyncio.Event()
            ready = asyncio.Event()
            self._tasks.append(
                asyncio.create_task(self._watch(ready), name="agentbus-plugins-watch")
            )
            await ready.wait()
        self._state = "running"
        return self

    async def _installed_dirs(self) -> list[Path]:
        dirs = []
        for p in await asyncio.to_thread(installed_plugins):
            if p.directory is None:
                where = p.distribution or "an installed package"
                reason = f"entry point {p.entry_point} = {p.value!r} of {where}: {p.error}"
                await self._failed(p.entry_point, None, reason)
            else:
                dirs.append(p.directory.resolve())
        return dirs

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
            for task in self._tasks:
                await cancel_and_wait(task)
            await asyncio.gather(*(self._shutdown(u) for u in list(self.units)))
        finally:
            await self.bus.stop()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._state = "stopped"
            self.stopped.set()

    async def _shutdown(self, unit: Unit) -> None:
        async with unit.lock:
            for task in list(unit.monitors):
                await cancel_and_wait(task)
            running = unit.current is not None
            await self._stop_workers(unit)
            if running:
                await self._update(unit, status="stopped", agents="")

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

    # -- one unit ------------------------------------------------------------------------------
    async def _start(
        self, unit: Unit, source: Path, manifest: PluginManifest, *, slot: str | None = None,
        replicas: Iterable[int] | None = None,
    ) -> Worker:  # fmt: skip
        """A worker for ``manifest`` from ``source`` in the next slot (or ``slot``), running
        ``replicas`` (default ``range(replicas.min)``); monitored once it serves."""
        assert self._workdir is not None
        new_slot = slot or unit.next_slot()
        numbers = list(range(manifest.replicas.min) if replicas is None else replicas)
        snapshot = self._workdir / f"{manifest.name}-{new_slot}-{time.monotonic_ns()}"
        worker = await start_worker(
            source, manifest, snapshot=snapshot, slot=new_slot,
            names=replica_names(manifest.name, new_slot, numbers), bus=self.bus, env=self._env,
            ready_timeout=self.ready_timeout, health_timeout=self.health_timeout,
            grace=self._grace,
        )  # fmt: skip
        if slot is None:
            unit.slot = new_slot
        task = asyncio.create_task(self._monitor(unit, worker), name=f"agentbus-plugin:{unit.name}")
        unit.monitors.add(task)
        task.add_done_callback(unit.monitors.discard)
        return worker

    async def _stop_workers(self, unit: Unit, workers: list[Worker] | None = None) -> None:
        """Drain ``workers`` (default: every worker of the unit) at once."""
        chosen = unit.workers if workers is None else workers
        await asyncio.gather(*(w.stop(self._grace) for w in chosen))
        for w in chosen:
            if w is unit.current:
                unit.current = None
            elif w in unit.extra:
                unit.extra.remove(w)
                w.remove_snapshot()
        self.scaling.forget(unit)

    async def _read(self, source: Path, unit: Unit | None = None) -> PluginManifest:
        """Read ``source``'s manifest; refuse a (name, version) another directory runs."""
        manifest = await asyncio.to_thread(read_manifest, source)
        for other in self.units:
            if other is unit or other.name != manifest.name or other.source == source:
                continue
            if other.version == manifest.version and other.source.exists():
                raise _clash(source, manifest,
                             f"plugin {manifest.name!r} {manifest.version} is already "
                             f"loaded from {other.source}")  # fmt: skip
        return manifest

    async def _load(self, source: Path) -> None:
        try:
            manifest = await self._read(source)
        except AgentbusError as e:
            await self._failed(source.name, None, str(e))
            return
        known = next((u for u in self.units if u.source == source), None) or next(
            (u for u in self.units if u.name == manifest.name and u.version == manifest.version),
            None,
        )  # the same directory (failed before), or the same version moved here
        if known is not None:
            await self._reload(known, source)
            return
        pair = free_pair(self.units, manifest.name)
        if pair is None:
            await self._failed(manifest.name, manifest,
                               f"{source}: {MAX_UNITS_PER_NAME} versions of {manifest.name!r} "
                               "run already (the most side by side)")  # fmt: skip
            return
        unit = Unit(manifest.name, source, manifest, pair)
        self.units.append(unit)
        async with unit.lock:
            try:
                unit.current = await self._start(unit, source, manifest)
            except AgentbusError as e:
                await self._record(unit, status="failed", error=str(e))
                await self._failed(manifest.name, manifest, str(e))
                return
            await self._record(unit, status="running")
            await self._event(Ev.PLUGIN_LOADED, manifest)
            log.info("plugin %s serves as %s", unit.label, ", ".join(unit.agents))

    async def _reload(self, unit: Unit, source: Path) -> None:
        async with unit.lock:
            try:
                manifest = await self._read(source, unit)
                if manifest.name != unit.name:
                    raise PluginError(
                        f"{source}: the plugin's name changed from {unit.name!r} to "
                        f"{manifest.name!r}: a rename is a new plugin (move it to a new "
                        "directory)",
                        details={"plugin": str(source), "field": "name", "reason": "renamed"},
                    )
                new = await self._start(unit, source, manifest)
            except AgentbusError as e:
                running = unit.current is not None
                note = "; the running version keeps serving" if running else ""
                await self._update(unit, last_error=str(e), **({} if running else
                                                              {"status": "failed"}))  # fmt: skip
                await self._failed(unit.name, unit.manifest, f"{e}{note}")
                return
            old_workers, old_manifest = unit.workers, unit.manifest
            unit.current, unit.extra = new, []
            unit.source, unit.manifest = source, manifest
            if old_manifest.version != manifest.version:
                await self._follow_default(old_manifest, manifest)
                await self._forget_version(old_manifest)
            await self._record(unit, status="running")
            if old_workers:
                await asyncio.gather(*(w.stop(self._grace) for w in old_workers))
                for w in old_workers[1:]:
                    w.remove_snapshot()
                self._forget_previous(unit)
                unit.previous = (old_manifest, old_workers[0].snapshot)
            self.scaling.forget(unit)
            await self._event(Ev.PLUGIN_RELOADED if old_workers else Ev.PLUGIN_LOADED, manifest)
            drained = " (the previous version drained)" if old_workers else ""
            log.info("plugin %s serves as %s%s", unit.label, ", ".join(new.agents), drained)

    async def _unload(self, unit: Unit) -> None:
        async with unit.lock:
            for task in list(unit.monitors):
                await cancel_and_wait(task)
            current = unit.current
            await self._stop_workers(unit)
            if current is not None:
                current.remove_snapshot()
            self._forget_previous(unit)
            if unit in self.units:
                self.units.remove(unit)
            await self._forget_version(unit.manifest, clear_default=True)
            await self._event(Ev.PLUGIN_UNLOADED, unit.manifest)
            log.info("plugin %s unloaded (its directory is gone)", unit.label)

    @staticmethod
    def _forget_previous(unit: Unit) -> None:
        if unit.previous is not None:
            shutil.rmtree(unit.previous[1], ignore_errors=True)
            unit.previous = None

    async def _monitor(self, unit: Unit, worker: Worker) -> None:
        """Wait for the worker to exit; an exit the supervisor did not ask for is a crash."""
        code = await worker.proc.wait()
        if worker.stopping:
            return
        lived = time.monotonic() - worker.started_at
        await worker.kill()  # closes its pipes
        reason = f"the worker of {worker.manifest.version} exited with status {code} after " \
                 f"{lived:.1f}s: {worker.tail()}"  # fmt: skip
        async with unit.lock:
            if worker in unit.extra:  # an added replica: gone; the scaler adds one if needed
                unit.extra.remove(worker)
                worker.remove_snapshot()
                await self._update(unit, agents=",".join(unit.agents))
                await self._failed(unit.name, worker.manifest, reason)
                return
            if unit.current is not worker:
                return
            unit.current = None
            unit.restarts = 0 if lived > _STABLE_AFTER else unit.restarts + 1
            rollback = unit.previous if lived < self.probation else None
            await self._update(unit, status="failed", agents="", last_error=reason)
            await self._failed(unit.name, worker.manifest, reason)
            if rollback is not None:
                manifest, snapshot = rollback
                log.warning("plugin %s: rolling back to %s", unit.name, manifest.version)
                unit.previous = None
                await self._restart(unit, snapshot, manifest, remove_source=True)
                worker.remove_snapshot()
                return
        if unit.restarts > MAX_RESTARTS:
            log.error("plugin %s crashed %d times in a row: not restarted until it changes",
                      unit.label, unit.restarts)  # fmt: skip
            return
        await asyncio.sleep(min(30.0, 0.5 * 2**unit.restarts))  # restart backoff
        async with unit.lock:
            if unit.current is None and self._state == "running":
                await self._restart(unit, worker.snapshot, worker.manifest, remove_source=True)

    async def _restart(
        self, unit: Unit, snapshot: Path, manifest: PluginManifest, *, remove_source: bool
    ) -> None:
        """Start ``manifest``'s version from a snapshot (caller holds the lock)."""
        others = list(unit.extra)
        try:
            unit.current = await self._start(unit, snapshot, manifest)
        except AgentbusError as e:
            await self._failed(unit.name, manifest, f"restarting {manifest.version}: {e}")
            return
        finally:
            if remove_source:
                shutil.rmtree(snapshot, ignore_errors=True)
        if manifest.version != unit.manifest.version:  # a rollback: extras ran the other one
            await self._stop_workers(unit, others)
            await self._follow_default(unit.manifest, manifest)
            await self._forget_version(unit.manifest)
        unit.manifest = manifest
        await self._record(unit, status="running")
        await self._event(Ev.PLUGIN_LOADED, manifest)

    # -- replicas ------------------------------------------------------------------------------
    async def _scale_loop(self) -> None:
        policy = self.scaling
        while True:
            await asyncio.sleep(policy.interval)
            for unit in [
                u for u in self.units if u.manifest.replicas.max > u.manifest.replicas.min
            ]:
                try:
                    await self._scale(unit)
                except (AgentbusError, RedisError) as e:
                    log.warning("plugin %s: scaling check failed: %s", unit.label, e)
                except Exception:
                    log.exception("plugin %s: scaling check failed", unit.label)

    async def _scale(self, unit: Unit) -> None:
        if unit.current is None or unit.lock.locked():
            return
        m = unit.manifest
        reading = await read_unit(self.bus.client, self.settings.keys, m.role, unit.agents,
                                  m.resources.max_concurrency)  # fmt: skip
        step = self.scaling.decide(unit, reading, unit.replicas, m.replicas.min,
                                   m.replicas.max, time.monotonic())  # fmt: skip
        if step == 0:
            return
        async with unit.lock:
            if unit.current is None:
                return
            if step > 0:
                number = unit.free_replica()
                worker = await self._start(unit, unit.current.snapshot, m, slot=unit.slot,
                                           replicas=[number])  # fmt: skip
                unit.extra.append(worker)
                self.scaled_up += 1
            elif unit.extra:
                await self._stop_workers(unit, [unit.extra[-1]])
                self.scaled_down += 1
            log.info("plugin %s: %d replicas (backlog %d, load %d/%d)", unit.label,
                     unit.replicas, reading.backlog, reading.load, reading.capacity)  # fmt: skip
            await self._update(unit, agents=",".join(unit.agents))

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
        by_source = {u.source: u for u in self.units}
        await asyncio.gather(*(self._reload(by_source[d], d) for d in present if d in by_source))
        # new ones after the reloads (a reload may free a version a new directory takes)
        await asyncio.gather(*(self._load(d) for d in present if d not in by_source))
        by_source = {u.source: u for u in self.units}  # moves updated sources
        await asyncio.gather(*(self._unload(by_source[d]) for d in gone if d in by_source))
        self.applied += 1
        self.watching.set()

    # -- catalogue, default version and events -------------------------------------------------
    async def _record(self, unit: Unit, *, status: str, error: str = "") -> None:
        assert self.catalogue is not None
        try:
            await self.catalogue.record(unit.manifest, status=status, path=str(unit.source),
                                        agents=unit.agents, last_error=error)  # fmt: skip
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not update the catalogue: %s", unit.label, e)

    async def _update(self, unit: Unit, **fields: str) -> None:
        assert self.catalogue is not None
        try:
            await self.catalogue.update(unit.name, unit.version, **fields)
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not update the catalogue: %s", unit.label, e)

    async def _follow_default(self, old: PluginManifest, new: PluginManifest) -> None:
        """The role's default was the old version of a reloaded directory: it follows."""
        assert self.catalogue is not None
        with contextlib.suppress(RedisError):
            if await self.catalogue.swap_default(old.role, old.version, new.version):
                log.info("role %s: default version %s -> %s", old.role, old.version, new.version)

    async def _forget_version(self, manifest: PluginManifest, *, clear_default: bool = False
                              ) -> None:  # fmt: skip
        assert self.catalogue is not None
        try:
            if clear_default:
                await self.catalogue.swap_default(manifest.role, manifest.version, "")
            await self.catalogue.remove(manifest.name, manifest.version)
        except (AgentbusError, RedisError) as e:
            log.warning("plugin %s: could not update the catalogue: %s", manifest.name, e)

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
