"""``Host``: many agents in one process, one reply list, one heartbeat entry per interval."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk import Agent, Bus, Host
from agent_sdk.errors import InvalidInput, NameLost
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.envelope import Envelope, Kind, encode_json
from schemas.events import RegistryEvent, RegistryEventType
from schemas.keys import KeySpace
from tests.support import wait_for


async def _names(r: aioredis.Redis, keys: KeySpace) -> set[str]:
    return set(await r.smembers(keys.agents()))


async def _events(r: aioredis.Redis, keys: KeySpace) -> list[RegistryEvent]:
    rows: Any = await r.xrange(keys.events())
    return [RegistryEvent.from_fields(i, f) for i, f in rows]


async def test_a_host_registers_its_agents_and_heartbeats_them_in_one_entry(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    host = Host(settings, name="h1")
    for i in range(40):
        host.agent(f"a{i}", "worker", capabilities=["x"])
    async with host:
        assert await _names(r, keys) == {f"a{i}" for i in range(40)}
        beats = host.heartbeats
        assert beats is not None
        first = beats.sent
        # three TTLs: nobody expires, and one entry per interval carried all 40
        await asyncio.sleep(3 * settings.ttl)  # the time under test
        assert await _names(r, keys) == {f"a{i}" for i in range(40)}
        sent = beats.sent - first
        intervals = 3 * settings.ttl / settings.heartbeat_interval
        assert 0.5 * intervals <= sent <= 2 * intervals + 2, (sent, intervals)
        assert coordinator.stats.heartbeats >= 40 * sent * 0.9
    assert await _names(r, keys) == set()  # every agent left with the host
    kinds = {e.type for e in await _events(r, keys)}
    assert RegistryEventType.AGENT_EXPIRED not in kinds


async def test_agents_come_and_go_while_the_host_runs(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    async with Host(settings, name="h2") as host:
        host.agent("resident", "worker")  # created after start: started by hand below
        assert await _names(r, keys) == set()
        await host.agents["resident"].start()
        for round_ in range(3):  # a per-user agent per request, the same name each time
            async with host.agent("user-42", "assistant") as user:
                assert (await r.hget(keys.record("user-42"), "instance_id")) == user.instance_id
                assert await _names(r, keys) == {"resident", "user-42"}
            assert await _names(r, keys) == {"resident"}, round_  # left at once
            assert "user-42" not in host.agents
    deregistered = [
        e for e in await _events(r, keys) if e.type is RegistryEventType.AGENT_DEREGISTERED
    ]
    assert [e.name for e in deregistered].count("user-42") == 3


async def test_names_are_unique_on_a_host_and_max_agents_holds(settings: Settings) -> None:
    host = Host(settings, name="h3", max_agents=2)
    first = host.agent("same", "worker")
    with pytest.raises(InvalidInput, match="already carries an agent named 'same'"):
        host.agent("same", "worker")
    host.agent("other", "worker")
    with pytest.raises(InvalidInput, match="max_agents"):
        host.agent("third", "worker")
    assert host.agents == {"same": first, "other": host.agents["other"]}
    with pytest.raises(InvalidInput, match="pass host= alone"):
        Agent("x", "worker", host=host, settings=settings)
    with pytest.raises(InvalidInput, match="invalid host name"):
        Host(settings, name="not a name")


def test_settings_that_are_not_settings_are_refused_with_a_hint(settings: Settings) -> None:
    """``Host(env.settings)`` (the method, not its result) said only ``'function' object has
    no attribute 'model_copy'`` from deep inside the host."""
    with pytest.raises(InvalidInput, match=r"got method \(a function or method: call it"):
        Host(settings.model_copy)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"must be an agent_sdk\.Settings, got dict"):
        Agent("x", "worker", settings={"namespace": "n"})  # type: ignore[arg-type]


async def test_an_agent_needs_its_host_running(settings: Settings) -> None:
    host = Host(settings, name="h4")
    agent = host.agent("early", "worker")
    with pytest.raises(InvalidInput, match="start the host first"):
        await agent.start()


async def test_requests_reach_hosted_agents_and_a_slow_one_delays_no_other(
    coordinator: Coordinator, settings: Settings
) -> None:
    host = Host(settings, name="h5")
    slow, fast = host.agent("slow", "worker"), host.agent("fast", "worker")
    release = asyncio.Event()

    @slow.on("work")
    async def slow_work(payload: Any) -> str:
        await release.wait()
        return "slow done"

    @fast.on("work")
    async def fast_work(payload: Any) -> str:
        return "fast done"

    @fast.on("boom")
    async def boom(payload: Any) -> str:
        raise RuntimeError("only this handler fails")

    async with host, Bus(settings) as bus:
        pending = asyncio.ensure_future(bus.request("slow", "work", {}, timeout=20))
        assert await bus.request("fast", "work", {}, timeout=10) == "fast done"
        assert not pending.done()  # the slow handler still runs; the other agent answered
        with pytest.raises(Exception, match="only this handler fails"):
            await bus.request("fast", "boom", {}, timeout=10)
        release.set()
        assert await pending == "slow done"
        # hosted agents talk to each other through the host's one reply list
        assert await slow.request("fast", "work", {}, timeout=10) == "fast done"
        assert slow.reply_key == fast.reply_key == host.router.key


async def test_one_agent_losing_its_name_stops_only_that_agent(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    host = Host(settings, name="h6")
    victim, bystander = host.agent("victim", "worker"), host.agent("bystander", "worker")
    async with host:
        env = Envelope(
            kind=Kind.CONTROL,
            type="reannounce",
            sender="coordinator",
            target="victim",
            payload={"instance_id": victim.instance_id, "reason": "name_lost", "holder": "x"},
        )
        await r.lpush(host.router.key, encode_json(env))
        await asyncio.wait_for(victim.wait_stopped(), 10)
        assert isinstance(victim.name_lost, NameLost)
        assert bystander.running
        assert "victim" not in host.agents
        assert await r.hget(keys.record("bystander"), "instance_id") == bystander.instance_id


async def test_a_hosted_agent_that_expired_announces_again(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """The registry dropped one agent (Redis lost it): the next lease beat of that agent is
    answered on the host's reply list, and the agent announces again (same instance)."""
    host = Host(settings, name="h7")
    agent = host.agent("dropped", "worker")
    host.agent("kept", "worker")
    async with host:
        await r.delete(keys.record("dropped"))
        await r.srem(keys.agents(), "dropped")
        await wait_for(
            lambda: r.hget(keys.record("dropped"), "instance_id"), message="announced again"
        )
        assert await r.hget(keys.record("dropped"), "instance_id") == agent.instance_id
        membership = agent._membership
        assert membership is not None
        assert membership.reannounces >= 1


async def test_the_only_agent_of_a_host_that_expired_announces_again(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A host carrying one agent still heartbeats it in a lease: the coordinator's answer to a
    plain heartbeat would go to the agent's own reply list, which nobody reads."""
    host = Host(settings, name="h9")
    agent = host.agent("single", "worker")
    async with host:
        await r.delete(keys.record("single"))
        await r.srem(keys.agents(), "single")
        await wait_for(
            lambda: r.hget(keys.record("single"), "instance_id"), message="announced again"
        )
        assert await r.hget(keys.record("single"), "instance_id") == agent.instance_id
        rows: Any = await r.xrange(keys.control())
        assert "lease" in {fields["type"] for _, fields in rows}


async def test_a_lone_agent_keeps_the_wire_of_one_agent(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A lone Agent is a host of one: its reply list is its own and it sends plain
    heartbeats (never a lease)."""
    async with Agent("alone", "worker", settings=settings) as agent:
        assert agent.reply_key == keys.replies("alone", agent.instance_id)
        assert agent.host.name == "alone"
        beats = agent.host.heartbeats
        assert beats is not None
        await wait_for(lambda: beats.sent >= 2, message="two heartbeats")
        rows: Any = await r.xrange(keys.control())
        types = {fields["type"] for _, fields in rows}
        assert "lease" not in types
        assert orjson.loads(rows[-1][1]["payload"])["instance_id"] == agent.instance_id


@pytest.mark.parametrize("hosted", [True, False])
async def test_an_agent_reports_draining_before_it_leaves(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace, hosted: bool
) -> None:
    if hosted:
        async with Host(settings, name="h8") as host:
            host.agent("other", "worker")
            await host.agents["other"].start()
            async with host.agent("drainer", "worker"):
                pass
    else:
        async with Agent("drainer", "worker", settings=settings):
            pass
    events = [e for e in await _events(r, keys) if e.name == "drainer"]
    kinds = [e.type for e in events]
    assert kinds[0] is RegistryEventType.AGENT_REGISTERED
    assert kinds[-1] is RegistryEventType.AGENT_DEREGISTERED
    updates = [e for e in events if e.type is RegistryEventType.AGENT_UPDATED]
    assert [u.changes.get("status") for u in updates] == [["ready", "draining"]]


async def test_a_host_stopping_reports_its_agents_draining_together(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Agents stopping together report ``draining`` in shared entries (one report at a time,
    joined by every agent that asked meanwhile), not one round trip each in a row: a host of
    10,000 stopping used to run out of its 5 s bound for most of them."""
    from agent_sdk.heartbeats import Heartbeats

    reports: list[int] = []
    real_send = Heartbeats._send

    async def send(self: Heartbeats, due: list[Any]) -> None:
        reports.append(len(due))
        await real_send(self, due)

    host = Host(settings, name="h-drain")
    for i in range(60):
        host.agent(f"d-{i}", "worker")
    await host.start()
    monkeypatch.setattr(Heartbeats, "_send", send)
    await host.stop()
    assert sum(reports) >= 60  # every agent's draining went out
    assert len(reports) <= 10  # in a few reports, not 60 in a row
    events = [e for e in await _events(r, keys) if e.name.startswith("d-")]
    drained = {e.name for e in events if e.type is RegistryEventType.AGENT_UPDATED
               and e.changes.get("status") == ["ready", "draining"]}  # fmt: skip
    assert drained == {f"d-{i}" for i in range(60)}


async def test_a_reader_whose_stream_is_deleted_recovers_without_a_traceback(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis 7 answers a read blocked on a stream that is deleted with ``UNBLOCKED``: the
    reader recreates its groups (as after ``NOGROUP``) and logs a warning, not a traceback."""
    got: list[Any] = []
    agent = Agent("unblocked", "worker", settings=settings)

    @agent.on("job")
    async def job(payload: Any) -> None:
        got.append(payload)

    async with agent, Bus(settings) as bus:
        consumer = agent.messaging.consumer
        assert consumer is not None
        await wait_for(lambda: consumer.blocking, message="the reader blocks")
        await r.delete(keys.inbox("unblocked"))
        await wait_for(
            lambda: r.exists(keys.inbox("unblocked")), message="the inbox and its group recreated"
        )
        await bus.send("unblocked", "job", {"n": 1})
        await wait_for(lambda: got, message="handled after the stream was recreated")
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]


async def test_an_answer_later_than_a_ttl_is_no_stall(
    coordinator_settings: Any, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """Behind a backlog (a fleet starting at once, a coordinator starting late) the answer to an
    announcement may come more than a TTL after it was sent: the agent heartbeats at once
    instead of re-announcing (the registry counts its first deadline from the answer)."""
    host = Host(settings, name="h9")
    agents = [host.agent(f"late-{i}", "worker") for i in range(5)]
    starting = asyncio.ensure_future(host.start())
    await wait_for(lambda: r.xlen(keys.control()), message="the announcements wait in the stream")
    await asyncio.sleep(2 * settings.ttl)  # no coordinator yet: the delay under test
    async with Coordinator(coordinator_settings):
        await asyncio.wait_for(starting, 10)
        try:
            for agent in agents:
                await wait_for(lambda a=agent: a.fence.valid, message=f"{agent.name} fenced in")
            membership = agents[0]._membership
            assert membership is not None
            assert membership.reannounces == 0
            assert await _names(r, keys) == {a.name for a in agents}
        finally:
            await host.stop()


async def test_a_running_host_is_a_client_too(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """The verbs and registry reads, defined once, work on a host: as the host, over its own
    data plane and reply list (no extra connection per call)."""
    host = Host(settings, name="h-client")
    worker = host.agent("hc-worker", "hc-role")

    @worker.on("double")
    async def double(payload: int) -> int:
        return 2 * payload

    with pytest.raises(InvalidInput, match="not running"):
        await host.send("hc-worker", "double", 1)
    async with host:
        assert [a.name for a in await host.discover(role="hc-role")] == ["hc-worker"]
        assert (await host.select(role="hc-role")).name == "hc-worker"
        assert await host.request("hc-worker", "double", 21) == 42
        assert await host.request(role="hc-role", type="double", payload=2, durable=False) == 4
        await host.send("hc-worker", "double", 1)
        rows: Any = await r.xrange(keys.inbox("hc-worker"))
        assert rows[-1][1]["sender"] == "h-client"


async def test_a_hosts_usage_stats_are_flushed_by_one_loop(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """No task per agent waking every second to find nothing to write: the host's flusher
    writes the stats of the agents that handled something."""
    host = Host(settings, name="h-usage")
    for i in range(30):
        host.agent(f"u{i}", "usage-role").on("ping")(_echo)
    async with host, Bus(settings) as bus:
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert not [
            n for n in names if n.startswith("agentbus-usage-") and n != "agentbus-usage-flusher"
        ]
        for _ in range(3):
            await bus.request("u7", "ping", 1)
        await wait_for(
            lambda: r.hget(keys.stats("u7"), "ping.invocations"), message="u7's stats written"
        )
        assert await r.hget(keys.stats("u7"), "instance_id") == host.agents["u7"].instance_id


async def test_a_hosts_new_agents_claim_their_stats_together(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Agents that just started have nothing to flush but the claim of their stats hash (a
    previous instance's counts cleared): the flusher sends those claims together, with no
    flush of each agent's own."""
    from agent_sdk.usage import UsageRecorder

    for i in range(30):  # what earlier instances of these names left
        await r.hset(keys.stats(f"c{i}"), mapping={"instance_id": "old", "started_at": "2000",
                                                   "ping.invocations": 5})  # fmt: skip
    flushes: list[str] = []
    flush = UsageRecorder.flush

    async def counted(self: UsageRecorder, batcher: Any = None) -> None:
        flushes.append(self.name)
        await flush(self, batcher)

    monkeypatch.setattr(UsageRecorder, "flush", counted)
    host = Host(settings, name="h-claims")
    for i in range(30):
        host.agent(f"c{i}", "claim-role")
    async with host:

        async def claimed() -> bool:
            held = [await r.hget(keys.stats(f"c{i}"), "instance_id") for i in range(30)]
            return held == [host.agents[f"c{i}"].instance_id for i in range(30)]

        await wait_for(claimed, message="every new instance claimed its stats hash")
        assert not await r.hexists(keys.stats("c3"), "ping.invocations")  # cleared
        assert flushes == []


async def test_a_claim_redis_refuses_is_tried_again(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A claim that fails (here the stats key is not a hash: WRONGTYPE) fails alone: the other
    agents' claims of the same batch hold, and the failed one is tried again next round."""
    await r.set(keys.stats("k0"), "not a hash")
    host = Host(settings, name="h-claim-retry")
    for i in range(3):
        host.agent(f"k{i}", "claim-role")
    async with host:

        async def held(name: str) -> bool:
            if await r.type(keys.stats(name)) != "hash":
                return False
            return await r.hget(keys.stats(name), "instance_id") == host.agents[name].instance_id

        await wait_for(lambda: held("k1"), message="k1 claimed its stats hash")
        assert await held("k2")
        assert await r.get(keys.stats("k0")) == "not a hash"  # refused, left as it was
        await r.delete(keys.stats("k0"))
        await wait_for(lambda: held("k0"), message="k0's claim tried again and held")


async def _echo(payload: Any) -> Any:
    return payload


async def test_an_announcement_redis_refuses_fails_its_start_at_once(
    settings: Settings, r: aioredis.Redis, keys: KeySpace
) -> None:
    """A hosted agent's announcement is written without being awaited (its answer is): a
    write Redis refuses fails the start with that error, not with ``NoCoordinator`` after the
    announce timeout (no coordinator runs here: only the write's failure can end the start)."""
    from agent_sdk.errors import ConnectionFailed

    patient = settings.model_copy(update={"announce_timeout": 600.0})
    async with Host(patient, name="h-refused") as host:
        await r.set(keys.control(), "not a stream")  # every XADD to it: WRONGTYPE
        with pytest.raises(ConnectionFailed, match=r"announcing 'refused-1'.*WRONGTYPE"):
            await host.agent("refused-1", "worker").start()
        assert "refused-1" not in host.agents
