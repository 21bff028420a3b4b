"""Handler registration reads a handler's shape (payload model, whether it takes the message)
once per code: a host that makes an agent per request registers the same closures thousands of
times. The cache must never mix up two handlers of one code whose shapes differ."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from agent_sdk.messaging.handlers import _SHAPES, HandlerRegistry, _inspect


class Order(BaseModel):
    item: str


def _make(default: Any) -> Any:
    async def handler(payload: Order, msg: Any = default) -> None:
        return None

    return handler


def test_closures_of_one_code_share_a_shape_and_keep_their_own_function() -> None:
    first, second = _make(None), _make(None)
    a, b = _inspect(first), _inspect(second)
    assert (a.model, a.wants_msg) == (b.model, b.wants_msg) == (Order, True)
    assert a.func is first
    assert b.func is second
    assert any(key[0] is first.__code__ for key in _SHAPES)


def test_a_changed_annotation_is_read_again() -> None:
    handler = _make(None)
    assert _inspect(handler).model is Order
    handler.__annotations__ = {"payload": dict, "msg": Any}
    assert _inspect(handler).model is None


def test_an_unhashable_default_is_inspected_without_the_cache() -> None:
    handler = _make([])  # a list default: the key cannot be hashed
    assert _inspect(handler).model is Order


def test_a_sync_function_is_still_refused() -> None:
    def plain(payload: Any) -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        HandlerRegistry().on("x")(plain)  # type: ignore[arg-type]
