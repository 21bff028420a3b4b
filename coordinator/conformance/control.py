"""The control-plane checks: registration (record, indexes, epoch) and heartbeats (last_seen,
deadline, the heartbeat envelope itself), as docs/PROTOCOL.md "Control plane" describes them."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from coordinator.conformance.context import Context, errors_of
from schemas.agent import AgentRecord, AgentStatus, Heartbeat
from schemas.envelope import Kind, decode_fields
from schemas.errors import ProtocolError

__all__ = ["check_heartbeats", "check_registration", "wait_registered"]

#: Processing time allowed on top of 2 x heartbeat_ms before a heartbeat counts as missing.
HEARTBEAT_SLACK_MS = 500
_SERVING = (AgentStatus.READY, AgentStatus.BUSY)


# -- registration ------------------------------------------------------------------------------
async def wait_registered(ctx: Context) -> dict[str, str]:
    """The agent's registry hash, once it exists with a serving status (or after ``wait``)."""
    key = ctx.keys.record(ctx.name)
    give_up = time.monotonic() + ctx.options.wait
    while True:
        raw: Any = await ctx.probe.client.hgetall(key)
        if (raw and raw.get("status") in _SERVING) or time.monotonic() > give_up:
            return dict(raw)
        await asyncio.sleep(0.05)


async def check_registration(ctx: Context) -> bool:
    """The record exists, decodes, serves, is in its indexes and carries an epoch."""
    report, key = ctx.report, ctx.keys.record(ctx.name)
    raw = await wait_registered(ctx)
    if not raw:
        report.failed(
            "registration.record",
            f"no record at {key} after {ctx.options.wait:g}s: the agent is not registered (is it "
            "running, on this Redis and namespace, with a coordinator?)",
        )
        return False
    try:
        record = AgentRecord.from_hash(raw)
    except ValueError as e:
        detail = errors_of(e) if isinstance(e, ValidationError) else str(e)
        report.failed("registration.record", f"the record at {key} does not decode: {detail}")
        return False
    ctx.record = record
    problems = []
    if record.name != ctx.name:
        problems.append(f"its name field is {record.name!r}")
    if record.status not in _SERVING:
        problems.append(
            f"status {record.status.value!r} after {ctx.options.wait:g}s (an agent that serves "
            "is ready or busy; selection skips any other)"
        )
    if problems:
        report.failed("registration.record", "; ".join(problems))
    else:
        report.passed(
            "registration.record",
            f"role {record.role}, version {record.version}, instance {record.instance_id}, "
            f"status {record.status.value}, load {record.load}/{record.max_concurrency}",
        )
    indexes = [ctx.keys.agents(), ctx.keys.role_index(record.role)]
    indexes += [ctx.keys.capability_index(c) for c in record.capabilities]
    indexes += [ctx.keys.tag_index(t) for t in record.tags]
    missing = [i for i in indexes if not await ctx.probe.client.sismember(i, ctx.name)]
    if missing:
        report.failed("registration.indexes", f"{ctx.name} is missing from {', '.join(missing)}")
    else:
        report.passed("registration.indexes", f"in {len(indexes)} index(es): {', '.join(indexes)}")
    epoch = raw.get("epoch", "")
    if epoch.isdigit() and int(epoch) > 0:
        report.passed("registration.epoch", f"epoch {epoch}")
    else:
        report.failed("registration.epoch", f"the record's epoch field is {epoch or 'missing'!r}")
    return True


# -- heartbeats --------------------------------------------------------------------------------
async def _deadline(ctx: Context) -> Any:
    """The agent's deadline: its own, or its host's lease's (protocol 2.2)."""
    client = ctx.probe.client
    own = await client.zscore(ctx.keys.deadlines(), ctx.name)
    if own is not None:
        return own
    lease: Any = await client.hget(ctx.keys.record(ctx.name), "lease")
    return None if lease is None else await client.zscore(ctx.keys.leases(), lease)


async def _watch_record(ctx: Context, window: float) -> tuple[float | None, tuple[Any, Any]]:
    """Seconds until ``last_seen`` advanced (``None``: it did not), and the deadline before and
    after."""
    client, key = ctx.probe.client, ctx.keys.record(ctx.name)
    first_seen: Any = await client.hget(key, "last_seen")
    first_deadline = await _deadline(ctx)
    started = time.monotonic()
    advanced: float | None = None
    deadline = first_deadline
    while time.monotonic() - started < window:
        await asyncio.sleep(0.02)
        seen: Any = await client.hget(key, "last_seen")
        deadline = await _deadline(ctx)
        if advanced is None and seen and first_seen and _after(seen, first_seen):
            advanced = time.monotonic() - started
        if advanced is not None and deadline != first_deadline:
            break
    return advanced, (first_deadline, deadline)


def _after(a: str, b: str) -> bool:
    return datetime.fromisoformat(a) > datetime.fromisoformat(b)


async def _first_heartbeat(ctx: Context, window: float) -> tuple[str, dict[str, str]] | None:
    """The first heartbeat the agent writes to the control stream within ``window`` seconds
    (read with a plain ``XREAD``: the coordinators trim what they processed, not what is new)."""
    client, stream = ctx.probe.client, ctx.keys.control()
    info: Any = await client.xinfo_stream(stream)
    last = str(info["last-generated-id"])
    give_up = time.monotonic() + window
    while (remaining := give_up - time.monotonic()) > 0:
        found: Any = await client.xread({stream: last}, count=1000, block=int(remaining * 1000) + 1)
        for _, entries in found or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("sender") == ctx.name and fields.get("type") == "heartbeat":
                    return entry_id, fields
    return None


async def check_heartbeats(ctx: Context) -> None:
    """last_seen advances within 2 x heartbeat_ms, the deadline moves, heartbeats are valid."""
    assert ctx.record is not None
    report, hb = ctx.report, ctx.record.heartbeat_ms
    window_ms = 2 * hb + HEARTBEAT_SLACK_MS
    (advanced, (before, after)), beat_entry = await asyncio.gather(
        _watch_record(ctx, window_ms / 1000), _first_heartbeat(ctx, window_ms / 1000)
    )
    bound = f"{window_ms} ms (2 x heartbeat_ms {hb} + {HEARTBEAT_SLACK_MS} ms)"
    if advanced is not None:
        report.passed(
            "heartbeat.last_seen", f"advanced after {advanced * 1000:.0f} ms (heartbeat_ms {hb})"
        )
    else:
        why = f"last_seen did not advance within {bound}"
        letters = await ctx.probe.dead_letters_from(ctx.name, ctx.since_ms)
        for letter in letters[-3:]:
            why += f"; its {letter.type} was dead-lettered [{letter.code}]: {letter.reason}"
        report.failed("heartbeat.last_seen", why)
    if before is not None and after is not None and after > before:
        report.passed("heartbeat.deadline", f"R:deadlines score moved +{after - before:.0f} ms")
    else:
        report.failed("heartbeat.deadline", f"R:deadlines score stayed {before} for {bound}")
    if beat_entry is None:
        report.failed("heartbeat.payload", f"no heartbeat from {ctx.name} on R:control in {bound}")
        report.skipped("heartbeat.epoch", "no heartbeat seen")
        return
    entry_id, fields = beat_entry
    try:
        env = decode_fields(fields, entry_id)
        beat = Heartbeat.model_validate(env.payload)
    except ProtocolError as e:
        report.failed("heartbeat.payload", f"the heartbeat envelope does not decode: {e}")
        report.skipped("heartbeat.epoch", "no valid heartbeat")
        return
    except ValidationError as e:
        report.failed("heartbeat.payload", f"invalid heartbeat payload: {errors_of(e)}")
        report.skipped("heartbeat.epoch", "no valid heartbeat")
        return
    problems = []
    if env.kind is not Kind.CONTROL:
        problems.append(f"kind {env.kind.value!r}, not 'control'")
    if beat.instance_id != ctx.record.instance_id:
        problems.append(f"instance_id {beat.instance_id}, not the record's {ctx.instance}")
    if problems:
        report.failed("heartbeat.payload", "; ".join(problems))
    else:
        report.passed(
            "heartbeat.payload", f"load {beat.load}, status {beat.status.value}, epoch {beat.epoch}"
        )
    if beat.epoch is None:
        report.info("heartbeat.epoch", "heartbeats carry no epoch (optional; recommended)")
    elif beat.epoch == ctx.record.epoch:
        report.passed("heartbeat.epoch", f"the record's epoch, {beat.epoch}")
    else:
        report.failed(
            "heartbeat.epoch",
            f"epoch {beat.epoch}, not the record's {ctx.record.epoch}: the coordinator ignores "
            "such heartbeats as an earlier registration's",
        )
