"""JSON responses encoded by orjson in one step.

FastAPI's default path for a handler returning a ``dict`` validates it against the inferred
response model, walks it with ``jsonable_encoder`` and encodes it with the standard ``json``
module: three passes over the body. The gateway's bodies are plain JSON values already (records
dumped in JSON mode, replies decoded from the wire), so handlers return ``json_response(...)``
and orjson encodes them once. A value orjson refuses (an int over 64 bits, say) falls back to
FastAPI's encoder, so nothing that encoded before fails now.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi.encoders import jsonable_encoder
from starlette.background import BackgroundTask
from starlette.responses import Response

__all__ = ["JSONBytes", "dumps", "json_response"]

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    """``content`` as JSON bytes (orjson; FastAPI's encoder for what orjson does not take)."""
    try:
        return orjson.dumps(content, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return orjson.dumps(jsonable_encoder(content), option=_OPTIONS)


class JSONBytes(Response):
    """``application/json``, encoded by orjson (bytes are taken as already encoded)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)


def json_response(
    content: Any,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    background: BackgroundTask | None = None,
) -> JSONBytes:
    return JSONBytes(content, status_code=status_code, headers=headers, background=background)
