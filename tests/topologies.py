"""Local Redis topologies for tests and benches: a 3-master + 3-replica Redis Cluster and a
master + replica watched by 3 sentinels, all ``redis-server`` children on free ports.

Readiness is polled on the servers themselves (``CLUSTER INFO``, ``INFO replication``,
``SENTINEL`` answers): these are child processes we started, with no event to wait on.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis

from agent_sdk.embedded import RedisServer, find_redis_server, free_port
from schemas.errors import ConnectionFailed

__all__ = ["LocalCluster", "LocalSentinel", "poll"]

_NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port P with P + 10000 free too (a cluster node's bus port). Both below Linux's
    ephemeral range (32768 and up), where the client side of any connection of the tests could
    take one between this check and the server's bind."""
    while True:
        port = random.randint(20_000, 22_700)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def poll(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _info(port: int, section: str) -> dict[str, str]:
    c = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5, decode_responses=True)
    try:
        return {k: str(v) for k, v in c.info(section).items()}
    finally:
        c.close()


class LocalCluster:
    """Six ``redis-server --cluster-enabled yes`` nodes: 3 masters, each with one replica."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.binary = find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="agentbus-cluster-"))
        self.n = masters * (1 + replicas)
        self.replicas = replicas
        self.servers: list[RedisServer] = []

    def _server(self, port: int) -> RedisServer:
        d = self.dir / str(port)
        return RedisServer(
            port=port,
            data_dir=d,
            binary=self.binary,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor", "0",
                "--enable-debug-command", "local",
                "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
            ),
        )  # fmt: skip

    def _start_node(self) -> RedisServer:
        """A node on a free port pair; another pair if its port was taken meanwhile."""
        for attempt in range(5):
            server = self._server(cluster_port())
            try:
                return server.start()
            except ConnectionFailed:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> LocalCluster:
        self.servers = [self._start_node() for _ in range(self.n)]
        subprocess.run(
            [
                str(Path(self.binary).with_name("redis-cli")),
                "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_healthy(30)
        return self

    def wait_healthy(self, timeout: float) -> None:
        """Every live node says ``cluster_state:ok`` and every replica is in sync."""

        def ok() -> bool:
            for s in self.servers:
                if not s.running:
                    continue
                info = _info(s.port, "replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
                c = redis.Redis(port=s.port, socket_timeout=1, decode_responses=True)
                try:
                    state = c.execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER", "INFO"
                    )
                finally:
                    c.close()
                if "cluster_state:ok" not in str(state):
                    return False
            return True

        poll(ok, timeout, "the cluster to be healthy")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:3])

    def masters(self) -> list[RedisServer]:
        return [
            s
            for s in self.servers
            if s.running and _info(s.port, "replication")["role"] == "master"
        ]

    def master_of(self, key: str) -> RedisServer:
        """The live master that owns ``key``'s slot (asked of the cluster)."""
        c = redis.Redis(port=self.masters()[0].port, decode_responses=True)
        try:
            slot = int(
                c.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "KEYSLOT", key
                )
            )
            for start, end, master, *_ in c.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "SLOTS"
            ):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(s for s in self.servers if s.port == port)
        finally:
            c.close()
        raise LookupError(key)

    def kill_and_wait_failover(self, server: RedisServer, timeout: float = 20) -> float:
        """SIGKILL ``server`` (a master); return the seconds until a replica took its slots."""
        killed_at = time.monotonic()
        server.kill()
        others = [s for s in self.servers if s.running]

        def promoted() -> bool:
            c = redis.Redis(port=others[0].port, socket_timeout=1, decode_responses=True)
            try:
                nodes = str(
                    c.execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER", "NODES"
                    )
                )
            finally:
                c.close()
            mine = [ln for ln in nodes.splitlines() if f":{server.port}@" in ln]
            return bool(mine) and "fail" in mine[0].split()[2] and self._all_covered(others[0])

        poll(promoted, timeout, "a replica to take over")
        return time.monotonic() - killed_at

    @staticmethod
    def _all_covered(server: RedisServer) -> bool:
        c = redis.Redis(port=server.port, socket_timeout=1, decode_responses=True)
        try:
            return "cluster_state:ok" in str(
                c.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "INFO"
                )
            )
        finally:
            c.close()

    def restart(self, server: RedisServer) -> None:
        """Bring a killed node back (it rejoins as a replica of whoever took its slots)."""
        server.start()

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalSentinel:
    """A master and one replica watched by three sentinels (quorum 2)."""

    MASTER = "agentbus"

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="agentbus-sentinel-"))
        self.servers: list[RedisServer] = []
        self.sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []

    def _server(self, port: int, replica_of: int | None) -> RedisServer:
        extra: tuple[str, ...] = (
            "--enable-debug-command", "local",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        )  # fmt: skip
        if replica_of is not None:
            extra += ("--replicaof", "127.0.0.1", str(replica_of))
        return RedisServer(
            port=port, data_dir=self.dir / str(port), binary=self.binary, extra_args=extra
        )

    def start(self) -> LocalSentinel:
        master = self._server(free_port(), None).start()
        replica = self._server(free_port(), master.port).start()
        self.servers = [master, replica]
        poll(
            lambda: _info(replica.port, "replication").get("master_link_status") == "up",
            20,
            "the replica to sync",
        )
        for _ in range(3):
            self._start_sentinel(free_port(), master.port)
        for port, _ in self.sentinels:
            poll(partial(self._sentinel_sees_all, port), 20, "the sentinels to find each other")
        return self

    def _start_sentinel(self, port: int, master_port: int) -> None:
        conf = self.dir / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 5000\n"
            f"sentinel parallel-syncs {self.MASTER} 1\n"
        )
        proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel", "--logfile", str(self.dir / f"s{port}.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.sentinels.append((port, proc))

    def _sentinel_sees_all(self, port: int) -> bool:
        c = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            m = c.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "MASTER", self.MASTER
            )
        finally:
            c.close()
        d = dict(zip(m[::2], m[1::2], strict=True)) if isinstance(m, list) else dict(m)
        return int(d["num-other-sentinels"]) >= 2 and int(d["num-slaves"]) >= 1

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p, _ in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.MASTER}/0"

    def master(self) -> RedisServer:
        c = redis.Redis(port=self.sentinels[0][0], socket_timeout=1, decode_responses=True)
        try:
            _, port = c.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER
            )
        finally:
            c.close()
        return next(s for s in self.servers if s.port == int(port))

    def kill_and_wait_failover(self, timeout: float = 20) -> float:
        """SIGKILL the master; the seconds until the sentinels name the promoted replica and
        it accepts writes."""
        old = self.master()
        killed_at = time.monotonic()
        old.kill()

        def promoted() -> bool:
            new = self.master()
            return new is not old and _info(new.port, "replication")["role"] == "master"

        poll(promoted, timeout, "the sentinels to promote the replica")
        return time.monotonic() - killed_at

    def stop(self) -> None:
        for _, proc in self.sentinels:
            proc.terminate()
        for _, proc in self.sentinels:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
