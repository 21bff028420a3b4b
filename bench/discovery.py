"""Discovery by role + 2 capabilities: ``Bus.discover`` beside raw redis-py doing the same reads.

The raw baseline runs the same server-side work in one round trip (SINTER of the three index sets,
then HGETALL of each match, in a Lua script) and turns each flat reply into a dict of strings; the
agentbus figure adds what the SDK does on top (argument checks, its script, record validation).
"""

from __future__ import annotations

from typing import Any

from bench.common import Sizes, client, now_ns
from bench.protocol import query_for
from bench.stats import Latency
from schemas.keys import KeySpace

__all__ = ["agentbus_discover", "raw_discover"]

_LUA = """
local names = redis.call('SINTER', unpack(KEYS))
local out = {}
for i, name in ipairs(names) do out[i] = redis.call('HGETALL', ARGV[1] .. name) end
return out
"""


async def raw_discover(url: str, keys: KeySpace, sizes: Sizes) -> tuple[Latency, int]:
    r = client(url)
    script = r.register_script(_LUA)
    samples = []
    matches = 0
    try:
        for j in range(sizes.warmup + sizes.samples):
            role, (cap1, cap2) = query_for(j)
            ks = [keys.role_index(role), keys.capability_index(cap1), keys.capability_index(cap2)]
            t0 = now_ns()
            rows: Any = await script(keys=ks, args=[keys.record_prefix])
            records = [
                {row[i].decode(): row[i + 1].decode() for i in range(0, len(row), 2)}
                for row in rows
            ]
            if j >= sizes.warmup:
                samples.append(now_ns() - t0)
                matches = len(records)
        return Latency.from_ns(samples), matches
    finally:
        await r.aclose()


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
