"""Pure pieces of the coordinator: the fast heartbeat parser, time formatting, settings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from coordinator import CoordinatorSettings
from coordinator.scripts import script_source
from coordinator.validation import PreparedAnnounce, fast_heartbeat, iso_ms, prepare_announce

HB: dict[bytes, bytes] = {
    b"v": b"1",
    b"kind": b"control",
    b"type": b"heartbeat",
    b"sender": b"agent-1",
    b"payload": b'{"instance_id":"abc123","load":2,"status":"busy"}',
}


def test_fast_heartbeat_parses_the_plain_entry() -> None:
    assert fast_heartbeat("1-0", HB) == ("1-0", "agent-1", "abc123", "2", "busy", "0")
    minimal = {b"type": b"heartbeat", b"sender": b"a", b"payload": b'{"instance_id":"i"}'}
    assert fast_heartbeat("1-0", minimal) == ("1-0", "a", "i", "0", "ready", "0")


@pytest.mark.parametrize(
    "change",
    [
        {b"type": b"announce"},
        {b"v": b"2"},
        {b"sender": b"bad name"},
        {b"sender": b"x:y"},
        {b"extra": b"1"},
        {b"payload": b"{not json"},
        {b"payload": b"[]"},
        {b"payload": b'{"instance_id":"i","load":-1}'},
        {b"payload": b'{"instance_id":"i","load":true}'},
        {b"payload": b'{"instance_id":"i","status":"sleepy"}'},
        {b"payload": b'{"instance_id":"i x"}'},
        {b"payload": b'{"instance_id":"i","more":1}'},
        {b"payload": b'{"load":1}'},
    ],
)
def test_fast_heartbeat_leaves_anything_unusual_to_the_slow_path(
    change: dict[bytes, bytes],
) -> None:
    assert fast_heartbeat("1-0", {**HB, **change}) is None


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_iso_ms_round_trips(ms: int) -> None:
    from datetime import datetime

    text = iso_ms(ms)
    assert text.endswith("Z")
    assert len(text) == 24
    assert round(datetime.fromisoformat(text).timestamp() * 1000) == ms


async def test_lua_iso_matches_python(r: aioredis.Redis) -> None:
    samples = [0, 951_782_400_000, 951_868_799_999, 1_709_164_800_123, 1_798_761_599_999]
    samples += [1_763_750_000_000 + k * 37_123_457 for k in range(50)]
    script = script_source("common") + "local out = {} for i, v in ipairs(ARGV) do "
    script += "out[i] = iso(tonumber(v)) end return out"
    got: Any = await r.eval(script, 0, *samples)
    assert got == [iso_ms(ms) for ms in samples]


def test_prepare_announce_builds_flat_string_hash() -> None:
    payload = {
        "card": {"name": "a", "role": "w", "capabilities": ["x"], "metadata": {"k": "v"}},
        "instance_id": "i1",
        "heartbeat_ms": 100,
        "ttl_ms": 500,
    }
    prepared = prepare_announce(payload, 1_763_750_000_123)
    assert isinstance(prepared, PreparedAnnounce), prepared
    fields = prepared.fields
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["registered_at"] == fields["last_seen"] == "2025-11-21T18:33:20.123Z"
    assert orjson.loads(fields["capabilities"]) == ["x"]
    assert orjson.loads(prepared.record_json)["last_seen"] == fields["last_seen"]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_SWEEP_INTERVAL", "0.05")
    monkeypatch.setenv("AGENTBUS_COORDINATOR_ID", "c-7")
    monkeypatch.setenv("AGENTBUS_EVENTS_MAXLEN", "1234")
    s = CoordinatorSettings()
    assert (s.sweep_interval, s.coordinator_id, s.events_maxlen) == (0.05, "c-7", 1234)
    assert CoordinatorSettings(coordinator_id="x").coordinator_id == "x"
    with pytest.raises(ValueError, match="coordinator_id"):
        CoordinatorSettings(coordinator_id="bad id")


def test_heartbeats_encoded_by_the_schemas_take_the_fast_path() -> None:
    """What an SDK writes (``encode_fields`` of a heartbeat envelope) must not fall to pydantic."""
    from schemas.agent import Heartbeat
    from schemas.envelope import Envelope, Kind, encode_fields

    env = Envelope(
        kind=Kind.CONTROL,
        type="heartbeat",
        sender="agent-1",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        payload=Heartbeat(instance_id="abc", load=1).model_dump(mode="json"),
    )
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in encode_fields(env).items()
    }
    assert fast_heartbeat("5-0", fields) == ("5-0", "agent-1", "abc", "1", "ready", "0")


@pytest.mark.parametrize(
    "card",
    [
        {"name": "a", "role": "w"},
        {
            "name": "b",
            "role": "w",
            "version": "1.2.3-rc.1",
            "description": 'quotes " and \\ and \u00e9',
            "capabilities": ["x", "y", "x"],
            "tags": ["t"],
            "region": "eu",
            "host": "box",
            "pid": 0,
            "max_concurrency": 8,
            "metadata": {"registered_at": "decoy", "k": "v"},
        },
    ],
)
def test_prepare_announce_matches_the_agent_record(card: dict[str, Any]) -> None:
    """The record built without a second validation is what ``AgentRecord`` would give."""
    from datetime import UTC, datetime

    from schemas.agent import AgentRecord, Announce

    payload = {"card": card, "instance_id": "i1", "load": 2, "heartbeat_ms": 100, "ttl_ms": 500}
    ms = 1_763_750_000_123
    prepared = prepare_announce(payload, ms)
    assert isinstance(prepared, PreparedAnnounce), prepared
    ann = Announce.model_validate(payload)
    at = datetime.fromtimestamp(ms / 1000, UTC)
    record = AgentRecord(
        **ann.card.model_dump(),
        instance_id=ann.instance_id,
        status=ann.status,
        load=ann.load,
        registered_at=at,
        last_seen=at,
        heartbeat_ms=ann.heartbeat_ms,
        ttl_ms=ann.ttl_ms,
    )
    fields = record.to_hash()
    del fields["epoch"]  # the control script adds the epoch it assigns
    fields["registered_at"] = fields["last_seen"] = iso_ms(ms)
    assert prepared.fields == fields
    assert list(prepared.fields) == list(fields)
    plain = record.model_dump(mode="json", exclude_none=True)
    del plain["epoch"]
    plain["registered_at"] = plain["last_seen"] = iso_ms(ms)
    assert prepared.record_json == orjson.dumps(plain)
    value = prepared.record_json[prepared.registered_at_offset :][:24]
    assert value == iso_ms(ms).encode()
    assert (prepared.name, prepared.instance_id, prepared.ttl_ms) == (card["name"], "i1", 500)


@pytest.mark.parametrize(
    "parts",
    [
        {"type": "announce_result", "target": "a", "correlation_id": "c", "payload": {"x": 1}},
        {"type": "reannounce", "kind": "control", "target": "a", "payload": {"reason": "r"}},
        {"type": "announce_result", "error": {"code": "name_taken", "description": "d"}},
        {"type": "leave_result", "payload": {"removed": False}},
    ],
)
def test_coordinator_replies_are_encoded_as_the_schemas_encode(parts: dict[str, Any]) -> None:
    from coordinator.outbox import reply_bytes, reply_head
    from schemas.envelope import Envelope, Kind, encode_json
    from schemas.errors import ErrorInfo

    kind = Kind(parts.pop("kind", "reply"))
    error = ErrorInfo.model_validate(parts.pop("error")) if "error" in parts else None
    data = reply_bytes(kind=kind, error=error, **parts)
    env = Envelope.model_validate(orjson.loads(data))
    assert encode_json(env) == data
    assert env.sender == "coordinator"
    if kind is Kind.REPLY and error is None:
        head = reply_head(
            type=parts["type"],
            target=parts.get("target"),
            correlation_id=parts.get("correlation_id"),
        )
        full = head + orjson.dumps(parts["payload"]) + b"}"
        env = Envelope.model_validate(orjson.loads(full))
        assert encode_json(env) == full


@given(st.lists(st.sampled_from(["announce", "heartbeat", "lease", "leave", None]), max_size=120))
def test_answer_slices_cut_after_every_chunk_of_announcements(kinds: list[str | None]) -> None:
    from coordinator.control import ANSWER_CHUNK, answer_slices

    entries: list[Any] = [
        (f"{i}-0".encode(), None if k is None else {b"type": k.encode()})
        for i, k in enumerate(kinds)
    ]
    slices = answer_slices(entries)
    assert [e for sl in slices for e in sl] == entries  # every entry, in stream order
    assert all(slices)
    counts = [sum(1 for _, f in sl if f is not None and f[b"type"] == b"announce") for sl in slices]
    assert all(c <= ANSWER_CHUNK for c in counts)
    assert all(c == ANSWER_CHUNK for c in counts[:-1])  # cut only when a chunk is full
