"""The real coordinator as a child process (``python -m coordinator``), watched with psutil."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from agent_sdk.topology import Topology, parse_redis_url
from schemas.keys import KeySpace

__all__ = ["CoordinatorProcess", "sync_client"]

ROOT = Path(__file__).resolve().parent.parent


def sync_client(url: str) -> Any:
    """A blocking redis-py client for any ``AGENTBUS_REDIS_URL`` form (one server, a cluster's
    seed nodes, or Sentinel: its master)."""
    target = parse_redis_url(url)
    if target.topology is Topology.CLUSTER:
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        return RedisCluster(startup_nodes=nodes, password=target.password)
    if target.topology is Topology.SENTINEL:
        assert target.master is not None
        sentinel = Sentinel(list(target.nodes), password=target.password)
        return sentinel.master_for(target.master, db=target.db)
    return redis.Redis.from_url(url)


class CoordinatorProcess:
    """One coordinator daemon for namespace ``ns``; ready when its health key exists."""

    def __init__(
        self,
        url: str,
        ns: str,
        coordinator_id: str | None = None,
        *,
        wrapper: tuple[str, ...] = (),
        **settings: str,
    ) -> None:
        self.url = url
        self.ns = ns
        #: What the command runs under (``valgrind ...``: ``bench.coordinator_cost``).
        self.wrapper = wrapper
        self.coordinator_id = coordinator_id or f"bench-{ns}"
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        port = urlsplit(url).port if "," not in url else 0
        self.log_path = (
            Path(tempfile.gettempdir())
            / f"agentbus-bench-coordinator-{port}-{self.coordinator_id}.log"
        )

    def start(self, timeout: float = 30.0) -> CoordinatorProcess:
        env = dict(os.environ)
        env.update(
            AGENTBUS_REDIS_URL=self.url,
            AGENTBUS_NAMESPACE=self.ns,
            AGENTBUS_COORDINATOR_ID=self.coordinator_id,
        )
        env.update({f"AGENTBUS_{k.upper()}": v for k, v in self.settings.items()})
        log = self.log_path.open("wb")
        module = "coordinator" if (ROOT / "coordinator" / "__main__.py").exists() else None
        self.module = module or "bench.run_coordinator"
        self.process = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", self.module],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.ps = psutil.Process(self.process.pid)
        health = KeySpace(self.ns).coordinator_health(self.coordinator_id)
        client = sync_client(self.url)
        deadline = time.monotonic() + timeout
        try:
            while not client.exists(health):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"coordinator exited with {self.process.returncode}: "
                        + self.log_path.read_text()[-2000:]
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"coordinator not healthy after {timeout}s")
                time.sleep(0.01)  # polling a child process we started: no event to wait on
        finally:
            client.close()
        return self

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        assert self.ps is not None
        return float(self.ps.memory_info().rss) / 1024 / 1024

    def final_stats(self) -> dict[str, object]:
        """The counters the coordinator logs when it stops (``stopped ({...})``), if found."""
        try:
            text = self.log_path.read_text()
        except OSError:
            return {}
        for line in reversed(text.splitlines()):
            if " stopped ({" in line:
                try:
                    value = ast.literal_eval(line[line.index("({") + 1 : line.rindex(")")])
                except (ValueError, SyntaxError):
                    return {}
                return dict(value) if isinstance(value, dict) else {}
        return {}

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> CoordinatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
