"""The wire contract: names, envelope codecs, records, keys."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import (
    AgentCard,
    AgentRecord,
    Announce,
    Envelope,
    KeySpace,
    decode_fields,
    decode_json,
    encode_fields,
    encode_json,
)
from schemas.envelope import new_id
from schemas.errors import ErrorCode, ProtocolError
from schemas.semver import parse_range


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "a{b", "a}b", "a*b", "x" * 129, "-lead", "é"])
def test_bad_names_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        AgentCard(name=bad, role="worker")
    assert "name" in str(info.value)


def test_good_card_round_trips_through_the_registry_hash() -> None:
    now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    rec = AgentRecord(
        name="summarizer-1",
        role="summarizer",
        version="1.2.0",
        capabilities=("summarize", "summarize"),
        tags=("en",),
        instance_id="abc",
        registered_at=now,
        last_seen=now,
        heartbeat_ms=1000,
        ttl_ms=3000,
    )
    h = rec.to_hash()
    assert h["capabilities"] == '["summarize"]'
    assert h["registered_at"].startswith("2026-11-21T12:00:00")
    assert all(isinstance(v, str) for v in h.values())
    assert AgentRecord.from_hash({k.encode(): v.encode() for k, v in h.items()}) == rec
    assert rec.id == "summarizer-1"


@pytest.mark.parametrize("version", ["1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "latest"])
def test_invalid_versions_are_refused(version: str) -> None:
    with pytest.raises(ValidationError, match="invalid version"):
        AgentCard(name="a", role="r", version=version)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        AgentCard.model_validate({"name": "a", "role": "r", "colour": "blue"})


def test_ttl_must_cover_two_heartbeats() -> None:
    with pytest.raises(ValidationError, match="at least twice"):
        Announce(
            card=AgentCard(name="a", role="r"), instance_id="i", heartbeat_ms=1000, ttl_ms=1500
        )


def test_envelope_round_trips_in_both_encodings() -> None:
    env = Envelope(
        type="summarize",
        sender="a",
        target="b",
        payload={"text": "hi"},
        headers={"traceparent": "x"},
    )
    assert decode_json(encode_json(env)) == env
    fields = {
        k.encode(): (v if isinstance(v, bytes) else v.encode())
        for k, v in encode_fields(env).items()
    }
    assert decode_fields(fields) == env


def test_hand_written_stream_entry_gets_defaults() -> None:
    env = decode_fields({b"type": b"summarize", b"payload": b'{"text":"hi"}'}, "1763726400000-0")
    assert env.id == "1763726400000-0"
    assert env.sender == "anonymous"
    assert env.payload == {"text": "hi"}
    assert env.sent_at == datetime(2025, 11, 21, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe", ErrorCode.UNDECODABLE),
        (b"[1,2]", ErrorCode.UNDECODABLE),
        (b'{"v": 2, "type": "x"}', ErrorCode.UNSUPPORTED_VERSION),
        (b'{"type": ""}', ErrorCode.UNDECODABLE),
    ],
)
def test_bad_envelopes_raise_protocol_error_with_code(data: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_json(data)
    assert info.value.code == code


def test_keys_share_hash_tags() -> None:
    k = KeySpace("agentbus")
    assert k.record("a") == "agentbus:{registry}:agent:a"
    assert k.inbox("a").startswith(k.agent_prefix("a"))
    assert k.replies("a", "i").startswith("agentbus:agent:{a}:")
    assert k.role_queue("r") == "agentbus:role:{r}:queue"
    with pytest.raises(ValueError, match="invalid namespace"):
        KeySpace("Bad NS")


@pytest.mark.parametrize(
    ("rng", "version", "ok"),
    [
        ("^1.2.3", "1.9.0", True),
        ("^1.2.3", "2.0.0", False),
        ("^0.2.3", "0.3.0", False),
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        ("1.x", "1.9.9", True),
        (">=1.2 <2", "2.0.0", False),
        ("<1.0.0", "1.0.0-rc.1", True),
        (">=2 || ^1.4", "1.5.0", True),
        ("*", "0.0.1", True),
    ],
)
def test_version_ranges(rng: str, version: str, ok: bool) -> None:
    assert (version in parse_range(rng)) is ok


def test_ids_of_a_forked_child_differ_from_its_parents() -> None:
    """The id generator is re-seeded in a forked child: a parent and its child (a prefork
    server's workers, say) never produce the same sequence of ids."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, then exit without running any cleanup
        os.write(write_end, ",".join(new_id(0) for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        child = f.read().decode().split(",")
    os.waitpid(pid, 0)
    parent = [new_id(0) for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)


def test_times_without_a_zone_are_read_as_utc() -> None:
    """A by-hand ``deadline`` without a zone used to crash the deadline check on every
    delivery (naive vs aware comparison); it is read as UTC, the wire's zone."""
    from datetime import UTC, datetime

    from schemas.envelope import decode_fields

    future = decode_fields({b"type": b"x", b"deadline": b"2099-01-01T00:00:00"}, "1-0")
    assert future.deadline == datetime(2099, 1, 1, tzinfo=UTC)
    assert not future.expired()
    past = decode_fields(
        {b"type": b"x", b"deadline": b"2000-01-01T00:00:00", b"sent_at": b"1999-12-31T23:59:59"},
        "1-0",
    )
    assert past.expired()
    assert past.sent_at == datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
