"""Usage stats per agent: invocations, errors and latency by message type, kept in Redis.

The hash ``KeySpace.stats(name)`` holds flat counters a person can read with ``HGETALL``::

    instance_id                  01a1f0…   the instance whose usage this is
    started_at                   2026-11-21T09:59:58.000Z  when that instance started counting
    summarize.invocations        42        handled messages of type summarize
    summarize.errors             3         of which failed (error reply, exception, bad payload)
    summarize.latency_ms.sum     1234.5    total handler time, milliseconds
    summarize.latency_ms.min     0.21      fastest, and slowest, handling
    summarize.latency_ms.max     88.1
    summarize.latency_ms.le_50   17        invocations that took at most 50 ms (and more than
                                           the previous bound: buckets are not cumulative)
    summarize.latency_ms.le_inf  1         slower than the last bound
    summarize.last_at            2026-11-21T10:00:00.000Z
    (unknown).invocations        2         messages of types without a handler (all together,
                                           broadcasts included)

The hash is one instance's: a new instance of the name clears it when it starts (``start``),
so a previous instance's calls are never shown as the current one's, and a late flush of a
replaced instance is dropped (``agent_sdk/lua/usage.lua``).

The hot path (``UsageRecorder.record``) only adds to in-memory deltas; a background task flushes
them every ``interval`` seconds in one round trip (one script call). A flush that fails keeps its
deltas for the next one. The same call appends the task history (``UsageRecorder.tasks``, see
``agent_sdk.task_history``): one handled message costs no round trip of its own.
``read_usage`` turns the hash back into ``TypeUsage`` rows with mean and
approximate percentiles (interpolated within a bucket, and never outside the fastest and slowest
call: one call has p50 = p95 = mean = its latency).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.connection import redis_errors
from agent_sdk.messaging.batcher import Op
from agent_sdk.messaging.scripts import registered
from agent_sdk.settings import Settings
from agent_sdk.task_history import TaskBuffer
from agent_sdk.tasks import cancel_and_wait

if TYPE_CHECKING:
    from agent_sdk.messaging.batcher import Batcher
    from agent_sdk.usage_flusher import UsageFlusher
from schemas.envelope import format_ms, format_time, utcnow

__all__ = [
    "BUCKETS_MS",
    "UNKNOWN_TYPE",
    "TypeUsage",
    "UsageRecorder",
    "parse_usage",
    "read_usage",
]

log = logging.getLogger("agentbus.usage")

#: Where messages of types the agent has no handler for are counted (one bucket for all).
UNKNOWN_TYPE = "(unknown)"
#: Upper bounds (ms) of the latency buckets; a last ``le_inf`` bucket takes the rest.
BUCKETS_MS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_BUCKET_NAMES = (*(f"le_{b:g}" for b in BUCKETS_MS), "le_inf")
_SCRIPT = resources.files("agent_sdk").joinpath("lua/usage.lua").read_text()


def _iso(ts: float | None = None) -> str:
    return format_time(utcnow() if ts is None else datetime.fromtimestamp(ts, UTC))


@dataclass
class _Delta:
    invocations: int = 0
    errors: int = 0
    latency_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(_BUCKET_NAMES))
    last_at: float = 0.0  # time.time() of the last invocation

    def merge(self, other: _Delta) -> None:
        self.invocations += other.invocations
        self.errors += other.errors
        self.latency_ms += other.latency_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.last_at = max(self.last_at, other.last_at)

    def wire(self) -> dict[str, Any]:
        """The script's view of the delta (strings: no float or integer formatting in Lua)."""
        return {
            "n": str(self.invocations),
            "e": str(self.errors),
            "sum": f"{self.latency_ms:.3f}",
            "min": f"{self.min_ms:.3f}",
            "max": f"{self.max_ms:.3f}",
            "last": _iso(self.last_at),
            "b": {b: str(c) for b, c in zip(_BUCKET_NAMES, self.buckets, strict=True) if c},
        }


class UsageRecorder:
    """Counts one agent's handled messages; flushes to ``KeySpace.stats(name)`` periodically.

    An async context manager (``start``/``stop`` idempotent; ``stop`` flushes what is left).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        name: str,
        *,
        instance_id: str = "",
        interval: float = 1.0,
        flusher: UsageFlusher | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self.name = name
        #: The instance counted ("": none, the hash is only added to, never cleared).
        self.instance_id = instance_id
        self.interval = interval
        self.started_at = format_ms(time.time_ns() // 1_000_000)  # what _iso() gives, cheaper
        self._pending: dict[str, _Delta] = defaultdict(_Delta)
        self._task: asyncio.Task[None] | None = None
        self._claimed = not instance_id  # the hash is ours (cleared for this instance)
        #: The host's shared flush loop (``agent_sdk.usage_flusher``); ``None``: our own loop.
        self._flusher = flusher
        #: Handled messages not yet written to the task history (``settings.task_history``
        #: at most; ``add`` to it, the flush writes it).
        self.tasks = TaskBuffer(settings.task_history, instance_id)
        # its keys and script are looked up when it flushes: a host starting many agents at
        # once does not pay for them in each start

    def record(self, message_type: str, seconds: float, error: bool = False) -> None:
        """One handled message (no I/O: the next flush writes it)."""
        d = self._pending[message_type]
        ms = seconds * 1000.0
        d.invocations += 1
        d.errors += error
        d.latency_ms += ms
        if ms < d.min_ms:
            d.min_ms = ms
        if ms > d.max_ms:
            d.max_ms = ms
        d.buckets[bisect_left(BUCKETS_MS, ms)] += 1
        d.last_at = time.time()
        if self._flusher is not None:
            self._flusher.mark(self)

    @property
    def pending(self) -> int:
        """Invocations recorded but not yet flushed."""
        return sum(d.invocations for d in self._pending.values())

    async def flush(self, batcher: Batcher | None = None) -> None:
        """Write the pending deltas in one round trip (kept on failure). The first flush of an
        instance also claims the hash (clears a previous instance's counts), deltas or not.
        Through ``batcher`` when given (a host's flushes share its pipelines)."""
        if not self._pending and not self.tasks and self._claimed:
            return
        batch, self._pending = self._pending, defaultdict(_Delta)
        tasks = self.tasks.take()
        deltas = orjson.dumps({mtype: d.wire() for mtype, d in batch.items()})
        try:
            args: list[Any] = [
                self.instance_id, self.started_at, deltas,
                self.tasks.limit, self.tasks.wire(tasks) if tasks else b"",
            ]  # fmt: skip
            op = self._op(args)
            with redis_errors(self._settings, f"writing usage stats of {self.name!r}"):
                if batcher is not None:
                    added = await batcher.run(op)
                else:
                    script = registered(self._client, _SCRIPT)
                    added = await script(keys=op.keys, args=args, client=self._client)
        except BaseException:
            for mtype, d in batch.items():  # keep them for the next flush
                self._pending[mtype].merge(d)
            self.tasks.give_back(tasks)
            raise
        self.flushed(added)

    def _op(self, args: list[Any]) -> Op:
        space = self._settings.keys
        keys = (space.stats(self.name), space.tasks(self.name))
        return Op(args, registered(self._client, _SCRIPT), keys)

    def claim_op(self) -> Op | None:
        """What a flush writes when all it has to write is the claim of the hash for this
        instance (a new agent's first flush), else None: a host's flusher sends the claims of
        the agents that just started together, with no flush of their own (``flushed``
        takes the answer)."""
        if self._claimed or self._pending or self.tasks:
            return None
        return self._op([self.instance_id, self.started_at, b"{}", self.tasks.limit, b""])

    def flushed(self, added: Any) -> None:
        """Redis's answer to a flush (or a claim): 1 if the hash is this instance's."""
        self._claimed = True
        if not added:
            log.info("usage stats of %s: a newer instance holds them; not added", self.name)

    async def _loop(self) -> None:
        try:
            await self.flush()  # claims the hash for this instance
        except Exception as e:
            log.warning("usage stats of %s: cannot claim them yet: %s", self.name, e)
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as e:  # log, keep the deltas, try again next interval
                log.warning("usage stats flush for %s failed: %s", self.name, e)

    async def start(self) -> None:
        """Start flushing: the first flush claims the stats hash for this instance at once (a
        failure is retried by the next flush), without holding up the agent's start. On a host
        its flusher does it; alone, a task of its own."""
        if self._flusher is not None:
            self._flusher.mark(self)
        elif self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"agentbus-usage-{self.name}")

    async def stop(self, grace: float | None = None) -> None:
        """Stop the flush task and flush what is left (``grace`` is unused: a component)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._flusher is not None:
            self._flusher.forget(self)
        try:
            await self.flush()
        except Exception as e:
            log.warning("final usage stats flush for %s failed: %s", self.name, e)

    async def __aenter__(self) -> UsageRecorder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class TypeUsage:
    """Usage of one message type by one agent."""

    type: str
    invocations: int
    errors: int
    latency_ms_sum: float
    buckets: tuple[int, ...]
    last_at: str | None
    #: The fastest and slowest handling (None in a hash written before they were kept).
    min_ms: float | None = None
    max_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.invocations if self.invocations else 0.0

    @property
    def mean_ms(self) -> float | None:
        return self.latency_ms_sum / self.invocations if self.invocations else None

    def percentile_ms(self, q: float) -> float | None:
        """Approximate ``q``-quantile (0-1) of latency, interpolated within its bucket; a
        bucket's range is narrowed to the fastest and slowest call, so the estimate never lies
        outside them (one call: its latency)."""
        total = sum(self.buckets)
        if not total:
            return None
        rank = q * total
        seen = 0
        fastest = self.min_ms if self.min_ms is not None else 0.0
        slowest = self.max_ms if self.max_ms is not None else math.inf
        for i, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = max(BUCKETS_MS[i - 1] if i > 0 else 0.0, fastest)
                high = min(BUCKETS_MS[i] if i < len(BUCKETS_MS) else low, slowest)
                high = max(high, low)
                return low + (high - low) * max(0.0, rank - seen) / count
            seen += count
        return min(BUCKETS_MS[-1], slowest)

    def as_dict(self) -> dict[str, Any]:
        p50, p95 = self.percentile_ms(0.5), self.percentile_ms(0.95)
        return {
            "type": self.type,
            "invocations": self.invocations,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "mean_ms": None if self.mean_ms is None else round(self.mean_ms, 3),
            "p50_ms": None if p50 is None else round(p50, 3),
            "p95_ms": None if p95 is None else round(p95, 3),
            "max_ms": None if self.max_ms is None else round(self.max_ms, 3),
            "last_at": self.last_at,
        }


def parse_usage(fields: dict[Any, Any]) -> list[TypeUsage]:
    """``TypeUsage`` rows (sorted by type) from the stats hash's fields."""
    by_type: dict[str, dict[str, str]] = defaultdict(dict)
    for k, v in fields.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        value = v.decode() if isinstance(v, bytes) else str(v)
        for suffix in _SUFFIXES:
            if key.endswith("." + suffix):
                by_type[key[: -len(suffix) - 1]][suffix] = value
                break
    rows = []
    for mtype, f in sorted(by_type.items()):
        total = _number(f.get("latency_ms.sum"))
        rows.append(
            TypeUsage(
                type=mtype,
                invocations=int(f.get("invocations", "0")),
                errors=int(f.get("errors", "0")),
                latency_ms_sum=total or 0.0,
                buckets=tuple(int(f.get(f"latency_ms.{b}", "0")) for b in _BUCKET_NAMES),
                last_at=f.get("last_at"),
                min_ms=_number(f.get("latency_ms.min")),
                max_ms=_number(f.get("latency_ms.max")),
            )
        )
    return rows


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


_SUFFIXES = (
    "invocations", "errors", "last_at", "latency_ms.sum", "latency_ms.min", "latency_ms.max",
    *(f"latency_ms.{b}" for b in _BUCKET_NAMES),
)  # fmt: skip


async def read_usage(client: aioredis.Redis, settings: Settings, name: str) -> list[TypeUsage]:
    """The usage stats of agent ``name``'s live instance (empty when it recorded none yet: a
    new instance's first flush, within a second of its start, clears its predecessor's; until
    then the hash still names the previous instance, and is not shown for this one)."""
    keys = settings.keys
    with redis_errors(settings, f"reading usage stats of {name!r}"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.stats(name))
            pipe.hget(keys.record(name), "instance_id")
            fields, live = await pipe.execute()
    held = fields.get(b"instance_id", fields.get("instance_id"))
    if live is not None and held is not None and _str(held) != _str(live):
        return []
    return parse_usage(fields)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
