"""A host larger than ``LEASE_MAX_BEATS`` writes several ``lease`` entries per interval, each
of at most that many beats, and every agent stays registered."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agent_sdk import Host, heartbeats
from agent_sdk.settings import Settings
from coordinator import Coordinator
from schemas.keys import KeySpace
from tests.support import wait_for


async def test_a_large_host_splits_its_lease(
    coordinator: Coordinator,
    settings: Settings,
    r: aioredis.Redis,
    keys: KeySpace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heartbeats, "LEASE_MAX_BEATS", 10)
    host = Host(settings, name="big")
    names = {f"a{i}" for i in range(25)}
    for name in sorted(names):
        host.agent(name, "worker")
    async with host:
        beats = host.heartbeats
        assert beats is not None
        before = coordinator.stats.heartbeats
        await wait_for(
            lambda: coordinator.stats.heartbeats >= before + 2 * len(names),
            message="two intervals of heartbeats applied",
        )
        assert set(await r.smembers(keys.agents())) == names

        async def split_interval() -> bool:
            entries: Any = await r.xrevrange(keys.control(), count=200)
            # one item per agent: a full beat, or a renewal ([name, instance]) of an unchanged one
            leases = [
                [*p["beats"], *p.get("renew", [])]
                for p in (
                    orjson.loads(f["payload"]) for _, f in entries if f.get("type") == "lease"
                )
            ]
            assert max((len(b) for b in leases), default=0) <= 10, [len(b) for b in leases]
            # one interval's lease, split: three entries in a row (10 + 10 + 5 beats) covering
            # every agent. Leases of members woken early (new ones, or ones re-announced after a
            # stall of the loaded machine longer than the TTL) may come between intervals: the
            # next quiet interval shows the split.
            windows = [leases[i : i + 3] for i in range(len(leases) - 2)]
            return any(
                sorted(len(b) for b in w) == [5, 10, 10]
                and {beat[0] for b in w for beat in b} == names
                for w in windows
            )

        await wait_for(split_interval, timeout=20, message="an interval's lease in 10 + 10 + 5")
