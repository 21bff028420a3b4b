"""The sender's fast encoder writes exactly the wire contract of ``schemas.envelope``.

The hot path (``agent_sdk.messaging.codec.Outgoing``) builds no pydantic model, so it is a second
encoder of the same format; this property test keeps the two from drifting apart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sdk.messaging.codec import Outgoing
from schemas.envelope import (
    Kind,
    decode_fields,
    decode_json,
    encode_fields,
    encode_json,
    epoch_ms,
    format_ms,
    format_time,
)
from schemas.errors import ErrorInfo

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))


@st.composite
def outgoing(draw: st.DrawFn) -> Outgoing:
    sent_at = draw(_times)
    return Outgoing(
        type=draw(_text),
        sender=draw(_text),
        payload=orjson.dumps(draw(_json)),
        kind=draw(st.sampled_from(list(Kind))),
        target=draw(st.none() | _text),
        reply_to=draw(st.none() | _text),
        correlation_id=draw(st.none() | _text),
        deadline=draw(st.none() | st.just(sent_at + timedelta(seconds=2))),
        headers=draw(st.none() | st.dictionaries(_text, _text, max_size=2)),
        error=draw(
            st.none()
            | st.builds(ErrorInfo, code=_text, description=_text, details=st.just({"k": 1}))
        ),
        sent_at=sent_at,
    )


def _as_stream(fields: dict[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    def b(v: bytes | str) -> bytes:
        return v if isinstance(v, bytes) else v.encode()

    return {b(k): b(v) for k, v in fields.items()}


@settings(max_examples=200, deadline=None)
@given(outgoing())
def test_fast_encoder_matches_the_contract(out: Outgoing) -> None:
    from_json = decode_json(out.json())
    from_fields = decode_fields(_as_stream(out.stream_fields()))
    assert from_json == from_fields
    # the schema's own encoders give back the same envelope and the same JSON object
    assert orjson.loads(encode_json(from_json)) == orjson.loads(out.json())
    assert decode_fields(_as_stream(encode_fields(from_json))) == from_fields
    assert from_json.payload == orjson.loads(out.payload)
    # and every field carries what the sender gave
    assert (from_json.id, from_json.kind, from_json.type, from_json.sender) == (
        out.id,
        out.kind,
        out.type,
        out.sender,
    )
    assert (from_json.target, from_json.reply_to, from_json.correlation_id) == (
        out.target,
        out.reply_to,
        out.correlation_id,
    )
    assert (from_json.sent_at, from_json.deadline) == (out.sent_at, out.deadline)
    assert from_json.headers == (out.headers or {})
    assert from_json.error == out.error


@given(st.integers(min_value=0, max_value=2**42))
@settings(max_examples=300)
def test_format_ms_is_format_time(ms: int) -> None:
    """The per-second-cached formatter of the send path writes what ``format_time`` writes."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert format_ms(ms) == format_time(dt)
    assert epoch_ms(dt) == ms


def test_default_id_and_sent_at_come_from_one_clock_read() -> None:
    out = Outgoing(type="t", sender="s", payload=b"null")
    assert int(out.id[:12], 16) == out.sent_ms == epoch_ms(out.sent_at)
    later = Outgoing(type="t", sender="s", payload=b"null", timeout=2.0)
    assert later.deadline == later.sent_at + timedelta(seconds=2)


@given(st.floats(min_value=0.001, max_value=86_400.0, allow_nan=False))
@settings(max_examples=300)
def test_a_timeout_deadline_is_sent_at_plus_the_timeout(timeout: float) -> None:
    """``timeout=`` keeps the deadline in µs (no datetime made): the wire carries what
    ``format_time(sent_at + timedelta(seconds=timeout))`` writes."""
    out = Outgoing(type="t", sender="s", payload=b"null", timeout=timeout)
    expected = out.sent_at + timedelta(seconds=timeout)
    assert out.deadline == expected
    assert orjson.loads(out.json())["deadline"] == format_time(expected)
    args = out.stream_args()
    assert dict(zip(args[::2], args[1::2], strict=True))["deadline"] == format_time(expected)
