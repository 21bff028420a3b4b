"""The test side of the host fault scenarios (scenario 12).

* ``HostProc``: ``agentbus run tests.faults.host_target:make_host``, a real ``Host`` process.
* ``host_connections``: the Redis connections a process holds (by its sockets, so whatever its
  read path looks like: blocking reads, a pub/sub doorbell, pools of any size).
* ``unfinished``: message ids still waiting in Redis for a consumer (pending in a consumer group,
  or not delivered to the group yet): what a stopped host left for redelivery.
* ``registry_leftovers``: what the registry still holds of some names (record, any index).
"""

from __future__ import annotations

import sys
from typing import Any

import psutil
import redis

from tests.faults.harness import Child, Cluster, Ledger, fleet_env

ARGV = [sys.executable, "-m", "coordinator.cli", "run", "tests.faults.host_target:make_host"]


class HostProc(Child):
    """A host of ``agents`` agents named ``<name>-<i>``; the first ``workers`` have the role
    ``worker``, the others ``hosted`` (``tests.faults.host_target``)."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        agents: int,
        *,
        workers: int = 0,
        concurrency: int = 2,
        hold: float = 0.0,
    ) -> None:
        self.host_name = name
        self.names = [f"{name}-{i}" for i in range(agents)]
        self.workers = self.names[:workers]
        self.log = cluster.tmp / f"host-{name}-{len(cluster.children)}.ledger"
        env = fleet_env(
            cluster.settings,
            HOSTED_NAME=name,
            HOSTED_AGENTS=str(agents),
            HOSTED_WORKERS=str(workers),
            HOSTED_CONCURRENCY=str(concurrency),
            HOSTED_HOLD=str(hold),
            HOSTED_LOG=str(self.log),
        )
        super().__init__(ARGV, env, cluster.tmp, f"host-{name}")
        cluster.children.append(self)

    @property
    def running(self) -> bool:
        """``agentbus run`` said the host runs: ``Host.start`` returned (every agent registered
        and its data plane started)."""
        return f"{self.host_name} is running" in self.stderr_all()

    def stderr_all(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def ledger(self) -> Ledger:
        return Ledger.read([self.log])

    def instances(self) -> dict[str, str]:
        """agent name -> the instance id this process gave it."""
        return {name: inst for name, inst in self.ledger().of("agent")}

    def holding(self) -> set[str]:
        """Message ids its agents started and did not finish."""
        ledger = self.ledger()
        return {ln[1] for ln in ledger.of("start")} - {ln[1] for ln in ledger.of("done")}


def host_connections(r: redis.Redis, pid: int) -> list[dict[str, Any]]:
    """``CLIENT LIST`` entries of the connections process ``pid`` holds to ``r``'s server."""
    port = r.connection_pool.connection_kwargs["port"]
    mine = {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port
    }
    clients: list[dict[str, Any]] = r.client_list()
    return [c for c in clients if int(c["addr"].rpartition(":")[2]) in mine]


def kill_connections(r: redis.Redis, clients: list[dict[str, Any]]) -> int:
    """``CLIENT KILL ID`` each of ``clients``; how many were still there to kill."""
    killed = 0
    for c in clients:
        killed += int(r.execute_command("CLIENT", "KILL", "ID", c["id"]))  # type: ignore[no-untyped-call]
    return killed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def unfinished(r: redis.Redis, namespace: str) -> set[str]:
    """Message ids (the envelope ``id`` field) of every stream entry of ``namespace`` that some
    consumer group has not acknowledged: pending in the group, or after its last delivered id."""
    out: set[str] = set()
    for raw_key in r.scan_iter(match=f"{namespace}:*", _type="stream", count=1000):
        key = _text(raw_key)
        groups: list[dict[str, Any]] = r.xinfo_groups(key)
        if not groups:
            continue
        entries: Any = r.xrange(key)
        ids = {_text(eid): _text(fields.get("id", "")) for eid, fields in entries}
        for g in groups:
            last = _entry_key(_text(g["last-delivered-id"]))
            out |= {m for eid, m in ids.items() if _entry_key(eid) > last}
            if g["pending"]:
                rows: Any = r.xpending_range(key, _text(g["name"]), "-", "+", 10**6)
                pending = {_text(row["message_id"]) for row in rows}
                out |= {m for eid, m in ids.items() if eid in pending}
    out.discard("")
    return out


def registry_leftovers(cluster: Cluster, names: set[str]) -> dict[str, set[str]]:
    """key -> the ``names`` it still holds: their records, and every registry set or sorted set
    (agents, role, capability and tag indexes, deadlines) that still lists one of them."""
    r, keys = cluster.sync, cluster.keys
    out: dict[str, set[str]] = {}
    for name in names:
        if r.exists(keys.record(name)):
            out[keys.record(name)] = {name}
    quota = keys.identity_names("")  # acl mode's quota count: pruned when full (SECURITY.md)
    for raw_key in r.scan_iter(match=f"{keys.registry_prefix}*", count=1000):
        key = _text(raw_key)
        if key.startswith(quota.removesuffix(":names")):
            continue
        kind = _text(r.type(key))
        if kind == "set":
            members = {_text(m) for m in r.smembers(key)}
        elif kind == "zset":
            members = {_text(m) for m in r.zrange(key, 0, -1)}
        else:
            continue
        if members & names:
            out[key] = members & names
    return out
