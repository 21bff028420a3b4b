"""The ``plugins`` group: hot reload of a hosted plugin, against issue 12's targets.

A coordinator process, and in this process a ``PluginSupervisor`` watching a temporary plugin
directory with the defaults of ``agentbus run --plugins`` (300 ms debounce); the plugin is an
``echo`` handler that answers with its version, plus a ``healthcheck``. Three measures:

* **save → new version serving, old drained**: the module and manifest are written (a new
  version number) and the clock starts; it stops once a request by role is answered by the new
  version *and* the old version's agent has left the registry. ``sizes.reloads`` edits.
* **a steady 200 requests/s during reloads**: requests by role, one every 5 ms on a fixed
  schedule (not waiting for answers, so a stall shows as failures, not as a slower rate), while
  ``sizes.reloads`` reloads happen one after the other; every request's outcome is counted
  (answered by which version, failed, timed out).
* **a broken new version under the same load**: a version whose import fails, then one whose
  ``healthcheck`` fails; the share of requests the old version answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.cli import Context
from bench.coord import CoordinatorProcess
from bench.stats import Latency, Row, Scalar, Throughput

__all__ = ["plugins_group"]

_RATE = 200  # requests per second
_NAME = "benchecho"

_CODE = """
from agent_sdk.plugin import handler

VERSION = {version!r}
{broken}

@handler("echo")
async def echo(payload):
    return {{"version": VERSION}}


@handler("healthcheck")
async def healthcheck(payload):
    {health}
    return "ok"
"""


def _write(directory: Path, version: str, *, broken: str = "", health: str = "pass") -> None:
    """Write the plugin atomically enough for a watcher: the module first, the manifest last."""
    directory.mkdir(parents=True, exist_ok=True)
    code = _CODE.format(version=version, broken=broken, health=health)
    (directory / "benchecho_mod.py").write_text(textwrap.dedent(code))
    manifest = {"name": _NAME, "version": version, "role": _NAME, "entry_point": "benchecho_mod"}
    (directory / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


class _Load:
    """Requests by role on a fixed schedule of ``_RATE`` per second; outcomes counted."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.sent = 0
        self._stop = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def _one(self) -> None:
        t0 = time.perf_counter()
        try:
            reply = await self.bus.request(role=_NAME, type="echo", payload=None, timeout=5)
            self.outcomes[f"v{reply['version']}"] += 1
            self.latencies.append((time.perf_counter() - t0) * 1e6)
        except Exception as e:  # counted, by kind
            self.outcomes[type(e).__name__] += 1

    async def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            self.sent += 1
            task = asyncio.create_task(self._one())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            delay = start + self.sent / _RATE - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        self._stop.set()
        assert self._task is not None
        await self._task
        seconds = time.perf_counter() - self.started
        await asyncio.gather(*self._inflight)
        return seconds

    @property
    def failed(self) -> int:
        return sum(n for k, n in self.outcomes.items() if not k.startswith("v"))


async def _serving(bus: Any, version: str, r: Any, old_agents: set[str], keys: Any) -> None:
    """Until a request is answered by ``version`` and none of ``old_agents`` is registered."""
    while True:
        try:
            reply = await bus.request(role=_NAME, type="echo", payload=None, timeout=2)
            if reply["version"] == version:
                names = set(await r.smembers(keys.role_index(_NAME)))
                if not names & old_agents:
                    return
        except Exception:  # nobody to answer during a move: ask again
            pass
        await asyncio.sleep(0.01)  # polling the outcome being measured, 10 ms resolution


async def plugins_group(ctx: Context) -> None:
    from agent_sdk import Bus
    from agent_sdk.settings import Settings
    from coordinator.plugins import PluginSupervisor

    logging.getLogger("agentbus.plugins").setLevel(logging.CRITICAL)
    ns, reloads = "plugins", max(2, ctx.sizes.kills)
    settings = Settings(redis_url=ctx.url, namespace=ns, heartbeat_interval=1.0, ttl=3.0)
    root = Path(tempfile.mkdtemp(prefix="bench-plugins-"))
    directory = root / _NAME
    version = 0

    def next_version() -> str:
        nonlocal version
        version += 1
        return f"1.0.{version}"

    try:
        _write(directory, next_version())
        with CoordinatorProcess(ctx.url, ns):
            supervisor = PluginSupervisor(settings, [root], watch=True)
            async with supervisor, Bus(settings) as bus:
                r, keys = bus.client, settings.keys
                # 1. save → serving
                took = []
                for _ in range(reloads):
                    old = set(await r.smembers(keys.role_index(_NAME)))
                    v = next_version()
                    t0 = time.perf_counter()
                    _write(directory, v)
                    await asyncio.wait_for(_serving(bus, v, r, old, keys), 30)
                    took.append(time.perf_counter() - t0)
                lat = Latency.from_us([t * 1e6 for t in took])
                ctx.add(Row(
                    key="plugins.reload", value=lat,
                    title=f"plugin hot reload: save → new version serves, old drained "
                          f"({reloads} edits, 300 ms debounce)",
                    target="≤ 2 s", met=lat.max <= 2e6,
                    note=f"max {lat.max / 1e6:.2f} s",
                ))  # fmt: skip

                # 2. steady load during reloads
                load = _Load(bus)
                load.start()
                for _ in range(reloads):
                    old = set(await r.smembers(keys.role_index(_NAME)))
                    v = next_version()
                    _write(directory, v)
                    await asyncio.wait_for(_serving(bus, v, r, old, keys), 30)
                seconds = await load.stop()
                served = load.sent - load.failed
                ctx.details["plugins_load"] = dict(load.outcomes)
                answered = Latency.from_us(load.latencies)
                ctx.details["plugins_after_load"] = await _leftovers(r, keys)
                ctx.add(Row(
                    key="plugins.reload_load", value=Throughput(served, seconds, "req/s"),
                    title=f"requests by role at {_RATE}/s during {reloads} reloads: served",
                    target="0 failed, 0 lost", met=load.failed == 0 and served == load.sent,
                    note=f"{load.sent} sent, {load.failed} failed or timed out (5 s); answered "
                         f"in p50 {answered.p50 / 1e3:.1f} ms, p99 {answered.p99 / 1e3:.0f} ms, "
                         f"max {answered.max / 1e3:.0f} ms",
                ))  # fmt: skip

                # 3. broken versions under load: the old one keeps serving
                good = f"1.0.{version}"
                load = _Load(bus)
                load.start()
                failures = 0
                for broken, health in (("import agentbus_no_such_module", "pass"),
                                       ("", "raise RuntimeError('not ready')")):  # fmt: skip
                    before = supervisor.applied
                    _write(directory, next_version(), broken=broken, health=health)
                    await asyncio.wait_for(_applied(supervisor, before), 30)
                    failures += 1
                await load.stop()
                by_old = load.outcomes[f"v{good}"]
                share = 100.0 * by_old / load.sent if load.sent else 0.0
                ctx.add(Row(
                    key="plugins.broken_reload", value=Scalar(share, "% by the old version"),
                    title=f"a broken new version ({failures}: import error, failing "
                          f"healthcheck) under {_RATE} req/s: served by the old one",
                    target="100 %", met=by_old == load.sent,
                    note=f"{load.sent} sent, {load.failed} failed",
                ))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _applied(supervisor: Any, before: int) -> None:
    """Until the watcher applied a batch after ``before`` (and the reload it made is over)."""
    while supervisor.applied <= before:
        supervisor.watching.clear()  # set again after each batch the watcher applies
        if supervisor.applied <= before:
            await supervisor.watching.wait()


async def _leftovers(r: Any, keys: Any) -> dict[str, Any]:
    """Where requests that were never answered could be: dead letters, pending entries."""
    dead: Any = await r.xrange(keys.deadletter(), count=20)
    queue = keys.role_queue(_NAME)
    pending: Any = await r.xpending(queue, "agent") if await r.exists(queue) else {}
    return {
        "deadletters": [{k.decode(): v.decode()[:200] for k, v in f.items()} for _, f in dead],
        "role_queue_pending": {k: str(v) for k, v in dict(pending).items()},
    }
