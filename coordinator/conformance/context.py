"""What the checks of one conformance run share: the probe, the options, the report, the
agent's current record, and the request they send by hand."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from coordinator.conformance.options import ConformanceOptions
from coordinator.conformance.probe import Probe
from coordinator.conformance.report import Report
from schemas.agent import AgentRecord
from schemas.envelope import Envelope, Kind
from schemas.keys import KeySpace

__all__ = ["Context", "errors_of", "request", "traceparent"]


@dataclass
class Context:
    """What every check of one run shares."""

    probe: Probe
    options: ConformanceOptions
    report: Report
    name: str
    since_ms: int  # the Redis time the run started: dead letters are searched from there
    record: AgentRecord | None = None

    @property
    def keys(self) -> KeySpace:
        return self.probe.keys

    @property
    def inbox(self) -> str:
        return self.probe.keys.inbox(self.name)

    @property
    def unknown_type(self) -> str:
        """A message type no agent handles (the error checks send it)."""
        return f"conformance.no-such-type.{self.probe.run_id[-6:]}"

    @property
    def instance(self) -> str:
        return self.record.instance_id if self.record is not None else "?"

    async def diagnose(self, stream: str, entry_id: str, env: Envelope) -> str:
        why = await self.probe.diagnose(stream, entry_id, env.id, self.since_ms, self.instance)
        strays = self.probe.strays()
        if strays:
            why += (
                f"; replies came with other correlation ids {strays} (a reply's correlation_id "
                f"is the request's id, {env.id})"
            )
        if self.probe.undecodable:
            why += f"; undecodable replies: {self.probe.undecodable}"
        return why


def errors_of(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or '-'}: {err['msg']}" for err in e.errors())


def traceparent() -> str:
    """A fresh W3C traceparent (the request checks expect it back in the reply's headers)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


async def request(
    ctx: Context,
    stream: str,
    type: str,
    payload: Any,
    *,
    headers: dict[str, str] | None = None,
    expires_in: float | None = None,
    wait: float | None = None,
) -> tuple[Envelope, str, Envelope | None]:
    """Send a request into ``stream`` by hand; the request, its entry id and the reply."""
    target = ctx.name if stream == ctx.inbox else f"role:{ctx.record.role if ctx.record else ''}"
    env = ctx.probe.envelope(
        Kind.REQUEST, type, payload, target=target, headers=headers,
        expires_in=ctx.options.timeout if expires_in is None else expires_in,
    )  # fmt: skip
    maxlen = ctx.probe.settings.inbox_maxlen
    if stream != ctx.inbox:
        maxlen = ctx.probe.settings.queue_maxlen
    entry_id = await ctx.probe.xadd(stream, env, maxlen)
    reply = await ctx.probe.reply(env.id, ctx.options.timeout if wait is None else wait)
    return env, entry_id, reply
