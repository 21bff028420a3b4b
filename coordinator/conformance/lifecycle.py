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
import subprocess
import time
from typing import Any

from coordinator.conformance.context import Context
from coordinator.conformance.options import Action
from schemas.agent import AgentRecord
from schemas.envelope import Kind
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
    unless the command redirects them) and return at once: it outlives the check. Started with
    ``subprocess`` rather than the event loop's child watcher, which (uvloop's) would otherwise
    keep a handle on the process and hang the loop's close."""

    def start(line: str) -> int:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"({line}) </dev/null >/dev/null 2>&1 &"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return proc.wait(COMMAND_TIMEOUT)  # the shell returns once the command is started
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ConfigurationError(f"`{line}` ran longer than {COMMAND_TIMEOUT:g}s") from None

    async def run(record: AgentRecord) -> None:
        line = expand(command, record)
        code = await asyncio.to_thread(start, line)
        if code != 0:
            raise ConfigurationError(f"`{line}` exited with status {code}")

    return run


async def _act(ctx: Context, what: str, action: Action) -> str | None:
    """Run ``action`` on the agent's current record; why it failed, or ``None``."""
    assert ctx.record is not None
    try:
        await action(ctx.record)
    except AgentbusError as e:
        return f"the {what} failed: {e.description}"
    return None


async def _wait_gone(ctx: Context, timeout: float) -> bool:
    """Whether the agent's record is gone within ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while await ctx.probe.client.exists(ctx.keys.record(ctx.name)):
        if time.monotonic() > give_up:
            return False
        await asyncio.sleep(0.05)
    return True


async def _wait_new_instance(ctx: Context, old: str, timeout: float) -> AgentRecord | None:
    """The record once an instance other than ``old`` holds the name (``None``: not in time)."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        raw: Any = await ctx.probe.client.hgetall(ctx.keys.record(ctx.name))
        if raw.get("instance_id") not in (None, old) and "epoch" in raw:
            return AgentRecord.from_hash(raw)
        await asyncio.sleep(0.05)
    return None


_REDELIVERY = ("redelivery.restart", "redelivery.queued", "redelivery.pending")


async def check_redelivery(ctx: Context, kill: Action, start: Action) -> None:
    """Kill the agent; messages queued meanwhile, and the one it held, are answered after the
    restart."""
    assert ctx.record is not None
    report, opts, probe = ctx.report, ctx.options, ctx.probe
    old, ttl = ctx.record.instance_id, ctx.record.ttl_ms / 1000

    def give_up(why: str) -> None:
        report.failed(_REDELIVERY[0], why)
        for check in _REDELIVERY[1:]:
            report.skipped(check, "no restarted instance")

    if error := await _act(ctx, "kill command", kill):
        return give_up(error)
    if not await _wait_gone(ctx, ttl + 10):
        return give_up(f"instance {old} still registered {ttl + 10:g}s after the kill")
    linger = opts.start_timeout + opts.timeout + 2 * ttl + 30  # the requests' deadline
    held, queued = (
        probe.envelope(Kind.REQUEST, opts.type, opts.payload, target=ctx.name, expires_in=linger)
        for _ in range(2)
    )
    held_entry = await probe.xadd(ctx.inbox, held, probe.settings.inbox_maxlen)
    # read as the dead instance: the entry is now pending for it, as if it died handling it
    read: Any = await probe.client.xreadgroup(AGENT_GROUP, old, {ctx.inbox: ">"}, count=1)
    took_it = [eid for _, entries in read or [] for eid, _ in entries] == [held_entry]
    queued_entry = await probe.xadd(ctx.inbox, queued, probe.settings.inbox_maxlen)
    started = time.monotonic()
    if error := await _act(ctx, "start command", start):
        return give_up(error)
    record = await _wait_new_instance(ctx, old, opts.start_timeout)
    if record is None:
        return give_up(f"no new instance registered {opts.start_timeout:g}s after the start")
    ctx.record = record
    report.passed(
        _REDELIVERY[0],
        f"instance {record.instance_id} registered {time.monotonic() - started:.1f}s after start",
    )
    wait = opts.timeout + 2 * ttl
    for check, env, entry, what in (
        (_REDELIVERY[1], queued, queued_entry, "a request sent while the agent was down"),
        (_REDELIVERY[2], held, held_entry, f"the request its killed instance {old} held"),
    ):
        if env is held and not took_it:
            report.skipped(check, f"the inbox held unread entries: could not set up {what}")
            continue
        reply = await probe.reply(env.id, wait)
        if reply is None:
            why = await ctx.diagnose(ctx.inbox, entry, env)
            report.failed(check, f"{what} got no reply within {wait:g}s: {why}")
        elif reply.error is not None:
            report.failed(check, f"{what}: an error reply [{reply.error.code}]")
        else:
            report.passed(check, f"{what} was answered after the restart")


def _to_draining(event: RegistryEvent) -> bool:
    status = event.changes.get("status") or [None]
    return event.type is RegistryEventType.AGENT_UPDATED and status[-1] == "draining"


async def check_stop(ctx: Context, stop: Action) -> None:
    """Stop the agent: a draining heartbeat, then a leave; the record goes at once."""
    assert ctx.record is not None
    report, probe = ctx.report, ctx.probe
    after = await probe.last_event_id()
    started = time.monotonic()
    if error := await _act(ctx, "stop command", stop):
        report.skipped("lifecycle.draining", "the agent was not stopped")
        report.failed("lifecycle.leave", error)
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
