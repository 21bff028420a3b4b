"""``Host``: many agents in one process, sharing its connection and its control plane.

::

    host = Host()
    planner = host.agent("planner", "planner")
    summarizers = [host.agent(f"sum-{i}", "summarizer", capabilities=["pdf"]) for i in range(50)]

    async with host:                                  # registers every agent created on it
        async with host.agent("user-42", "assistant") as assistant:   # one more, for a while
            ...

A host owns the Redis client (a ``Bus``), ONE reply list read by one loop (announce results,
``reannounce`` requests and the replies to its agents' requests, routed by correlation id and
target), ONE heartbeat loop that carries every agent in one control entry per interval (a
``lease``, docs/PROTOCOL.md "Hosts"), and ONE data plane (``agent_sdk.messaging.plane``): one
reader for every inbox and role queue (woken by doorbells), one connection for acks, one send
batcher, one reply batcher and one pub/sub connection; and ONE writer connection, on which its
agents' announcements, leaves and leases are written as they are made, and its
``durable=False`` requests and answers (``agent_sdk.writethrough``). Its connections do not
grow with the number of agents: ``HELD_CONNECTIONS`` held for good, plus
``command_connections`` (1) for commands in between (discovery, the checks of a leave): 8 in
all. Each agent still has its
own card, instance id, epoch, fence (``agent_sdk.fence``), handler slots and consumer name: one
agent losing its name stops that agent only, and one slow handler holds only its own agent's
slots.

A lone ``Agent(...)`` is a host of one (it makes its own, named after it, whose reply list is the
agent's own: the wire of a lone agent is unchanged). Names are unique on a host: a second agent
with the name of one it carries is refused when it is created (unless it asked for
``on_conflict="suffix"``: then it gets the first free ``name-2``, ``name-3``...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent_sdk.bus import Bus, resolve_settings
from agent_sdk.heartbeats import Heartbeats
from agent_sdk.messaging import Messaging
from agent_sdk.messaging.plane import Plane
from agent_sdk.naming import OnConflict, suffixed
from agent_sdk.replies import ReplyRouter
from agent_sdk.settings import Settings
from agent_sdk.usage_flusher import UsageFlusher
from agent_sdk.verbs import Lookups, Verbs
from agent_sdk.writethrough import WriteThrough, direct_writer
from schemas.agent import ControlType
from schemas.envelope import Envelope, new_id
from schemas.errors import InvalidInput, NameLost
from schemas.names import check_identifier, lease_id

if TYPE_CHECKING:
    from agent_sdk.agent import Agent

__all__ = ["HELD_CONNECTIONS", "START_WAVE", "Host"]

log = logging.getLogger("agentbus.host")

#: Agents ``Host.start`` registers together.
START_WAVE = 250

#: Connections a running host holds for good: its reply list's blocking read, the reader, the
#: acks, the send and reply batchers, pub/sub, and its writer (``writer``; a host that writes
#: neither control entries nor direct requests on it never takes that one).
HELD_CONNECTIONS = 7


class Host(Lookups, Verbs):
    """Carries agents. An async context manager; ``start``/``stop`` are idempotent.

    While it runs, a host is also a client: the verbs (``send``, ``request``, ``publish``, ...,
    ``discover``, ``select``) go out as the host (``sender`` = its name) over its shared data
    plane and are answered on its reply list."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str | None = None,
        bus: Bus | None = None,
        max_agents: int = 100_000,
        instance_id: str | None = None,
        command_connections: int = 1,
        **overrides: Any,
    ) -> None:
        if bus is not None and (settings is not None or overrides):
            raise InvalidInput("pass either bus= or settings/overrides, not both")
        self.settings = bus.settings if bus is not None else resolve_settings(settings, overrides)
        self.instance_id = instance_id or new_id()
        try:
            self.name = check_identifier(name or f"host-{self.instance_id[:16]}")
        except ValueError as e:
            raise InvalidInput(f"invalid host name {name!r}: {e}") from e
        if max_agents < 1:
            raise InvalidInput(f"max_agents must be >= 1, got {max_agents}")
        if command_connections < 1:
            raise InvalidInput(f"command_connections must be >= 1, got {command_connections}")
        self.max_agents = max_agents
        if bus is None:
            # the held ones (but the reply list's, on a client of its own) and a few for the
            # commands in between: what starts and heartbeats in bursts goes through batchers
            pool = HELD_CONNECTIONS - 1 + command_connections
            bus = Bus(self.settings.model_copy(update={"max_connections": pool}))
            self._owns_bus = True
        else:
            self._owns_bus = False
        self.bus = bus
        self.router = ReplyRouter(
            self.settings,
            self.settings.keys.replies(self.name, self.instance_id),
            on_unsolicited=self._on_control,
            owner=self.name,
        )
        self.heartbeats: Heartbeats | None = None
        #: Its writer connection (None on a cluster): ``durable=False`` requests and answers
        #: (``WriteThrough.post``), and its control entries (``control``).
        self.writer: WriteThrough | None = None
        #: ``writer``, when the announcements, leaves and leases of its agents are written on
        #: it as each is made, so the coordinator answers the first agents of a burst while the
        #: host is still making the others (``agent_sdk.writethrough``). A host of one, acl
        #: mode and ``replica_acks`` send them in the data plane's batches instead.
        self.control: WriteThrough | None = None
        #: The data plane its agents share (exists once the host runs).
        self.plane: Plane | None = None
        #: Flushes the usage stats of every agent it carries, from one loop.
        self.usage_flusher = UsageFlusher()

        self._client_plane: Messaging | None = None
        #: The agents this host carries, by name (created on it and not stopped yet).
        self.agents: dict[str, Agent] = {}
        self.stopped = asyncio.Event()
        self._state = "new"  # new -> starting -> running -> stopping -> stopped
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"Host(name={self.name!r}, agents={len(self.agents)})"

    @property
    def lease(self) -> str:
        """This host's lease id (``<name>:<instance id>``): its agents announce under it, and
        its lease entries renew every name it holds at once (docs/PROTOCOL.md, "Hosts")."""
        return lease_id(self.name, self.instance_id)

    @property
    def running(self) -> bool:
        return self._state == "running"

    # -- agents --------------------------------------------------------------------------------
    def agent(
        self,
        name: str,
        role: str,
        *,
        capabilities: Iterable[str] = (),
        tags: Iterable[str] = (),
        version: str = "0.0.0",
        description: str = "",
        region: str | None = None,
        max_concurrency: int = 1,
        metadata: Mapping[str, str] | None = None,
        on_name_lost: Callable[[NameLost], None] | None = None,
        on_conflict: OnConflict = "refuse",
    ) -> Agent:
        """A new agent carried by this host (the same card arguments as ``Agent``). Started with
        the host, or by ``async with`` / ``start()`` while the host runs. With
        ``on_conflict="suffix"`` a name the host carries is not refused: the agent gets the
        first free ``name-2``, ``name-3``, ... (and again when it starts, if the registry holds
        that one: ``agent_sdk.naming``)."""
        from agent_sdk.agent import Agent

        return Agent(
            name, role, capabilities=capabilities, tags=tags, version=version,
            description=description, region=region, max_concurrency=max_concurrency,
            metadata=metadata, on_name_lost=on_name_lost, host=self, on_conflict=on_conflict,
        )  # fmt: skip

    def free_name(self, base: str) -> str:
        """The first of ``base``, ``base-2``, ``base-3``, ... this host does not carry."""
        number = 1
        while (name := suffixed(base, number)) in self.agents:
            number += 1
        return name

    def attach(self, agent: Agent) -> None:
        """Carry ``agent`` (called by ``Agent`` when it is created on this host)."""
        if agent.name in self.agents:
            raise InvalidInput(
                f"host {self.name!r} already carries an agent named {agent.name!r} "
                f"(instance {self.agents[agent.name].instance_id}); names are unique on a host"
            )
        if len(self.agents) >= self.max_agents:
            raise InvalidInput(
                f"host {self.name!r} carries {len(self.agents)} agents, its max_agents: "
                f"cannot add {agent.name!r}"
            )
        self.agents[agent.name] = agent

    def rename(self, agent: Agent, name: str) -> bool:
        """Carry ``agent`` under ``name`` from now on (before it announces it); False if the
        host carries another agent of that name."""
        holder = self.agents.get(name)
        if holder is not None:
            return holder is agent
        if self.agents.get(agent.name) is agent:
            del self.agents[agent.name]
        self.agents[name] = agent
        return True

    def detach(self, agent: Agent) -> None:
        """Stop carrying ``agent`` (it stopped): its name is free on this host again."""
        if self.agents.get(agent.name) is agent:
            del self.agents[agent.name]

    # -- a client too: agent_sdk.verbs -------------------------------------------------------
    def _bus(self) -> Bus:
        return self.bus

    def _data_plane(self) -> Messaging:
        if self.plane is None:
            raise InvalidInput(f"{self!r} is not running: use `async with host:` first")
        if self._client_plane is None:
            self._client_plane = Messaging(
                self.bus.client, self.settings, name=self.name, instance_id=self.instance_id,
                consume=False, plane=self.plane, replies=self.router,
            )  # fmt: skip
        return self._client_plane

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> Host:
        """Start the shared machinery, then register every agent created on the host, in waves
        of ``START_WAVE`` (the announcements of a wave go out together; a wave at a time keeps
        the event loop, and so the heartbeats of the agents already running, responsive). If
        one cannot register, the host stops and the error is raised."""
        await self.start_shared()
        pending = [a for a in list(self.agents.values()) if a.lifecycle == "new"]
        for i in range(0, len(pending), START_WAVE):
            wave = pending[i : i + START_WAVE]
            results = await asyncio.gather(*(a.start() for a in wave), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                await self.stop()
                raise errors[0]
        return self

    async def start_shared(self) -> None:
        """Start what the agents share (client, reply list, heartbeat loop). Idempotent."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._state in ("starting", "running"):
                return
            if self._state != "new":
                raise InvalidInput(f"{self!r} was stopped; create a new Host to run again")
            self._state = "starting"
            self.stopped.clear()
            try:
                await self.bus.start()
                await self.router.start()
                s = self.settings
                self.writer = direct_writer(self.bus.client)
                if (
                    self.writer is not None
                    and self.max_agents > 1
                    and not (s.secure or s.replica_acks)
                ):
                    self.control = self.writer
                    await self.control.start()
                self.heartbeats = Heartbeats(
                    self.bus.client, self.settings, host=self.name, reply_to=self.router.key,
                    lease=self.lease, writer=self.control,
                )  # fmt: skip
                await self.heartbeats.start()
                self.plane = Plane(self.bus.client, self.settings, direct=self.writer)
                await self.plane.start()
                self.usage_flusher.batcher = self.plane.send_batcher
                await self.usage_flusher.start()
            except BaseException:
                await self._stop_shared()
                raise
            self._state = "running"

    async def stop(self) -> None:
        """Stop every agent it carries (each drains and leaves), then the shared machinery."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            self.stopped.set()
            return
        if self._state == "stopping":
            await self.stopped.wait()
            return
        self._state = "stopping"
        agents = list(self.agents.values())
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        await self._stop_shared()

    async def _stop_shared(self) -> None:
        try:
            await self.usage_flusher.stop()
            if self._client_plane is not None:
                await self._client_plane.stop()
                self._client_plane = None
            if self.plane is not None:
                await self.plane.stop()
            if self.heartbeats is not None:
                await self.heartbeats.stop()
            if self.writer is not None:
                await self.writer.aclose()
            await self.router.stop()
        finally:
            if self._owns_bus:
                await self.bus.stop()
            self._state = "stopped"
            self.stopped.set()

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    def run(self) -> int:
        """Run the host until SIGTERM or SIGINT, then stop every agent gracefully; a second
        signal exits at once. The executable edge (``agent_sdk.runner``)."""
        from agent_sdk.runner import run

        return run(self)

    async def __aenter__(self) -> Host:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- control envelopes for the agents --------------------------------------------------
    async def _on_control(self, env: Envelope) -> None:
        if env.type == ControlType.LEASE_RESULT:  # our lease was refused: no agent was renewed
            error = env.error
            log.warning(
                "%s: the coordinator refused a lease: [%s] %s",
                self.name,
                error.code if error is not None else "?",
                error.description if error is not None else "no reason given",
            )
            return
        agent = self.agents.get(env.target or "")
        if agent is None:
            log.debug("%s: control envelope %s for %r, not carried here", self.name, env.type,
                      env.target)  # fmt: skip
            return
        await agent.on_control(env)
