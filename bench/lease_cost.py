"""Redis time per hosted agent per interval: a lease renewal against a full beat, same run.

``python -m bench.lease_cost [--agents N] [--rounds R]``: one ``redis-server``; ``N`` agents
(default 10,000) registered under one host lease through the coordinator's own ``Registry``;
then ``R`` intervals of the host's lease entries (1,000 agents each, as ``LEASE_MAX_BEATS``)
applied by the control script, in three ways:

* renewal: ``renew`` pairs with the host's count of agents (protocol 2.2: one ``ZADD`` of the
  lease's deadline per entry, the names not checked since the lease holds as many);
* renewal, names checked: the same pairs without the count (a 2.1 host), so every name is
  looked up in the lease's set and ``R:agents`` (what 2.1 did, less its per-name ``ZADD``);
* full beat: ``beats`` (what every agent cost before 2.1 and what a changed agent costs now).

The figure is Redis's own time in the script (``INFO commandstats``, ``cmdstat_evalsha``) per
agent per interval: nothing else runs on that server meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from agent_sdk.connection import make_client
from agent_sdk.embedded import RedisServer
from agent_sdk.heartbeats import LEASE_MAX_BEATS
from bench.lease_hosts import card_100k
from coordinator import CoordinatorSettings
from coordinator.registry import ControlBatch, Registry
from coordinator.validation import PreparedAnnounce, prepare_announce

__all__ = ["main"]

_LEASE = "bench-host:1"


async def _register(registry: Registry, agents: int, now: int) -> None:
    for first in range(0, agents, 500):
        batch = ControlBatch()
        for i in range(first, min(agents, first + 500)):
            card = card_100k(i, "bench-host").model_dump(mode="json", exclude_none=True)
            payload = {"card": card, "instance_id": f"i{i}", "heartbeat_ms": 1000,
                       "ttl_ms": 3000, "lease": _LEASE}  # fmt: skip
            prepared = prepare_announce(payload, now)
            assert isinstance(prepared, PreparedAnnounce)
            batch.announce(f"{now}-{i}", prepared)
        await registry.apply(batch)


async def _interval(registry: Registry, agents: int, at_ms: int, mode: str) -> None:
    for first in range(0, agents, LEASE_MAX_BEATS):
        names = range(first, min(agents, first + LEASE_MAX_BEATS))
        batch = ControlBatch()
        # the entries of an interval a few ms apart, as a host's are (one in ten is checked)
        eid = f"{at_ms + first // LEASE_MAX_BEATS}-0"
        if mode != "beat":
            pairs = [(f"a-{i:06d}", f"i{i}") for i in names]
            batch.renew(eid, _LEASE, 3000, pairs, agents if mode == "count" else len(pairs))
        else:
            for i in names:
                batch.heartbeat((eid, f"a-{i:06d}", f"i{i}", "0", "ready", "0"))
        result = await registry.apply(batch)
        if result.unknown or result.failed:
            raise RuntimeError(f"not applied: {result.unknown[:3]} {result.failed[:3]}")


async def _run(url: str, agents: int, rounds: int) -> dict[str, float]:
    settings = CoordinatorSettings(redis_url=url, namespace="leasecost")
    client = make_client(settings)
    registry = Registry(client, settings)
    out: dict[str, float] = {}
    try:
        now = int(time.time() * 1000)
        await _register(registry, agents, now)
        modes = (("renewal", "count"), ("renewal, names checked", "check"), ("full beat", "beat"))
        for j, (label, mode) in enumerate(modes):
            await client.config_resetstat()
            for k in range(rounds):
                at = now + 1000 * (j * rounds + k + 1)
                await _interval(registry, agents, at, mode)
            stats = (await client.info("commandstats"))["cmdstat_evalsha"]
            out[label] = float(stats["usec"]) / (rounds * agents)
    finally:
        await registry.aclose()
        await client.aclose()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with RedisServer() as server:
        out = asyncio.run(_run(server.url, args.agents, args.rounds))
    print(f"Redis time per hosted agent per interval ({args.agents:,} agents, "
          f"{args.rounds} intervals, entries of {LEASE_MAX_BEATS:,}):")  # fmt: skip
    for label, us in out.items():
        print(f"  {label}: {us:.2f} us")
    print(f"  full beat / renewal: {out['full beat'] / out['renewal']:.1f}x")


if __name__ == "__main__":
    main()
