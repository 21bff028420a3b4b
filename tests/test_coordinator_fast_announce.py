"""The coordinator's fast path for announcements: what an SDK writes is read without building
its envelope, with the outcome the full decoding gives; anything unusual goes the full way."""

from __future__ import annotations

import orjson
import pytest

from agent_sdk.messaging.codec import Outgoing
from coordinator.validation import AnnounceEntry, fast_announce
from schemas.agent import AgentCard, ControlType
from schemas.envelope import Kind, decode_fields

REPLY_TO = "agentbus:agent:{web}:replies:0123456789abcdef"


def _fields(timeout: float = 5.0) -> dict[bytes, bytes]:
    """An announcement as ``Membership`` writes it."""
    card = AgentCard(name="user-42", role="assistant", capabilities=("chat",), host="box", pid=7)
    payload = {"card": card.model_dump(mode="json", exclude_none=True), "instance_id": "i-1",
               "status": "ready", "load": 0, "heartbeat_ms": 1000, "ttl_ms": 3000,
               "lease": "web:0123456789abcdef"}  # fmt: skip
    env = Outgoing(
        ControlType.ANNOUNCE.value, card.name, orjson.dumps(payload), kind=Kind.CONTROL,
        reply_to=REPLY_TO, timeout=timeout,
    )  # fmt: skip
    args = env.stream_args()
    return {
        (k if isinstance(k, bytes) else k.encode()): (v if isinstance(v, bytes) else v.encode())
        for k, v in zip(args[::2], args[1::2], strict=True)
    }


@pytest.mark.parametrize("timeout", [5.0, -1.0])  # a deadline ahead, one passed
def test_an_sdks_announcement_takes_the_fast_path_with_the_envelopes_outcome(
    timeout: float,
) -> None:
    fields = _fields(timeout)
    fast = fast_announce("1733600000000-0", fields)
    assert fast is not None
    assert fast == AnnounceEntry.of(decode_fields(fields, "1733600000000-0"))
    assert fast.expired is (timeout < 0)
    assert fast.reply_to == REPLY_TO
    assert fast.sender == "user-42"


@pytest.mark.parametrize(
    "change",
    [
        {b"type": b"heartbeat"},
        {b"v": b"2"},
        {b"kind": b"send"},
        {b"sender": b"bad name"},
        {b"headers": b'{"traceparent":"00-1-2-01"}'},
        {b"target": b"x"},
        {b"sent_at": b"yesterday"},
        {b"sent_at": b"2026-12-07T10:00:00+01:00"},
        {b"deadline": b"2026-12-07 10:00:00"},
        {b"id": b""},
        {b"id": b"x" * 129},
        {b"reply_to": b"r" * 513},
        {b"reply_to": b"\xff"},
        {b"payload": b"{not json"},
    ],
)
def test_anything_unusual_goes_the_full_way(change: dict[bytes, bytes]) -> None:
    assert fast_announce("1-0", {**_fields(), **change}) is None


def test_an_entry_without_id_or_deadline_is_read_as_the_envelope_reads_it() -> None:
    fields = {k: v for k, v in _fields().items() if k not in (b"id", b"deadline")}
    fast = fast_announce("1733600000000-5", fields)
    assert fast is not None
    assert fast == AnnounceEntry.of(decode_fields(fields, "1733600000000-5"))
    assert fast.id == "1733600000000-5"
    assert not fast.expired
