"""Simulated agents speaking the real control protocol (for fleets of thousands).

One process can stand for thousands of agents: announces and heartbeats are real control
envelopes (``schemas``) ``XADD``ed to the real control stream in pipelined batches, and the
coordinator's ``announce_result`` replies are popped from each agent's real reply list.

The fleet's cards make discovery selective: agent ``i`` has role ``role-<i % 10>`` and the
capabilities ``skill-<(i // 10) % 5>`` and ``lang-<(i // 50) % 2>``, so every role + 2
capabilities query matches exactly 1 % of the fleet (100 of 10,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from agent_sdk.membership import CONTROL_MAXLEN  # what the SDK applies to the control stream
from schemas.agent import AgentCard, Announce, ControlType, Heartbeat
from schemas.envelope import Envelope, Kind, encode_fields, new_id, utcnow
from schemas.keys import KeySpace

__all__ = [
    "CONTROL_MAXLEN",
    "SimAgent",
    "announce_all",
    "card_for",
    "collect_results",
    "echo_agent",
    "heartbeat_fields",
    "query_for",
    "sim_agents",
]

_PIPE = 500  # commands per pipeline round trip


def card_for(i: int, prefix: str = "sim") -> AgentCard:
    return AgentCard(
        name=f"{prefix}-{i:05d}",
        role=f"role-{i % 10}",
        version="1.2.3",
        description="simulated agent",
        capabilities=(f"skill-{(i // 10) % 5}", f"lang-{(i // 50) % 2}"),
        tags=("bench",),
        host="bench",
        pid=1,
        max_concurrency=4,
    )


def echo_agent(host: Any, i: int, prefix: str, card: AgentCard | None = None) -> Any:
    """Agent ``<prefix>-<i>`` made on ``host`` (an ``agent_sdk.Host``) with ``card_for``'s card
    (or ``card``), answering ``echo``."""
    card = card or card_for(i, prefix)
    agent = host.agent(f"{prefix}-{i}", card.role, capabilities=card.capabilities, tags=card.tags)

    @agent.on("echo")
    async def echo(payload: Any) -> Any:
        return payload

    return agent


def query_for(j: int) -> tuple[str, tuple[str, str]]:
    """The j-th discovery query: a role and two capabilities (1 % of the fleet matches)."""
    return f"role-{j % 10}", (f"skill-{(j // 10) % 5}", f"lang-{(j // 50) % 2}")


@dataclass(slots=True)
class SimAgent:
    card: AgentCard
    instance_id: str
    reply_to: str

    @property
    def name(self) -> str:
        return self.card.name


def sim_agents(keys: KeySpace, start: int, count: int, prefix: str = "sim") -> list[SimAgent]:
    out = []
    for i in range(start, start + count):
        card = card_for(i, prefix)
        instance = new_id()
        out.append(SimAgent(card, instance, keys.replies(card.name, instance)))
    return out


def announce_fields(
    agent: SimAgent, heartbeat_ms: int, ttl_ms: int, lease: str | None = None
) -> dict[Any, Any]:
    """An announce as the SDK writes it; ``lease``: the host lease it joins (protocol 1.2)."""
    payload = Announce(
        card=agent.card, instance_id=agent.instance_id, heartbeat_ms=heartbeat_ms, ttl_ms=ttl_ms,
        lease=lease,
    ).model_dump(mode="json", exclude_none=True)  # fmt: skip
    env = Envelope(
        kind=Kind.CONTROL,
        type=ControlType.ANNOUNCE.value,
        sender=agent.name,
        reply_to=agent.reply_to,
        deadline=utcnow() + timedelta(seconds=60),
        payload=payload,
    )
    return dict(encode_fields(env))


def heartbeat_fields(agent: SimAgent) -> dict[Any, Any]:
    """A heartbeat envelope as the SDK writes it (fresh id and time each beat)."""
    env = Envelope(
        kind=Kind.CONTROL,
        type=ControlType.HEARTBEAT.value,
        sender=agent.name,
        payload=Heartbeat(instance_id=agent.instance_id).model_dump(mode="json"),
    )
    return dict(encode_fields(env))


class HeartbeatTemplate:
    """Pre-encoded heartbeat fields; ``fields()`` refreshes only ``id`` and ``sent_at``."""

    def __init__(self, agent: SimAgent) -> None:
        self._base = heartbeat_fields(agent)

    def fields(self, sent_at: str) -> dict[Any, Any]:
        out = dict(self._base)
        out["id"] = new_id()
        out["sent_at"] = sent_at
        return out


async def announce_all(
    r: aioredis.Redis,
    keys: KeySpace,
    agents: Sequence[SimAgent],
    *,
    heartbeat_ms: int = 1000,
    ttl_ms: int = 3000,
) -> None:
    """XADD one announce per agent to the control stream, pipelined."""
    control = keys.control()
    encoded = [announce_fields(a, heartbeat_ms, ttl_ms) for a in agents]
    for i in range(0, len(encoded), _PIPE):
        pipe = r.pipeline(transaction=False)
        for fields in encoded[i : i + _PIPE]:
            pipe.xadd(control, fields, maxlen=CONTROL_MAXLEN, approximate=True)
        await pipe.execute()


async def collect_results(
    r: aioredis.Redis, agents: Sequence[SimAgent], timeout: float = 60.0
) -> tuple[int, list[str]]:
    """Pop each agent's ``announce_result``; (accepted count, error codes of refusals)."""
    waiting = list(agents)
    accepted = 0
    refused: list[str] = []
    deadline = time.monotonic() + timeout
    pause = 0.005
    while waiting and time.monotonic() < deadline:
        still = []
        for i in range(0, len(waiting), _PIPE):
            chunk = waiting[i : i + _PIPE]
            pipe = r.pipeline(transaction=False)
            for a in chunk:
                pipe.rpop(a.reply_to)
            for a, item in zip(chunk, await pipe.execute(), strict=True):
                if item is None:
                    still.append(a)
                    continue
                reply = orjson.loads(item)
                if reply.get("type") != ControlType.ANNOUNCE_RESULT.value:
                    still.append(a)  # e.g. a reannounce for a heartbeat: keep waiting
                elif reply.get("error"):
                    refused.append(str(reply["error"].get("code")))
                else:
                    accepted += 1
        waiting = still
        if waiting:
            await asyncio.sleep(pause)  # polling reply lists of thousands of simulated agents
            pause = min(pause * 2, 0.1)
    return accepted, refused


_ANNOUNCE_TIMEOUT = 5.0  # seconds an agent waits for announce_result before announcing again


async def heartbeat_until(
    r: aioredis.Redis,
    keys: KeySpace,
    agents: Sequence[SimAgent],
    *,
    interval: float,
    stop: asyncio.Event,
    heartbeat_ms: int = 1000,
    ttl_ms: int = 3000,
    ticks_per_interval: int = 10,
    ramp: int = 0,
) -> dict[str, Any]:
    """Run the agents' control loop as the SDK does.

    ``ramp`` > 0: the agents start (announce) gradually, at most ``ramp`` announcements in
    flight at once, as a fleet that is rolled out; 0: every agent has already announced
    (``announce_all``) and waits for its result.

    Agents are visited in ``ticks_per_interval`` slices per ``interval``. An agent heartbeats
    only once its ``announce_result`` arrived (the SDK starts heartbeating after ``announce``
    returns); an agent told to ``reannounce`` announces again (same instance) and waits for the
    result; an unanswered announce is repeated after ``announce_timeout``. Each visit pops the
    agent's reply list in the same pipeline (a real agent blocks on it with BRPOP).

    Returns counts and how late the simulator ran (a late simulator would cause expiries that
    are not the coordinator's fault).
    """
    control = keys.control()
    templates = [HeartbeatTemplate(a) for a in agents]
    order = list(range(len(agents)))
    slices = [order[k::ticks_per_interval] for k in range(ticks_per_interval)]
    tick = interval / ticks_per_interval
    sent = reannounces = refused = 0
    max_late = 0.0
    # 0 = registered (heartbeats); > 0 = announce in flight, repeat it after this monotonic time
    never = float("inf")
    waiting = [never if ramp else time.monotonic() + _ANNOUNCE_TIMEOUT] * len(agents)
    started = 0 if ramp else len(agents)
    in_flight = 0
    first_sent = [time.monotonic()] * len(agents)  # when each agent first announced
    join_times: list[float] = []  # first announce → first announce_result, seconds
    joined = [False] * len(agents)
    next_at = time.monotonic()
    k = 0
    while not stop.is_set():
        now = time.monotonic()
        if ramp and started < len(agents) and in_flight < ramp:
            pipe = r.pipeline(transaction=False)
            while started < len(agents) and in_flight < ramp:
                pipe.xadd(control, announce_fields(agents[started], heartbeat_ms, ttl_ms),
                          maxlen=CONTROL_MAXLEN, approximate=True)  # fmt: skip
                waiting[started] = now + _ANNOUNCE_TIMEOUT
                first_sent[started] = now
                started += 1
                in_flight += 1
            await pipe.execute()
        if now < next_at:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(next_at - now, tick / 4))
            continue
        max_late = max(max_late, now - next_at)
        sent_at = utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        batch = slices[k % ticks_per_interval]
        for i in range(0, len(batch), _PIPE):
            chunk = batch[i : i + _PIPE]
            pipe = r.pipeline(transaction=False)
            pop_at: list[int] = []
            visited: list[int] = []
            for j in chunk:
                if waiting[j] == never:
                    continue  # not started yet
                if waiting[j] == 0:
                    pipe.xadd(control, templates[j].fields(sent_at), maxlen=CONTROL_MAXLEN,
                              approximate=True)  # fmt: skip
                    sent += 1
                elif now >= waiting[j]:
                    pipe.xadd(control, announce_fields(agents[j], heartbeat_ms, ttl_ms),
                              maxlen=CONTROL_MAXLEN, approximate=True)  # fmt: skip
                    waiting[j] = now + _ANNOUNCE_TIMEOUT
                    reannounces += 1
                pop_at.append(len(pipe))
                visited.append(j)
                pipe.rpop(agents[j].reply_to)
            if not visited:
                continue
            results = await pipe.execute()
            for j, item in zip(visited, (results[p] for p in pop_at), strict=True):
                if item is None:
                    continue
                reply = orjson.loads(item)
                kind = reply.get("type")
                if kind == ControlType.ANNOUNCE_RESULT.value:
                    if reply.get("error"):
                        refused += 1
                    elif waiting[j]:
                        if not joined[j]:
                            joined[j] = True
                            join_times.append(time.monotonic() - first_sent[j])
                        waiting[j] = 0
                        in_flight = max(0, in_flight - 1)
                elif kind == ControlType.REANNOUNCE.value and waiting[j] == 0:
                    waiting[j] = now  # announce again on the next visit
                    in_flight += 1
        k += 1
        next_at += tick
    return {
        "heartbeats": sent,
        "reannounces": reannounces,
        "refused": refused,
        "unregistered_at_stop": sum(1 for w in waiting if w),
        "never_started": len(agents) - started,
        "join_times": join_times,
        "max_late_ms": round(max_late * 1000, 1),
    }
