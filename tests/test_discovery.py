"""Discovery and selection against a registry built by the real coordinator."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agent_sdk import Agent, Bus, NoResponders, Settings
from agent_sdk.discovery import Discovery, decode_record
from agent_sdk.errors import InvalidInput
from agent_sdk.types import AgentRecord, AgentStatus
from coordinator import Coordinator, CoordinatorSettings
from schemas.envelope import Envelope, Kind, decode_json, encode_fields
from schemas.errors import ProtocolError
from schemas.keys import KeySpace
from schemas.semver import parse_range

ROLES = ["alpha", "beta", "gamma", "delta"]
CAPS = [f"c{i}" for i in range(8)]
TAGS = [f"t{i}" for i in range(6)]
VERSIONS = ["0.9.0", "1.0.0", "1.2.3", "1.10.0-rc.1", "1.10.0", "2.0.0", "2.1.5"]
RANGES = ["^1.0", ">=1.2 <2", "~1.2.0", "2.x", "*", "<1", "1.10.0-rc.1", "^1.0 || ^2.1", ">2.1"]
STATUSES = list(AgentStatus)
FLEET_SIZE = 1000


async def register_raw(
    r: aioredis.Redis, keys: KeySpace, cards: list[dict[str, Any]], *, timeout: float = 60
) -> None:
    """Announce ``cards`` through the control stream (as agents would) and await every answer.

    Long TTLs keep the fleet alive without heartbeats. Extra keys ``status``/``load`` of a
    card go to the announcement.
    """
    reply_to = keys.replies("populator", "fleet")
    pipe = r.pipeline(transaction=False)
    for i, card in enumerate(cards):
        card = dict(card)
        status = card.pop("status", "ready")
        load = card.pop("load", 0)
        payload = {
            "card": card,
            "instance_id": f"inst-{i}",
            "status": status,
            "load": load,
            "heartbeat_ms": 1_000_000,
            "ttl_ms": 3_600_000,
        }
        env = Envelope(
            kind=Kind.CONTROL,
            type="announce",
            sender=card["name"],
            reply_to=reply_to,
            payload=payload,
        )
        pipe.xadd(keys.control(), encode_fields(env))  # type: ignore[arg-type]
    await pipe.execute()
    for _ in cards:
        item = await r.brpop([reply_to], timeout=timeout)
        assert item is not None, "the coordinator did not answer every announcement"
        answer = decode_json(item[1])
        assert answer.error is None, answer.error


def random_cards(rng: random.Random, n: int) -> list[dict[str, Any]]:
    cards = []
    for i in range(n):
        max_conc = rng.randint(1, 8)
        cards.append(
            {
                "name": f"agent-{i:04d}",
                "role": rng.choice(ROLES),
                "capabilities": rng.sample(CAPS, rng.randint(0, 4)),
                "tags": rng.sample(TAGS, rng.randint(0, 3)),
                "version": rng.choice(VERSIONS),
                "max_concurrency": max_conc,
                "metadata": {"i": str(i)},
                "status": rng.choice(STATUSES).value,
                "load": rng.randint(0, max_conc),
            }
        )
    return cards


@dataclass
class Fleet:
    loop: asyncio.AbstractEventLoop
    bus: Bus
    records: list[AgentRecord]

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture
def fleet(coordinator_settings: CoordinatorSettings, settings: Settings) -> Iterator[Fleet]:
    """1,000 random agents registered by the coordinator; records read back by full validation.

    Sync on purpose: hypothesis drives the examples, each run on this private event loop.
    """
    loop = asyncio.new_event_loop()

    async def build() -> tuple[Bus, list[AgentRecord]]:
        r = aioredis.Redis.from_url(settings.url)
        try:
            async with Coordinator(coordinator_settings):
                await register_raw(r, settings.keys, random_cards(random.Random(7), FLEET_SIZE))
            names = sorted(n.decode() for n in await r.smembers(settings.keys.agents()))
            assert len(names) == FLEET_SIZE
            records = [await stored_record(r, settings.keys, n) for n in names]
        finally:
            await r.aclose()
        return await Bus(settings).start(), records

    bus, records = loop.run_until_complete(build())
    try:
        yield Fleet(loop, bus, records)
    finally:
        loop.run_until_complete(bus.stop())
        loop.close()


async def stored_record(r: aioredis.Redis, keys: KeySpace, name: str) -> AgentRecord:
    """The record as stored, fully validated, its ``last_seen`` the later of the hash's and the
    deadline's renewal time (deadline - ttl_ms: a host lease renews deadlines only)."""
    rec = AgentRecord.from_hash(await r.hgetall(keys.record(name)))
    deadline = await r.zscore(keys.deadlines(), name)
    if deadline is None:
        return rec
    renewed = datetime.fromtimestamp((deadline - rec.ttl_ms) / 1000, UTC)
    return rec.model_copy(update={"last_seen": max(rec.last_seen, renewed)})


def brute_force(records: list[AgentRecord], q: dict[str, Any]) -> list[AgentRecord]:
    statuses = q["status"]
    if isinstance(statuses, AgentStatus):
        statuses = [statuses]
    rng = parse_range(q["version"]) if q["version"] else None
    return [
        rec
        for rec in records
        if (q["role"] is None or rec.role == q["role"])
        and all(c in rec.capabilities for c in q["capabilities"])
        and (not q["tags"] or any(t in rec.tags for t in q["tags"]))
        and (statuses is None or rec.status in statuses)
        and (q["max_load"] is None or rec.load <= q["max_load"])
        and (rng is None or rec.version in rng)
    ]


queries = st.fixed_dictionaries(
    {
        "role": st.none() | st.sampled_from([*ROLES, "nobody"]),
        "capabilities": st.lists(st.sampled_from(CAPS), max_size=3, unique=True),
        "tags": st.lists(st.sampled_from([*TAGS, "t-unused"]), max_size=3, unique=True),
        "status": st.none()
        | st.sampled_from(STATUSES)
        | st.lists(st.sampled_from(STATUSES), min_size=1, max_size=3, unique=True),
        "max_load": st.none() | st.integers(0, 8),
        "version": st.none() | st.sampled_from(RANGES),
    }
)


@hsettings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=queries)
def test_discover_matches_a_brute_force_filter(fleet: Fleet, q: dict[str, Any]) -> None:
    got = fleet.run(fleet.bus.discover(**q))
    expected = brute_force(fleet.records, q)
    assert [r.name for r in got] == [r.name for r in expected]
    assert got == expected  # the lean decode gives the same records as full validation


def test_discover_limit_returns_a_subset(fleet: Fleet) -> None:
    everyone = {r.name for r in fleet.run(fleet.bus.discover(role="alpha"))}
    assert len(everyone) > 10
    some = fleet.run(fleet.bus.discover(role="alpha", limit=10))
    assert len(some) == 10
    assert {r.name for r in some} <= everyone
    versioned = fleet.run(fleet.bus.discover(version="^1.0", limit=5))
    assert len(versioned) == 5
    assert all(r.version in parse_range("^1.0") for r in versioned)
    assert fleet.run(fleet.bus.discover(limit=0)) == []


def test_discover_without_filters_lists_everyone(fleet: Fleet) -> None:
    assert fleet.run(fleet.bus.discover()) == fleet.records


@pytest.mark.parametrize(
    "bad",
    [
        {"role": "bad role"},
        {"capabilities": ["a:b"]},
        {"tags": ["*"]},
        {"status": "sleeping"},
        {"version": "not a range"},
        {"limit": -1},
    ],
)
async def test_discover_refuses_bad_filters(
    settings: Settings, bad: dict[str, Any], redis_server: object
) -> None:
    async with Bus(settings) as bus:
        with pytest.raises(InvalidInput):
            await bus.discover(**bad)


# -- decoding ------------------------------------------------------------------------------
def _record(**overrides: Any) -> AgentRecord:
    base: dict[str, Any] = {
        "name": "n1",
        "role": "r",
        "instance_id": "i1",
        "registered_at": "2026-11-21T10:00:00.123Z",
        "last_seen": "2026-11-21T10:00:01.456Z",
        "heartbeat_ms": 100,
        "ttl_ms": 500,
    }
    return AgentRecord.model_validate({**base, **overrides})


@pytest.mark.parametrize(
    "record",
    [
        _record(),
        _record(
            capabilities=("a", "b"),
            tags=("x",),
            region="eu-west",
            host="h1",
            pid=42,
            max_concurrency=7,
            load=3,
            status="draining",
            metadata={"k": "v", "ü": "✓"},
            description='déjà vu: "quotes" and\nnewlines',
            version="1.2.3-rc.1+build.5",
        ),
    ],
)
def test_lean_decode_equals_full_validation(record: AgentRecord) -> None:
    raw = record.to_hash()
    flat: list[bytes] = []
    for k, v in raw.items():
        flat += [k.encode(), v.encode()]
    assert decode_record(flat) == AgentRecord.from_hash(raw) == record
    assert decode_record(raw) == record
    copy = decode_record(flat).model_copy(update={"load": 1})
    assert copy.load == 1


def test_decode_falls_back_to_validation_and_reports_bad_records() -> None:
    raw = _record().to_hash()
    raw["max_concurrency"] = "0"
    with pytest.raises(ProtocolError, match="n1"):
        decode_record(raw)
    raw = _record().to_hash()
    raw["future_field"] = "ignored"
    assert decode_record(raw) == _record()


# -- selection -----------------------------------------------------------------------------
@pytest.fixture
async def trio(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> list[dict[str, Any]]:
    """Three workers registered through the coordinator with fixed loads (no heartbeats)."""
    cards: list[dict[str, Any]] = [
        {"name": "w-a", "role": "worker", "max_concurrency": 4, "load": 3},  # 0.75
        {"name": "w-b", "role": "worker", "max_concurrency": 2, "load": 1},  # 0.5
        {"name": "w-c", "role": "worker", "max_concurrency": 10, "load": 2},  # 0.2
        {"name": "w-d", "role": "worker", "max_concurrency": 10, "load": 0, "status": "draining"},
    ]
    await register_raw(r, settings.keys, cards)
    return cards


async def test_select_least_loaded(trio: list[dict[str, Any]], settings: Settings) -> None:
    async with Bus(settings) as bus:
        recs = await bus.discover(role="worker")
        assert [(x.name, x.load) for x in recs] == [("w-a", 3), ("w-b", 1), ("w-c", 2), ("w-d", 0)]
        picks = {(await bus.select(role="worker")).name for _ in range(20)}
        assert picks == {"w-c"}  # w-d has no load but is draining: never selected by default
        assert (await bus.select(role="worker", max_load=1)).name == "w-b"
        chosen = await bus.select(role="worker", status="draining")
        assert chosen.name == "w-d"


async def test_select_least_loaded_spreads_over_ties(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    cards = [{"name": f"idle-{i}", "role": "idle"} for i in range(3)]
    await register_raw(r, settings.keys, cards)
    async with Bus(settings) as bus:
        picks = {(await bus.select(role="idle")).name for _ in range(60)}
    assert len(picks) > 1


async def test_select_round_robin_takes_turns_per_caller(
    trio: list[dict[str, Any]], settings: Settings
) -> None:
    async with Bus(settings) as first, Bus(settings) as second:
        picks = [(await first.select(role="worker", strategy="round_robin")).name for _ in range(6)]
        assert picks == ["w-a", "w-b", "w-c", "w-a", "w-b", "w-c"]
        # another caller has its own turn
        assert (await second.select(role="worker", strategy="round_robin")).name == "w-a"
        # a different query has its own turn
        assert (await first.select(role="worker", max_load=2, strategy="round_robin")).name == "w-b"
    # the agent façade selects too
    async with Agent("picker", "client", settings=settings) as agent:
        assert (await agent.select(role="worker", strategy="round_robin")).name == "w-a"


async def test_select_random_spreads(trio: list[dict[str, Any]], settings: Settings) -> None:
    async with Bus(settings) as bus:
        picks = [(await bus.select(role="worker", strategy="random")).name for _ in range(60)]
    assert set(picks) <= {"w-a", "w-b", "w-c"}
    assert len(set(picks)) > 1


async def test_select_raises_no_responders(
    coordinator: Coordinator, settings: Settings, redis_server: object
) -> None:
    async with Bus(settings) as bus:
        with pytest.raises(NoResponders) as caught:
            await bus.select(role="nobody", capabilities=["x"])
        assert settings.namespace in str(caught.value)
        assert "nobody" in str(caught.value)
        assert caught.value.details["query"]["capabilities"] == ["x"]
        with pytest.raises(InvalidInput):
            await bus.select(role="worker", strategy="fastest")  # type: ignore[arg-type]


async def test_discovery_works_on_a_decoding_client_too(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    await register_raw(r, settings.keys, random_cards(random.Random(3), 20))
    async with Bus(settings) as bus:
        expected = await bus.discover(tags=["t1", "t2"])
        assert expected
        assert await Discovery(r, settings).discover(tags=["t1", "t2"]) == expected
        assert await Discovery(r, settings).get(expected[0].name) == expected[0]


async def test_a_name_left_in_an_index_without_a_record_is_skipped(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    await register_raw(r, settings.keys, [{"name": "real", "role": "ghosts", "tags": ["g"]}])
    await r.sadd(settings.keys.role_index("ghosts"), "phantom")  # a sweep half done
    await r.sadd(settings.keys.tag_index("g"), "phantom")
    async with Bus(settings) as bus:
        assert [x.name for x in await bus.discover(role="ghosts")] == ["real"]
        assert [x.name for x in await bus.discover(tags=["g"])] == ["real"]
        assert await bus.get("phantom") is None


async def test_discover_returns_awkward_text_exactly_as_stored(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    """discover.lua JSON-encodes the rows (cjson) and the SDK parses them (orjson): text that
    needs escaping comes back as the coordinator stored it, equal to a validated ``HGETALL``."""
    awkward = 'quote " backslash \\ slash / nl \n tab \t nul \x00 del \x7f é ✓ 🚀 \u2028'
    cards = [
        {
            "name": "odd",
            "role": "odd",
            "description": awkward,
            "region": "",
            "host": "h/ö",
            "pid": 0,
            "metadata": {'k"/': awkward, "🚀": "", "": "x"},
            "capabilities": ["a.b/c", "d@e"],
            "tags": ["t-1"],
        },
        {"name": "plain", "role": "odd"},  # every optional field absent
    ]
    await register_raw(r, settings.keys, cards)
    async with Bus(settings) as bus:
        found = await bus.discover(role="odd")
        by_tag = await bus.discover(tags=["t-1"])
    expected = [await stored_record(r, settings.keys, n) for n in ("odd", "plain")]
    assert found == expected
    assert by_tag == expected[:1]
    assert found[0].description == awkward
    assert found[0].metadata['k"/'] == awkward
    assert (found[1].region, found[1].host, found[1].pid, found[1].metadata) == (
        None,
        None,
        None,
        {},
    )


async def test_discover_validates_an_unexpected_record_and_reports_a_bad_one(
    coordinator: Coordinator, settings: Settings, r: aioredis.Redis
) -> None:
    await register_raw(
        r, settings.keys, [{"name": "good", "role": "x"}, {"name": "bad", "role": "x"}]
    )
    key = settings.keys.record("bad")
    await r.hdel(key, "status", "version")  # optional fields absent: their defaults, as validated
    async with Bus(settings) as bus:
        found = await bus.discover(role="x")
        assert found[0] == await stored_record(r, settings.keys, "bad")
        assert (found[0].status, found[0].version) == (AgentStatus.READY, "0.0.0")
        await r.hset(key, "max_concurrency", "0")  # the lean path refuses it; validation too
        with pytest.raises(ProtocolError, match="bad"):
            await bus.discover(role="x")
        await r.hset(key, "max_concurrency", "1")
        await r.hdel(key, "instance_id")  # a required field absent
        with pytest.raises(ProtocolError, match="bad"):
            await bus.discover(role="x")
        await r.hset(key, "instance_id", "i")
        assert len(await bus.discover(role="x")) == 2
        await r.hset(key, "description", b"\xff not UTF-8")
        with pytest.raises(ProtocolError):
            await bus.discover(role="x")


identifiers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._@/-]{0,20}\Z")
records = st.builds(
    AgentRecord,
    name=identifiers,
    role=identifiers,
    version=st.sampled_from([*VERSIONS, "0.0.0", "3.4.5-alpha.1+sha.abc"]),
    description=st.text(max_size=200),
    capabilities=st.lists(identifiers, max_size=5).map(tuple),
    tags=st.lists(identifiers, max_size=5).map(tuple),
    region=st.none() | st.text(max_size=20),
    host=st.none() | st.text(min_size=1, max_size=30),
    pid=st.none() | st.integers(0, 2**31),
    max_concurrency=st.integers(1, 100_000),
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=5),
    instance_id=st.text(min_size=1, max_size=64),
    status=st.sampled_from(STATUSES),
    load=st.integers(0, 1000),
    registered_at=st.datetimes(timezones=st.just(UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
    ),
    last_seen=st.datetimes(timezones=st.just(UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
    ),
    heartbeat_ms=st.integers(1, 10**6),
    ttl_ms=st.integers(1, 10**7),
)


@hsettings(max_examples=300, deadline=None)
@given(record=records)
def test_lean_decode_round_trips_any_record(record: AgentRecord) -> None:
    raw = record.to_hash()
    assert decode_record(raw) == AgentRecord.from_hash(raw) == record


async def test_role_and_capabilities_use_the_role_capability_sets_once_complete(
    coordinator: Coordinator, coordinator_settings: CoordinatorSettings, r: aioredis.Redis,
    keys: KeySpace, settings: Settings,
) -> None:  # fmt: skip
    """A registry written before the role x capability sets (protocol 2.1) is answered from
    the role and capability sets until a coordinator built them; then from them."""
    from coordinator.registry import Registry
    from tests.fake_agents import FakeAgent

    agents = [
        FakeAgent(r, keys, f"rc-{i}", role="worker" if i % 2 else "planner",
                  capabilities=["pdf", "ocr"] if i % 3 else ["pdf"], ttl_ms=60_000)
        for i in range(12)
    ]  # fmt: skip
    for agent in agents:
        reply = await agent.register()
        assert "error" not in reply, reply
    want = sorted(a.name for i, a in enumerate(agents) if i % 2 and i % 3)
    assert await r.get(keys.layout()) == "2"  # built by the coordinator's first sweep
    assert await r.smembers(keys.role_capability_index("worker", "ocr")) == set(want)
    # as 2.1 left it: no role x capability sets, no layout
    stale = [k async for k in r.scan_iter(match=keys.role_capability_index("*", "*"))]
    await r.delete(keys.layout(), *stale)
    async with Bus(settings) as bus:
        found = [a.name for a in await bus.discover(role="worker", capabilities=["pdf", "ocr"])]
        assert found == want  # from R:role:worker, R:cap:pdf, R:cap:ocr
        client = aioredis.Redis.from_url(settings.url)
        registry = Registry(client, coordinator_settings)
        try:
            assert await registry.reindex(count=5) >= 1  # slices of R:agents (one if small)
            assert await registry.reindex() == 0  # the layout says it is done
        finally:
            await registry.aclose()
            await client.aclose()
        assert await r.get(keys.layout()) == "2"
        # proof the sets are what is read now: the role's own set emptied, same answer
        await r.delete(keys.role_index("worker"))
        found = [a.name for a in await bus.discover(role="worker", capabilities=["pdf", "ocr"])]
        assert found == want
