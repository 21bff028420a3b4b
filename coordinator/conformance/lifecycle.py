"""The checks that control the agent's process: a clean stop, and a kill followed by a restart.

* **stop** (``ConformanceOptions.stop``): the agent must send a heartbeat with status
  ``draining``, then ``leave``: the change feed shows ``agent_updated`` (status → draining), then
  ``agent_deregistered`` (reason ``left``), and the record and its index entries are gone; an
  ``agent_expired`` instead means it never left.
* **kill + start**: once the killed instance expired, one request is queued in the inbox and
  another is read (left pending) as the dead instance's consumer; the restarted agent must answer
  both: the queued one by reading its inbox, the pending one by taking over what its previous
  instance held (``XAUTOCLAIM <inbox> agent <instance> 0`` on start, or a claim after the TTL).

The actions are callables; ``shell_action`` and ``spawn_action`` make them from shell commands
(``{pid}``, ``{name}`` and ``{instance_id}`` are replaced from the agent's record).
"""

from __future__ import annotations

import asyncio
import shlex
import time
from typing import Any

from coordinator.conformance.context import Context
from coordinator.conformance.options import Action
from schemas.agent import AgentRecord
from schemas.envelope import Envelope, Kind
from schemas.errors import AgentbusError, ConfigurationError
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import AGENT_GROUP

__all__ = ["check_redelivery", "check_stop", "expand", "shell_action", "spawn_action"]

_GONE = (RegistryEventType.AGENT_DEREGISTERED, RegistryEventType.AGENT_EXPIRED)
#: Seconds a command run by ``shell_action`` may take.
COMMAND_TIMEOUT = 30.0


def expand(command: str, record: AgentRecord) -> str:
    """``command`` with ``{pid}``, ``{name}`` and ``{instance_id}`` replaced (shell-quoted)."""
    values = {"{name}": record.name, "{instance_id}": record.instance_id}
    values["{pid}"] = str(record.pid) if record.pid is not None else ""
    for placeholder, value in values.items():
        if placeholder in command:
            if not value:
                raise ConfigurationError(
                    f"{command!r} uses {placeholder} but the agent's record has none"
                )
            command = command.replace(placeholder, shlex.quote(value))
    return command


def shell_action(command: str) -> Action:
    """Run ``command`` in a shell and wait for it; a non-zero exit is an error."""

    async def run(record: AgentRecord) -> None:
        line = expand(command, record)
        proc = await asyncio.create_subprocess_shell(
            line,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConfigurationError(f"`{line}` ran longer than {COMMAND_TIMEOUT:g}s") from None
        if proc.returncode != 0:
            text = out.decode(errors="replace").strip()[-300:]
            raise ConfigurationError(f"`{line}` exited with status {proc.returncode}: {text}")

    return run


def spawn_action(command: str) -> Action:
    """Start ``command`` in the background (its own session, input and output to /dev/null
    unless the command redirects them) and return at once: it outlives the check."""
    return shell_action(f"({command}) </dev/null >/dev/null 2>&1 &")


async def _act(ctx: Context, check: str, what: str, action: Action) -> bool:
    assert ctx.record is not None
    try:
        await action(ctx.record)
    except AgentbusError as e:
        ctx.report.failed(check, f"the {what} failed: {e.description}")
        return False
    return True


async def _wait_record(ctx: Context, other_than: str | None, timeout: float) -> AgentRecord | None:
    """The record once held by an instance other than ``other_than`` (``None``: once gone)."""
    key = ctx.keys.record(ctx.name)
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        raw: Any = await ctx.probe.client.hgetall(key)
        holder = raw.get("instance_id")
        if other_than is None and not raw:
            return None
        if other_than is not None and holder and holder != other_than and "epoch" in raw:
            return AgentRecord.from_hash(raw)
        await asyncio.sleep(0.05)
    raise TimeoutError


async def check_redelivery(ctx: Context, kill: Action, start: Action) -> None:
    """Kill the agent; messages queued meanwhile, and the one it held, are answered after the
    restart."""
    assert ctx.record is not None
    report, opts, probe = ctx.report, ctx.options, ctx.probe
    old, ttl = ctx.record.instance_id, ctx.record.ttl_ms / 1000
    checks = ("redelivery.restart", "redelivery.queued", "redelivery.pending")
    if not await _act(ctx, checks[0], "kill command", kill):
        return
    try:
        await _wait_record(ctx, None, ttl + 10)
    except TimeoutError:
        report.failed(checks[0], f"instance {old} still registered {ttl + 10:g}s after the kill")
        return
    linger = opts.start_timeout + opts.timeout + 2 * ttl + 30  # the requests' deadline
    held = probe.envelope(Kind.REQUEST, opts.type, opts.payload, target=ctx.name, expires_in=linger)
    held_entry = await probe.xadd(ctx.inbox, held, probe.settings.inbox_maxlen)
    read: object = await probe.client.xreadgroup(
        AGENT_GROUP, old, {ctx.inbox: ">"}, count=1
    )  # as the dead instance: the entry is now pending for it, as if it died handling it
    took_it = f"'{held_entry}'" in repr(read)
    queued = probe.envelope(
        Kind.REQUEST, opts.type, opts.payload, target=ctx.name, expires_in=linger
    )
    queued_entry = await probe.xadd(ctx.inbox, queued, probe.settings.inbox_maxlen)
    started = time.monotonic()
    if not await _act(ctx, checks[0], "start command", start):
        return
    try:
        record = await _wait_record(ctx, old, opts.start_timeout)
    except TimeoutError:
        report.failed(checks[0], f"no new instance registered {opts.start_timeout:g}s after start")
        return
    assert record is not None
    ctx.record = record
    report.passed(
        checks[0],
        f"instance {record.instance_id} registered {time.monotonic() - started:.1f}s after start",
    )
    wait = opts.timeout + 2 * ttl
    for check, env, entry, what in (
        (checks[1], queued, queued_entry, "a request sent while the agent was down"),
        (checks[2], held, held_entry, f"the request its killed instance {old} held (pending)"),
    ):
        if check == checks[2] and not took_it:
            report.skipped(check, f"the inbox held unread entries: could not make {what}")
            continue
        await _expect_reply(ctx, check, env, entry, what, wait)


async def _expect_reply(
    ctx: Context, check: str, env: Envelope, entry_id: str, what: str, wait: float
) -> None:
    reply = await ctx.probe.reply(env.id, wait)
    if reply is not None and reply.error is None:
        ctx.report.passed(check, f"{what} was answered after the restart")
    elif reply is not None:
        ctx.report.failed(check, f"{what}: an error reply [{reply.error.code}]")  # type: ignore[union-attr]
    else:
        why = await ctx.diagnose(ctx.inbox, entry_id, env)
        ctx.report.failed(check, f"{what} got no reply within {wait:g}s: {why}")


def _to_draining(event: RegistryEvent) -> bool:
    status = event.changes.get("status") or [None]
    return event.type is RegistryEventType.AGENT_UPDATED and status[-1] == "draining"


async def check_stop(ctx: Context, stop: Action) -> None:
    """Stop the agent: a draining heartbeat, then a leave; the record goes at once."""
    assert ctx.record is not None
    report, probe = ctx.report, ctx.probe
    after = await probe.last_event_id()
    started = time.monotonic()
    if not await _act(ctx, "lifecycle.leave", "stop command", stop):
        report.skipped("lifecycle.draining", "the agent was not stopped")
        return
    seen: list[RegistryEvent] = []
    end: RegistryEvent | None = None
    give_up = started + ctx.options.stop_timeout
    while end is None and (remaining := give_up - time.monotonic()) > 0:
        for event in await probe.events(after, min(remaining, 0.5)):
            after = event.revision or after
            if event.name != ctx.name or end is not None:
                continue
            seen.append(event)
            if event.type in _GONE:
                end = event
    took = f"{time.monotonic() - started:.2f}s"
    if any(_to_draining(e) for e in seen):
        report.passed("lifecycle.draining", "status went to draining before the agent left")
    else:
        report.failed(
            "lifecycle.draining",
            "no heartbeat with status draining before the leave (no agent_updated event with "
            "status -> draining)",
        )
    if end is None:
        report.failed("lifecycle.leave", f"still registered {ctx.options.stop_timeout:g}s after")
    elif end.type is RegistryEventType.AGENT_EXPIRED:
        report.failed(
            "lifecycle.leave",
            f"the record expired ({end.reason}) {took} after the stop: the agent never sent a "
            "leave (a leave removes the record at once)",
        )
    else:
        indexes = [ctx.keys.agents(), ctx.keys.role_index(ctx.record.role)]
        left = [i for i in indexes if await probe.client.sismember(i, ctx.name)]
        if await probe.client.exists(ctx.keys.record(ctx.name)):
            left.append(ctx.keys.record(ctx.name))
        if left:
            report.failed("lifecycle.leave", f"deregistered, but still in {', '.join(left)}")
        else:
            report.passed(
                "lifecycle.leave",
                f"agent_deregistered (reason {end.reason}) {took} after the stop; record and "
                "index entries gone",
            )
