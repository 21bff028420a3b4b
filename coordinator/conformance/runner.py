"""``run_conformance``: every check against one live agent, in an order that keeps it alive
until the checks that stop it (kill and restart, then the clean stop) come last."""

from __future__ import annotations

from agent_sdk.connection import make_client, redis_errors
from agent_sdk.settings import Settings
from coordinator.conformance.context import Context
from coordinator.conformance.control import check_heartbeats, check_registration
from coordinator.conformance.data import (
    check_broadcast,
    check_request_by_name,
    check_request_by_role,
    check_requests_refused,
    check_sends,
)
from coordinator.conformance.lifecycle import check_redelivery, check_stop
from coordinator.conformance.options import ConformanceOptions
from coordinator.conformance.probe import Probe
from coordinator.conformance.report import Report

__all__ = ["CHECKS", "run_conformance"]

#: Every check, in the order a run reports them (the last five only with process control).
CHECKS = (
    "registration.record",
    "registration.indexes",
    "registration.epoch",
    "heartbeat.last_seen",
    "heartbeat.deadline",
    "heartbeat.payload",
    "heartbeat.epoch",
    "request.name",
    "request.echo",
    "request.headers",
    "request.ack",
    "request.role",
    "error.unknown_type",
    "request.expired",
    "send.ack",
    "send.unknown_type",
    "broadcast.subscribed",
    "broadcast.handled",
    "broadcast.survives",
    "redelivery.restart",
    "redelivery.queued",
    "redelivery.pending",
    "lifecycle.draining",
    "lifecycle.leave",
)


async def run_conformance(
    settings: Settings, name: str, options: ConformanceOptions | None = None
) -> Report:
    """Exercise the live agent ``name`` over the wire; the report of every check.

    Raises ``ConnectionFailed`` when Redis cannot be reached; anything the agent does wrong is a
    failed check, not an exception."""
    options = options or ConformanceOptions()
    report = Report(name)
    client = make_client(settings, decode_responses=True, max_connections=8)
    probe = Probe(client, settings)
    since_ms: int | None = None
    try:
        with redis_errors(settings, f"checking agent {name!r}"):
            since_ms = await probe.now_ms()
            await _run(Context(probe, options, report, name, since_ms))
    finally:
        try:
            with redis_errors(settings, "cleaning up"):
                await probe.close(since_ms)
        finally:
            await client.aclose()
    return report


async def _run(ctx: Context) -> None:
    opts, report = ctx.options, ctx.report
    if not await check_registration(ctx):
        for check in CHECKS[len(report.results) :]:
            report.skipped(check, "the agent is not registered")
        return
    await check_heartbeats(ctx)
    answering = await check_request_by_name(ctx)
    await check_request_by_role(ctx)
    await check_requests_refused(ctx)
    await check_sends(ctx)
    await check_broadcast(ctx, answering)
    if opts.kill is not None and opts.start is not None:
        await check_redelivery(ctx, opts.kill, opts.start)
    else:
        for check in ("redelivery.restart", "redelivery.queued", "redelivery.pending"):
            report.skipped(check, "needs kill and start commands (--kill-command, --start-command)")
    if opts.stop is not None:
        await check_stop(ctx, opts.stop)
    else:
        for check in ("lifecycle.draining", "lifecycle.leave"):
            report.skipped(check, "needs a way to stop the agent (--stop-command or --lifecycle)")
