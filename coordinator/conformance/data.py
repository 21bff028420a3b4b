"""The data-plane checks: requests by name and by role (correlation, echo, headers, ack), the
error replies and dead letters a refused message gets, sends, and broadcasts (docs/PROTOCOL.md,
"Data plane").

Each request check that gets no reply says where the request got stuck (``Probe.diagnose``).
"""

from __future__ import annotations

import time
from typing import Any

from coordinator.conformance.context import Context, request, traceparent
from schemas.envelope import Envelope, Kind
from schemas.errors import ErrorCode

__all__ = [
    "check_broadcast",
    "check_request_by_name",
    "check_request_by_role",
    "check_requests_refused",
    "check_sends",
]

#: How long an acknowledgement may lag behind the reply it follows (seconds).
ACK_GRACE = 1.0


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``1`` and ``1.0`` are the same number (JavaScript writes ``1.0`` as
    ``1``), ``true`` is not ``1`` (as Python's ``True == 1`` would have it)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _reply_problems(reply: Envelope, req: Envelope, sender: str | None) -> list[str]:
    problems = []
    if reply.kind is not Kind.REPLY:
        problems.append(f"kind {reply.kind.value!r}, not 'reply'")
    if reply.type != req.type:
        problems.append(f"type {reply.type!r}, not the request's {req.type!r}")
    if sender is not None and reply.sender != sender:
        problems.append(f"sender {reply.sender!r}, not {sender!r}")
    return problems


async def check_request_by_name(ctx: Context) -> bool:
    """A request into the inbox gets a correlated reply (echo, headers) and is acknowledged."""
    report, opts = ctx.report, ctx.options
    trace = traceparent()
    req, entry_id, reply = await request(
        ctx, ctx.inbox, opts.type, opts.payload, headers={"traceparent": trace}
    )
    followers = ("request.echo", "request.headers", "request.ack")
    if reply is None:
        why = await ctx.diagnose(ctx.inbox, entry_id, req)
        report.failed("request.name", f"no reply within {opts.timeout:g}s: {why}")
        for check in followers:
            report.skipped(check, "no reply")
        return False
    problems = _reply_problems(reply, req, ctx.name)
    if reply.error is not None:
        problems.append(f"an error reply [{reply.error.code}]: {reply.error.description}")
    if problems:
        report.failed("request.name", "; ".join(problems))
    else:
        report.passed("request.name", f"a {opts.type!r} reply with correlation_id {req.id}")
    if not opts.echo:
        report.skipped("request.echo", "not an echo handler (--no-echo)")
    elif reply.error is None and same_json(reply.payload, req.payload):
        report.passed("request.echo", "the reply's payload equals the request's")
    else:
        report.failed("request.echo", f"the reply's payload {reply.payload!r} is not the request's")
    if reply.headers.get("traceparent") == trace:
        report.passed("request.headers", "the request's headers (traceparent) are in the reply")
    else:
        report.failed(
            "request.headers",
            f"the reply's headers {reply.headers} lack the request's traceparent: copy the "
            "request's headers into the reply (trace continuity)",
        )
    if await ctx.probe.acknowledged(ctx.inbox, entry_id, ACK_GRACE):
        report.passed("request.ack", f"entry {entry_id} acknowledged (XACK) in group 'agent'")
    else:
        why = await ctx.diagnose(ctx.inbox, entry_id, req)
        report.failed("request.ack", f"{ACK_GRACE:g}s after its reply: {why}")
    return not problems


async def check_request_by_role(ctx: Context) -> None:
    """A request into the role's queue is answered by the agent (other members may take some)."""
    assert ctx.record is not None
    report, opts = ctx.report, ctx.options
    queue = ctx.keys.role_queue(ctx.record.role)
    members = await ctx.probe.client.scard(ctx.keys.role_index(ctx.record.role))
    attempts = max(1, min(3 * int(members), 20))
    for attempt in range(1, attempts + 1):
        req, entry_id, reply = await request(ctx, queue, opts.type, opts.payload)
        if reply is None:
            why = await ctx.diagnose(queue, entry_id, req)
            report.failed("request.role", f"no reply within {opts.timeout:g}s: {why}")
            return
        if reply.sender != ctx.name:
            continue  # another member took it
        problems = _reply_problems(reply, req, None)
        if reply.error is not None:
            problems.append(f"an error reply [{reply.error.code}]: {reply.error.description}")
        if problems:
            report.failed("request.role", "; ".join(problems))
        else:
            report.passed("request.role", f"answered from {queue} (request {attempt})")
        return
    report.failed(
        "request.role",
        f"other members of {ctx.record.role!r} answered all {attempts} requests: {ctx.name} took "
        f"none from {queue}",
    )


async def check_requests_refused(ctx: Context) -> None:
    """An unknown type gets an ``unknown_type`` error reply; an expired request is dead-lettered
    ``deadline_exceeded``, never handled."""
    report, opts = ctx.report, ctx.options
    unknown = ctx.unknown_type
    req, entry_id, reply = await request(ctx, ctx.inbox, unknown, opts.payload)
    if reply is None:
        why = await ctx.diagnose(ctx.inbox, entry_id, req)
        report.failed(
            "error.unknown_type",
            f"no reply within {opts.timeout:g}s (a request of a type nobody handles must get an "
            f"error reply, not a timeout): {why}",
        )
    elif reply.error is None:
        report.failed("error.unknown_type", f"answered {unknown!r} with a payload, not an error")
    elif reply.error.code != ErrorCode.UNKNOWN_TYPE or _reply_problems(reply, req, ctx.name):
        problems = _reply_problems(reply, req, ctx.name)
        problems.append(f"error code {reply.error.code!r} (expected 'unknown_type')")
        report.failed("error.unknown_type", "; ".join(problems))
    else:
        report.passed("error.unknown_type", f"[unknown_type] {reply.error.description}")

    req, entry_id, reply = await request(
        ctx, ctx.inbox, opts.type, opts.payload, expires_in=-1, wait=0
    )
    give_up = time.monotonic() + opts.timeout
    while reply is None and time.monotonic() < give_up:
        letter = await ctx.probe.dead_letter(req.id, ctx.since_ms)
        if letter is not None:
            if letter.code == ErrorCode.DEADLINE_EXCEEDED:
                report.passed("request.expired", "dead-lettered [deadline_exceeded], not handled")
            else:
                report.failed(
                    "request.expired", f"dead-lettered [{letter.code}], not [deadline_exceeded]"
                )
            return
        reply = await ctx.probe.reply(req.id, 0.1)
    if reply is not None:
        report.failed(
            "request.expired",
            "a request whose deadline had passed was handled (a reply came): it must be "
            "acknowledged and dead-lettered [deadline_exceeded]",
        )
        return
    why = await ctx.diagnose(ctx.inbox, entry_id, req)
    report.failed("request.expired", f"not dead-lettered within {opts.timeout:g}s: {why}")


# -- fire-and-forget ---------------------------------------------------------------------------
async def check_sends(ctx: Context) -> None:
    """A send of a handled type is acknowledged; one of an unknown type is dead-lettered."""
    report, opts, probe = ctx.report, ctx.options, ctx.probe
    env = probe.envelope(Kind.SEND, opts.type, opts.payload, target=ctx.name)
    entry_id = await probe.xadd(ctx.inbox, env, probe.settings.inbox_maxlen)
    acked = await probe.acknowledged(ctx.inbox, entry_id, opts.timeout)
    letter = await probe.dead_letter(env.id, ctx.since_ms)
    if letter is not None:
        report.failed("send.ack", f"a send of {opts.type!r} was dead-lettered [{letter.code}]")
    elif acked:
        report.passed("send.ack", f"a send of {opts.type!r} was handled and acknowledged")
    else:
        why = await ctx.diagnose(ctx.inbox, entry_id, env)
        report.failed("send.ack", f"not acknowledged within {opts.timeout:g}s: {why}")

    unknown = ctx.unknown_type
    env = probe.envelope(Kind.SEND, unknown, opts.payload, target=ctx.name)
    entry_id = await probe.xadd(ctx.inbox, env, probe.settings.inbox_maxlen)
    acked = await probe.acknowledged(ctx.inbox, entry_id, opts.timeout)
    letter = await probe.dead_letter(env.id, ctx.since_ms)
    if letter is not None and letter.code == ErrorCode.UNKNOWN_TYPE:
        report.passed("send.unknown_type", "dead-lettered [unknown_type] and acknowledged")
    elif letter is not None:
        report.failed("send.unknown_type", f"dead-lettered [{letter.code}], not [unknown_type]")
    elif acked:
        report.failed(
            "send.unknown_type",
            "acknowledged without a dead letter: a message nobody handles must be dead-lettered "
            "[unknown_type]",
        )
    else:
        why = await ctx.diagnose(ctx.inbox, entry_id, env)
        report.failed("send.unknown_type", f"not dead-lettered within {opts.timeout:g}s: {why}")


# -- broadcast ---------------------------------------------------------------------------------
async def check_broadcast(ctx: Context, answering: bool) -> None:
    """Broadcasts on the role's channel: someone listens; the agent still answers afterwards.

    Whether the agent ran a handler cannot be seen from outside: that is said as INFO."""
    assert ctx.record is not None
    report, opts, probe = ctx.report, ctx.options, ctx.probe
    channels = [ctx.keys.broadcast_channel(), ctx.keys.broadcast_channel(ctx.record.role)]
    counts: Any = await probe.client.pubsub_numsub(*channels)
    silent = [str(channel) for channel, n in counts if int(n) == 0]
    if silent:
        report.failed(
            "broadcast.subscribed",
            f"nobody subscribes to {', '.join(silent)}: every agent subscribes to the broadcast "
            "channel and its role's",
        )
    else:
        report.passed(
            "broadcast.subscribed",
            ", ".join(f"{n} subscriber(s) on {channel}" for channel, n in counts),
        )
    unknown = ctx.unknown_type
    receivers = 0
    for type in (opts.type, unknown):
        env = probe.envelope(Kind.BROADCAST, type, opts.payload, target=f"role:{ctx.record.role}")
        receivers += await probe.publish(channels[1], env)
    report.info(
        "broadcast.handled",
        f"published {opts.type!r} and an unknown type on {channels[1]} ({receivers} deliveries); "
        "whether the agent ran a handler is not observable over the wire",
    )
    if not answering:
        report.skipped("broadcast.survives", "request.name did not pass")
        return
    req, entry_id, reply = await request(ctx, ctx.inbox, opts.type, opts.payload)
    if reply is not None and reply.error is None:
        report.passed("broadcast.survives", "still answers requests after the broadcasts")
    else:
        why = await ctx.diagnose(ctx.inbox, entry_id, req) if reply is None else "an error reply"
        report.failed("broadcast.survives", f"no longer answers after the broadcasts: {why}")
