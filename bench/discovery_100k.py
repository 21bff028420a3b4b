"""Discovery among a large registry with nothing else running: where a query's time goes.

``python -m bench.discovery_100k [--agents N]``: one ``redis-server``; ``N`` records (default
100,000, the cards of ``bench.lease_hosts.card_100k``: 10 roles, 5 skills, 2 languages, 10
zones) written with their indexes and deadlines as the coordinator writes them; then, for the
query of role + skill + language + zone (0.1 % of the fleet) and of role + skill + language
(1 %): ``Bus.discover`` p50 over 60 queries, Redis's time per call in the discovery script, and
Redis's time for the bare ``SINTER`` of the role and capability sets (what discovery
intersected before protocol 2.2) and of the role x capability sets (what it intersects now;
``INFO commandstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis

from agent_sdk import Bus, Settings
from agent_sdk.embedded import RedisServer
from bench.lease_hosts import card_100k, query_100k
from coordinator.validation import PreparedAnnounce, prepare_announce
from schemas.keys import KeySpace

__all__ = ["main"]

_QUERIES = 60


def _fill(r: redis.Redis, keys: KeySpace, agents: int) -> None:
    now = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for i in range(agents):
        card = card_100k(i, "h")
        payload = {"card": card.model_dump(mode="json", exclude_none=True),
                   "instance_id": f"i{i}", "heartbeat_ms": 1000, "ttl_ms": 3000}  # fmt: skip
        prepared = prepare_announce(payload, now)
        assert isinstance(prepared, PreparedAnnounce)
        fields: Any = prepared.fields
        pipe.hset(keys.record(card.name), mapping=fields)
        pipe.sadd(keys.agents(), card.name)
        pipe.sadd(keys.role_index(card.role), card.name)
        for cap in card.capabilities:
            pipe.sadd(keys.capability_index(cap), card.name)
            pipe.sadd(keys.role_capability_index(card.role, cap), card.name)
        for tag in card.tags:
            pipe.sadd(keys.tag_index(tag), card.name)
        pipe.zadd(keys.deadlines(), {card.name: now + 3_600_000})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.set(keys.layout(), "2")  # every record in its role x capability sets
    pipe.execute()


def _usec_per_call(r: redis.Redis, command: str) -> float:
    stats = r.info("commandstats")[f"cmdstat_{command}"]
    return float(stats["usec_per_call"])


async def _run(url: str, agents: int) -> None:
    keys = KeySpace("disc")
    r = redis.Redis.from_url(url)
    _fill(r, keys, agents)
    async with Bus(Settings(redis_url=url, namespace=keys.ns)) as bus:
        for label, zone in (("role + 3 capabilities (0.1 %)", True), ("role + 2 (1 %)", False)):
            lat, found = [], 0
            r.config_resetstat()
            for j in range(_QUERIES):
                role, caps = query_100k(j, zone)
                t = time.perf_counter()
                found = len(await bus.discover(role=role, capabilities=caps))
                lat.append((time.perf_counter() - t) * 1e3)
            script = _usec_per_call(r, "evalsha") / 1000
            r.config_resetstat()
            for j in range(_QUERIES):
                role, caps = query_100k(j, zone)
                r.sinter([keys.role_index(role), *(keys.capability_index(c) for c in caps)])
            sinter = _usec_per_call(r, "sinter") / 1000
            r.config_resetstat()
            for j in range(_QUERIES):
                role, caps = query_100k(j, zone)
                r.sinter([keys.role_capability_index(role, c) for c in caps])
            pairs = _usec_per_call(r, "sinter") / 1000
            p50 = statistics.median(lat)
            print(f"{label}, {found} matches: discover p50 {p50:.2f} ms; Redis {script:.2f} "
                  f"ms in the script; SINTER alone {sinter:.2f} ms of the role and "
                  f"capability sets, {pairs:.2f} ms of the role x capability sets (the "
                  "script's)")  # fmt: skip
    r.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=100_000)
    args = p.parse_args()
    with RedisServer() as server:
        asyncio.run(_run(server.url, args.agents))


if __name__ == "__main__":
    main()
