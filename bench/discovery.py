"""Discovery by role + 2 capabilities: ``Bus.discover`` beside raw redis-py doing the same reads.

Two raw baselines, each one round trip to a Lua script, no agentbus code:

* ``raw``: the natural way: ``SINTER`` of the three index sets, then ``HGETALL`` of each match;
  each flat reply turned into a dict of strings.
* ``raw_json``: the reads agentbus's own script does: ``HMGET`` of the record fields of each
  match, all rows returned as one JSON text (``cjson``), parsed with orjson into dicts of strings.

``discover_side_by_side`` measures agentbus and both baselines in turn (the order rotating, a
different query on every call), so that the load of a shared machine falls on all three alike;
the agentbus figure adds what the SDK does on top (argument checks, building the records).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agent_sdk.discovery import FIELD_ORDER
from bench.common import Sizes, client, now_ns
from bench.protocol import query_for
from bench.stats import Latency
from schemas.keys import KeySpace

__all__ = ["agentbus_discover", "discover_side_by_side"]

_LUA = """
local names = redis.call('SINTER', unpack(KEYS))
local out = {}
for i, name in ipairs(names) do out[i] = redis.call('HGETALL', ARGV[1] .. name) end
return out
"""

_LUA_JSON = """
local names = redis.call('SINTER', unpack(KEYS))
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local out = {}
for i, name in ipairs(names) do out[i] = redis.call('HMGET', ARGV[1] .. name, unpack(fields)) end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""

_FIELDS = FIELD_ORDER  # the fields discover.lua reads, in its order

Query = Callable[[str, tuple[str, str]], Awaitable[int]]


async def discover_side_by_side(url: str, ns: str, sizes: Sizes) -> dict[str, tuple[Latency, int]]:
    """``agentbus``, ``raw`` and ``raw_json``: latency and matches per query, measured in turn."""
    from agent_sdk.bus import Bus
    from agent_sdk.settings import Settings

    keys = KeySpace(ns)
    r = client(url)
    hgetall = r.register_script(_LUA)
    hmget_json = r.register_script(_LUA_JSON)

    def index_keys(role: str, caps: tuple[str, str]) -> list[str]:
        return [keys.role_index(role), *(keys.capability_index(c) for c in caps)]

    async def raw(role: str, caps: tuple[str, str]) -> int:
        rows: Any = await hgetall(keys=index_keys(role, caps), args=[keys.record_prefix])
        records = [
            {row[i].decode(): row[i + 1].decode() for i in range(0, len(row), 2)} for row in rows
        ]
        return len(records)

    async def raw_json(role: str, caps: tuple[str, str]) -> int:
        reply: Any = await hmget_json(
            keys=index_keys(role, caps), args=[keys.record_prefix, *_FIELDS]
        )
        records = [
            {f: v for f, v in zip(_FIELDS, row, strict=True) if v is not False}
            for row in orjson.loads(reply)
        ]
        return len(records)

    try:
        async with Bus(Settings(redis_url=url, namespace=ns)) as bus:

            async def agentbus(role: str, caps: tuple[str, str]) -> int:
                return len(await bus.discover(role=role, capabilities=caps))

            measures: list[tuple[str, Query]] = [
                ("agentbus", agentbus),
                ("raw", raw),
                ("raw_json", raw_json),
            ]
            samples: dict[str, list[int]] = {name: [] for name, _ in measures}
            matches = dict.fromkeys(samples, 0)
            query = 0
            for j in range(sizes.warmup + sizes.samples):
                turn = j % len(measures)
                for name, run in measures[turn:] + measures[:turn]:
                    query += 1  # never the query just run: its records are not warm in any cache
                    role, caps = query_for(query)
                    t0 = now_ns()
                    found = await run(role, caps)
                    if j >= sizes.warmup:
                        samples[name].append(now_ns() - t0)
                        matches[name] = found
    finally:
        await r.aclose()
    return {name: (Latency.from_ns(xs), matches[name]) for name, xs in samples.items()}


async def agentbus_discover(url: str, ns: str, sizes: Sizes) -> tuple[Latency, int]:
    from agent_sdk.bus import Bus
    from agent_sdk.settings import Settings

    samples = []
    matches = 0
    async with Bus(Settings(redis_url=url, namespace=ns)) as bus:
        for j in range(sizes.warmup + sizes.samples):
            role, caps = query_for(j)
            t0 = now_ns()
            found = await bus.discover(role=role, capabilities=caps)
            if j >= sizes.warmup:
                samples.append(now_ns() - t0)
                matches = len(found)
    return Latency.from_ns(samples), matches
