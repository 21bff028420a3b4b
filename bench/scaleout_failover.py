"""A master SIGKILLed under a steady load, on a local cluster or Sentinel (figures as a dict).

``failover_run`` holds ``rate`` operations/s (every tenth a ``Bus.request`` answered by an
``echo`` handler, the others ``Bus.send``; ``replica_acks=1``) from two sender processes to
``receivers`` agents of one ``agent_sdk.Host`` in a third process, against a coordinator
process. After ``before`` seconds the master is SIGKILLed (on a cluster: the one holding the
registry and some of the receivers' inboxes); the load goes on until ``duration``.

Recorded: every operation's start, end and outcome; every message the receivers handled. A
send that returned is *acknowledged*: it must be handled (``lost`` counts those that never
were). *Service back*: the first operation started after the last one that failed or took more
than ``slow`` seconds ended OK; measured from the kill and from the promotion (the replica
serving, as ``tests.topologies`` sees it).
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from typing import Any

import redis

from bench.coord import CoordinatorProcess, sync_client
from bench.procs import Worker, WorkerContext, context, spawn
from bench.stats import percentile
from tests.topologies import LocalCluster, LocalSentinel, poll

__all__ = ["failover_run"]

_SETTINGS = {  # as tests/scaleout/test_failover.py, heartbeat 1 s
    "heartbeat_interval": 1.0, "ttl": 3.0, "announce_timeout": 15, "request_timeout": 10,
    "claim_interval": 0.2, "replica_acks": 1, "retry_attempts": 12, "retry_max_backoff": 0.5,
}  # fmt: skip
_MAX_IN_FLIGHT = 300  # per sender process


def _settings(url: str, ns: str) -> Any:
    from agent_sdk.settings import Settings

    return Settings(redis_url=url, namespace=ns, **_SETTINGS)


async def receiver_worker(
    ctx: WorkerContext, url: str, ns: str, names: list[str], stop: Any
) -> None:
    """A ``Host`` of ``names`` (role ``svc``): ``note`` records its ``seq``, ``echo`` answers
    its payload. On ``stop``: waits for 3 quiet seconds, then puts every seq handled."""
    from agent_sdk import Host

    handled: list[str] = []
    arrived = asyncio.Event()
    host = Host(_settings(url, ns), name="failover-receivers")
    for name in names:
        agent = host.agent(name, "svc")

        @agent.on("note")
        async def note(payload: Any) -> None:
            handled.append(payload["seq"])
            arrived.set()

        @agent.on("echo")
        async def echo(payload: Any) -> Any:
            return payload

    async with host:
        ctx.ready()
        await asyncio.to_thread(stop.wait)
        while True:  # until 3 quiet seconds: redeliveries are done
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), 3.0)
            except TimeoutError:
                break
        ctx.put(handled)


async def sender_worker(
    ctx: WorkerContext, url: str, ns: str, tag: str, names: list[str], rate: float,
    duration: float, go: Any,
) -> None:  # fmt: skip
    """``rate`` operations/s for ``duration`` s from one ``Bus`` (module docstring); puts the
    records ``(start_ns, end_ns, kind, ok, seq, error)``."""
    from agent_sdk import Bus

    records: list[tuple[int, int, str, bool, str, str]] = []
    sem = asyncio.Semaphore(_MAX_IN_FLIGHT)

    async def one(bus: Any, i: int) -> None:
        seq = f"{tag}-{i}"
        name = names[i % len(names)]
        kind = "request" if i % 10 == 9 else "send"
        t0 = time.monotonic_ns()
        ok, error = False, ""
        try:
            if kind == "request":
                ok = await bus.request(name, "echo", {"seq": seq}) == {"seq": seq}
            else:
                await bus.send(name, "note", {"seq": seq})
                ok = True
        except Exception as e:  # every failure is recorded: the caller was told
            error = f"{type(e).__name__}: {str(e)[-120:]}"
        finally:
            sem.release()
        records.append((t0, time.monotonic_ns(), kind, ok, seq, error))

    async with Bus(_settings(url, ns)) as bus:
        ctx.ready()
        await asyncio.to_thread(go.wait)
        tasks = []
        start = next_at = time.monotonic()
        i = skipped = 0
        while (now := time.monotonic()) < start + duration:
            if next_at > now:
                await asyncio.sleep(next_at - now)  # pacing the load
            if sem.locked():  # saturated (the failover): slots missed meanwhile are not
                await sem.acquire()  # made up afterwards in a burst, only counted
                late = time.monotonic() - next_at
                skipped += int(late * rate)
                next_at += int(late * rate) / rate
            else:
                await sem.acquire()
            tasks.append(asyncio.create_task(one(bus, i)))
            i += 1
            next_at += 1 / rate
        await asyncio.gather(*tasks)
    ctx.put((records, skipped))


def _names(topo: LocalCluster | LocalSentinel, ns: str, count: int) -> list[str]:
    """On a cluster, half of them with their inbox on the registry's master (the victim)."""
    if isinstance(topo, LocalSentinel):
        return [f"svc-{i}" for i in range(count)]
    victim = topo.master_of(f"{ns}:{{registry}}:agents").port
    same, other = [], []
    for i in range(20 * count):
        name = f"svc-{i}"
        port = topo.master_of(f"{ns}:agent:{{{name}}}:inbox").port
        (same if port == victim else other).append(name)
    return same[: count // 2] + other[: count - count // 2]


def _restart(topo: LocalCluster | LocalSentinel, server: Any) -> None:
    """Start the killed node again: it comes back as a replica of the promoted one."""
    server.start()
    poll(lambda: _replicas_up(server.port), 30, "the restarted node to sync")


def _replicas_up(port: int) -> bool:
    r = redis.Redis(port=port, socket_timeout=1)
    try:
        info: Any = r.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"
    finally:
        r.close()


def _expired(url: str, ns: str) -> int:
    from schemas.keys import KeySpace

    r = sync_client(url)
    try:
        events = r.xrange(KeySpace(ns).events())
        return sum(1 for _, f in events if f.get(b"type") == b"agent_expired")
    finally:
        r.close()


def _timeline(records: list[tuple[int, int, str, bool, str, str]], kill_ns: int,
              slow_ns: int) -> list[dict[str, Any]]:  # fmt: skip
    """Per half second from 2 s before the kill: operations started, and of those the ones
    that failed or were slow (more than ``slow_ns``)."""
    out: list[dict[str, Any]] = []
    t0 = kill_ns - 2_000_000_000
    for r in records:
        k = (r[0] - t0) // 500_000_000
        if k < 0:
            continue
        while len(out) <= k:
            out.append({"t_s": -2.0 + 0.5 * len(out), "started": 0, "failed": 0, "slow": 0})
        out[k]["started"] += 1
        out[k]["failed"] += not r[3]
        out[k]["slow"] += r[3] and r[1] - r[0] > slow_ns
    return out


def _service_back(records: list[tuple[int, int, str, bool, str, str]], kill_ns: int,
                  slow_ns: int, rate: float, hold_ns: int = 2_000_000_000) -> int:  # fmt: skip
    """When service was back (ns, monotonic): the first time T (0.1 s steps) after the kill
    such that the operations started in [T, T + ``hold_ns``] all succeeded within ``slow_ns``
    and were at least 90 % of ``rate``."""
    after = sorted(r for r in records if r[0] >= kill_ns)
    if not after:
        return kill_ns
    need = 0.9 * rate * hold_ns / 1e9
    t = kill_ns
    starts = [r[0] for r in after]
    last = starts[-1] - hold_ns
    lo = 0
    while t <= last:
        while lo < len(after) and starts[lo] < t:
            lo += 1
        hi = bisect.bisect_left(starts, t + hold_ns, lo)
        window = after[lo:hi]
        if len(window) >= need and all(r[3] and r[1] - r[0] <= slow_ns for r in window):
            return t
        t += 100_000_000
    return after[-1][1]


async def failover_run(
    kind: str,
    topo: LocalCluster | LocalSentinel,
    *,
    rate: float,
    loop: str,
    receivers: int = 10,
    before: float = 5.0,
    duration: float = 20.0,
    slow: float = 1.0,
    restart_after: float | None = 3.0,
) -> dict[str, Any]:
    """The run described in the module docstring, on ``topo`` (running, of ``kind``)."""
    ns = f"fo{uuid.uuid4().hex[:8]}"
    url = topo.url
    names = _names(topo, ns, receivers)
    ctx = context()
    go, stop_rx = ctx.Event(), ctx.Event()
    workers: list[Worker] = []
    own = ("heartbeat_interval", "ttl", "replica_acks")  # what the coordinator takes of them
    coord = CoordinatorProcess(url, ns, **{k: str(v) for k, v in _SETTINGS.items() if k in own})
    out: dict[str, Any] = {"topology": kind, "rate": rate, "receivers": receivers,
                           "duration_s": duration, "kill_after_s": before, "slow_s": slow,
                           "settings": _SETTINGS}  # fmt: skip
    try:
        coord.start()
        rx = spawn(receiver_worker, url, ns, names, stop_rx, loop=loop)
        workers.append(rx)
        senders = [
            spawn(sender_worker, url, ns, f"s{k}", names, rate / 2, duration, go, loop=loop)
            for k in range(2)
        ]
        workers += senders
        go.set()
        t_go = time.monotonic_ns()
        await asyncio.sleep(before)  # the load runs steadily before the kill
        kill_ns = time.monotonic_ns()
        if isinstance(topo, LocalCluster):
            victim_server = topo.master_of(f"{ns}:{{registry}}:agents")
            took = await asyncio.to_thread(topo.kill_and_wait_failover, victim_server)
        else:
            victim_server = topo.master()
            took = await asyncio.to_thread(topo.kill_and_wait_failover)
        promoted_ns = kill_ns + int(took * 1e9)
        restarted_ns = 0
        if restart_after is not None:
            await asyncio.sleep(restart_after)  # the node's supervisor restarts it
            restarted_ns = time.monotonic_ns()
            await asyncio.to_thread(_restart, topo, victim_server)
        records: list[tuple[int, int, str, bool, str, str]] = []
        skipped = 0
        for w in senders:
            got, missed = await asyncio.to_thread(w.result, duration + 120)
            records += got
            skipped += missed
        stop_rx.set()
        handled: list[str] = await asyncio.to_thread(rx.result, 120)
    finally:
        stop_rx.set()
        for w in workers:
            w.stop()
        coord.stop()
    acked = {r[4] for r in records if r[2] == "send" and r[3]}
    got = set(handled)
    failed = [r for r in records if not r[3]]
    back_ns = _service_back(records, kill_ns, int(slow * 1e9), rate)
    bad_after = [r for r in records if r[0] > back_ns and (not r[3] or r[1] - r[0] > slow * 1e9)]
    steady = [r for r in records if r[1] < kill_ns and r[0] > t_go + 1e9]
    steady_s = (kill_ns - t_go - 1e9) / 1e9
    lat = sorted((r[1] - r[0]) / 1e6 for r in steady if r[3])
    errors: dict[str, int] = {}
    for r in failed:
        errors[r[5].split(":")[0]] = errors.get(r[5].split(":")[0], 0) + 1
    out.update({
        "operations": len(records),
        "achieved_rate_before_kill": len(steady) / steady_s if steady_s > 0 else 0.0,
        "latency_before_kill_p50_ms": percentile(lat, 50),
        "latency_before_kill_p99_ms": percentile(lat, 99),
        "sends_acknowledged": len(acked),
        "requests_answered": sum(1 for r in records if r[2] == "request" and r[3]),
        "failed": len(failed), "errors": errors, "slots_skipped": skipped,
        "error_samples": sorted({r[5] for r in failed})[:5],
        "restarted_after_kill_s": (restarted_ns - kill_ns) / 1e9 if restarted_ns else None,
        "bad_after_back": len(bad_after),
        "bad_after_back_at_s": sorted({round((r[0] - kill_ns) / 1e9, 1) for r in bad_after}),
        "bad_after_back_max_ms": max(((r[1] - r[0]) / 1e6 for r in bad_after), default=0.0),
        "handled": len(handled), "duplicates": len(handled) - len(got),
        "lost": len(acked - got),
        "failover_s": took,
        "service_back_after_kill_s": (back_ns - kill_ns) / 1e9,
        "service_back_after_failover_s": max(0.0, (back_ns - promoted_ns) / 1e9),
        "agents_expired": _expired(url, ns),
        "timeline": _timeline(records, kill_ns, int(slow * 1e9)),
    })  # fmt: skip
    out["summary"] = (
        f"{out['operations']:,} operations ({out['achieved_rate_before_kill']:.0f}/s before the "
        f"kill); failover {took:.2f} s; service back {out['service_back_after_kill_s']:.2f} s "
        f"after the kill ({out['service_back_after_failover_s']:.2f} s after the failover; "
        f"then {out['bad_after_back']} operations failed or took over {slow:g} s, at most "
        f"{out['bad_after_back_max_ms']:.0f} ms); {skipped} slots skipped; "
        f"{out['sends_acknowledged']:,} sends acknowledged, {out['lost']} lost, "
        f"{out['duplicates']} handled twice; {out['failed']} operations failed (caller told: "
        f"{errors}); {out['agents_expired']} agents expired"
    )
    return out
