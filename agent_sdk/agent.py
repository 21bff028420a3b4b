"""``Agent``: one member of the bus: registered, heartbeating, discoverable.

::

    async with Agent("summarizer-1", "summarizer", capabilities=["pdf"], version="1.2.0") as agent:
        print(agent.record)             # what the registry holds
        agent.set_status("busy")        # visible in the registry at once
        peers = await agent.discover(role="summarizer")

``async with agent`` starts the reply router (the instance's reply list is read before anything
is sent), announces (``NoCoordinator``, ``NameTaken`` or ``Refused`` if that fails; with
``on_conflict="suffix"`` a name held elsewhere is not refused: the agent takes the first free
``name-2``, ``name-3``, ..., see ``agent_sdk.naming``), starts the
heartbeat loop, then starts the agent's components. An instance that was expired while it could
not heartbeat (frozen, stalled, cut off) handles nothing until the registry holds it again; if
another instance took its name meanwhile it stops for good: ``agent.name_lost`` says why, and
the agent stops itself unless ``on_name_lost`` was given (docs/PROTOCOL.md, "Fencing"). On exit
the components are stopped (drained for up to ``shutdown_grace``), the heartbeat stops and the
agent leaves: its record is gone when ``__aexit__`` returns.

**Components** are the extension point of the messaging layer: anything with
``async start()`` and ``async stop(grace)``; ``add_component`` before or after start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from agent_sdk import telemetry
from agent_sdk.activity import TENANT_HEADER, Activity
from agent_sdk.bus import Bus, resolve_settings
from agent_sdk.fence import Fence
from agent_sdk.host import Host
from agent_sdk.membership import Membership
from agent_sdk.messaging import HandlerRegistry, Messaging
from agent_sdk.messaging.handlers import Handler, Message
from agent_sdk.naming import OnConflict, announce_free_name, check_on_conflict
from agent_sdk.settings import Settings
from agent_sdk.state import AgentState
from agent_sdk.usage import UNKNOWN_TYPE, UsageRecorder
from agent_sdk.verbs import Lookups, Verbs
from schemas.agent import AgentCard, AgentRecord, AgentStatus
from schemas.envelope import Envelope, new_id
from schemas.errors import AgentbusError, ErrorInfo, InvalidInput, NameLost
from schemas.keys import KeySpace

__all__ = ["Agent", "Component"]

log = logging.getLogger("agentbus.agent")


@functools.cache
def _hostname() -> str | None:
    """This machine's name for agent cards (asked once per process, not once per agent)."""
    return socket.gethostname()[:255] or None


@runtime_checkable
class Component(Protocol):
    """Something an ``Agent`` runs while it is registered (inbox consumer, role member, …).

    Started in order after the announcement was accepted; stopped in reverse order before the
    agent leaves, with ``grace`` seconds to finish work in progress.
    """

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class Agent(Lookups, Verbs):
    """A registered agent. An async context manager; ``start``/``stop`` are idempotent."""

    def __init__(
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
        settings: Settings | None = None,
        bus: Bus | None = None,
        on_name_lost: Callable[[NameLost], None] | None = None,
        host: Host | None = None,
        on_conflict: OnConflict = "refuse",
        **overrides: Any,
    ) -> None:
        if bus is not None and (settings is not None or overrides):
            raise InvalidInput("pass either bus= or settings/overrides, not both")
        if host is not None and (bus is not None or settings is not None or overrides):
            raise InvalidInput("an agent on a host uses the host's settings: pass host= alone")
        if host is not None:
            self.settings = host.settings
        elif bus is not None:
            self.settings = bus.settings
        else:
            self.settings = resolve_settings(settings, overrides)
        #: What to do when another live instance holds the name (``agent_sdk.naming``).
        self.on_conflict = check_on_conflict(on_conflict, name)
        self._base_name = name
        if self.on_conflict == "suffix" and host is not None:
            name = host.free_name(name)
        try:
            self.card = AgentCard(
                name=name,
                role=role,
                capabilities=tuple(capabilities),
                tags=tuple(tags),
                version=version,
                description=description,
                region=region,
                host=_hostname(),
                pid=os.getpid(),
                max_concurrency=max_concurrency,
                metadata=dict(metadata or {}),
            )
        except ValidationError as e:
            raise InvalidInput(f"invalid agent {name!r}: {e}") from e
        self.instance_id = new_id()
        # a lone agent is a host of one, named after it: its reply list is its own
        self._owns_host = host is None
        if host is None:
            if bus is not None:
                host = Host(bus=bus, name=name, instance_id=self.instance_id, max_agents=1)
            else:
                host = Host(self.settings, name=name, instance_id=self.instance_id, max_agents=1)
        host.attach(self)
        self.host = host
        self.bus = host.bus
        #: The reply list this agent is answered on (its host's).
        self.router = host.router
        self.stopped = asyncio.Event()
        self._status = AgentStatus.READY
        self._load = 0
        self._components: list[Component] = []
        self._started: list[Component] = []
        self._membership: Membership | None = None
        #: The instance's lease: nothing is handled while it has lapsed (agent_sdk.fence).
        self.fence = Fence(self.settings.ttl)
        #: Set when this instance lost its name to another (see ``on_name_lost``).
        self.name_lost: NameLost | None = None
        self._on_name_lost = on_name_lost
        self._lost_stop: asyncio.Task[None] | None = None
        #: Message handlers (``@agent.on``); the data plane (``Messaging``) exists once started.
        self.handlers = HandlerRegistry()
        #: Usage stats of this agent's handlers (``agentbus stats``); exists once started.
        self.usage: UsageRecorder | None = None
        self._state_store: AgentState | None = None
        self._messaging: Messaging | None = None
        self._state = "new"  # new -> starting -> running -> stopping -> stopped

    # -- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @property
    def id(self) -> str:
        """The agent's id is its name (its address)."""
        return self.card.name

    @property
    def role(self) -> str:
        return self.card.role

    @property
    def keys(self) -> KeySpace:
        return self.settings.keys

    @property
    def reply_key(self) -> str:
        """This instance's reply list (``reply_to`` of its requests)."""
        return self.router.key

    @property
    def record(self) -> AgentRecord | None:
        """The record the registry accepted (``None`` before the announce and after leaving)."""
        return self._membership.record if self._membership is not None else None

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def state(self) -> AgentState:
        """The agent name's persisted key-value state (``agent_sdk.state``): it survives
        restarts; writes are fenced by the registration's epoch."""
        if self._state_store is None:
            if self._state == "new":
                raise InvalidInput(f"{self!r} is not started: its state is there once it runs")
            self._state_store = AgentState(self.bus.client, self.settings, self.name, self.fence)
        return self._state_store

    @property
    def lifecycle(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``."""
        return self._state

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, role={self.role!r}, instance_id={self.instance_id!r})"

    # -- status and load ---------------------------------------------------------------------
    @property
    def status(self) -> AgentStatus:
        return self._status

    def set_status(self, status: AgentStatus | str) -> None:
        """Change the status; a heartbeat carries it to the registry at once."""
        try:
            self._status = AgentStatus(status)
        except ValueError as e:
            raise InvalidInput(f"invalid status {status!r}") from e
        if self._membership is not None:
            self._membership.status = self._status
            self._membership.wake()

    @property
    def load(self) -> int:
        """Work items in progress (set by the messaging layer with ``set_load``)."""
        return self._load

    def set_load(self, load: int) -> None:
        """Set the load reported by the next heartbeat."""
        if load < 0:
            raise InvalidInput(f"load must be >= 0, got {load}")
        self._load = load
        if self._membership is not None:
            self._membership.load = load

    # -- components --------------------------------------------------------------------------
    def add_component(self, component: Component) -> None:
        """Run ``component`` while registered (before start; ``start_component`` after)."""
        if self._state != "new":
            raise InvalidInput(
                f"{self!r} is {self._state}: add components before it starts, or use "
                "`await agent.start_component(c)`"
            )
        if component not in self._components:
            self._components.append(component)

    def _make_data_plane(self) -> Messaging:
        """The agent's data plane and usage stats, made once (first started, last stopped)."""
        if self._messaging is not None:
            return self._messaging
        self._messaging = messaging = Messaging(
            self.bus.client, self.settings, name=self.name,
            instance_id=self.instance_id, role=self.role, replies=self.router,
            max_concurrency=self.card.max_concurrency, on_load=self.set_load,
            handlers=self.handlers, fence=self.fence, plane=self.host.plane,
        )  # fmt: skip
        self._components.insert(0, messaging)
        # usage stats: started before the data plane, stopped (and flushed) after it
        self.usage = UsageRecorder(
            self.bus.client, self.settings, self.name, instance_id=self.instance_id,
            flusher=self.host.usage_flusher,
        )  # fmt: skip
        self.handlers.observer = self._observe
        self.handlers.task_observer = self._task_done
        self._components.insert(0, self.usage)
        return messaging

    async def start_component(self, component: Component) -> None:
        """Add ``component`` and, if the agent runs, start it now."""
        if component not in self._components:
            self._components.append(component)
        if self._state == "running" and component not in self._started:
            await component.start()
            self._started.append(component)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> Agent:
        if self._state != "new":
            if self._state == "stopped":
                raise InvalidInput(f"{self!r} was stopped; create a new Agent to run again")
            return self
        if not self._owns_host and not self.host.running:
            raise InvalidInput(
                f"{self!r}: its host {self.host.name!r} is not running: start the host first "
                "(`async with host:`), which starts every agent created on it"
            )
        self._state = "starting"
        self.stopped.clear()
        try:
            if self._owns_host:
                await self.host.start_shared()
            await self._register()
            await self._start_components()
        except BaseException:
            await self._shutdown()
            raise
        self._state = "running"
        log.info("%s registered (instance %s)", self.name, self.instance_id)
        return self

    async def _register(self) -> None:
        """Announce, then start the components (the data plane prepared meanwhile)."""
        self._card_lists_handlers()
        membership = Membership(
            self.bus.client, self.settings, self.card, self.instance_id, self.router,
            fence=self.fence, on_lost=self._name_was_lost,
            batcher=self.host.plane.send_batcher if self.host.plane is not None else None,
            lease=self.host.lease, writer=self.host.control,
        )  # fmt: skip
        membership.status, membership.load = self._status, self._load
        self._membership = membership
        if self.on_conflict == "suffix":  # the name is known once announced
            await announce_free_name(membership, self._base_name, self._claim_name)
            self._make_data_plane()
        elif self.settings.secure:
            # acl mode: the policy decides the roles, so nothing is subscribed before the
            # coordinator accepted them (a refused role's channels would be NOPERM)
            await membership.announce()
            self._make_data_plane()
        else:
            # groups made and channels subscribed in the round trips of the announcement
            messaging = self._make_data_plane()
            messaging.prepare()
            try:
                await membership.announce()
            except BaseException:
                await messaging.abandon()
                raise
        heartbeats = self.host.heartbeats
        assert heartbeats is not None  # the host runs
        await membership.start(heartbeats)
        for component in (self.usage, self._messaging):  # the agent's own, first
            if component is not None and component not in self._started:
                await component.start()
                self._started.append(component)

    async def _start_components(self) -> None:
        """The components added by the program (``start_component``), after the agent's own."""
        for component in list(self._components):
            if component not in self._started:
                await component.start()
                self._started.append(component)

    async def stop(self) -> None:
        if self._state in ("new", "stopped"):
            return
        if self._state == "stopping":
            await self.stopped.wait()
            return
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Drain and leave. Every step that needs Redis is bounded (``announce_timeout``, plus
        ``shutdown_grace`` for a component's handlers to finish), so a stop while Redis is
        unreachable still ends: the record then expires after the TTL."""
        self._state = "stopping"
        membership = self._membership
        bound = self.settings.announce_timeout
        grace = self.settings.shutdown_grace
        try:
            if self._started and membership is not None and membership.registered:
                self.set_status(AgentStatus.DRAINING)
                await self._send_draining(membership)
            for component in reversed(self._started):
                try:
                    async with asyncio.timeout(grace + bound):
                        await component.stop(grace)
                except TimeoutError:
                    log.warning("%s: component %r did not stop within %.1fs", self.name,
                                component, grace + bound)  # fmt: skip
                except Exception:
                    log.exception("%s: stopping component %r failed", self.name, component)
            self._started.clear()
            if membership is not None:
                await membership.stop()
                try:
                    async with asyncio.timeout(bound + 1.0):
                        await membership.leave()
                except (AgentbusError, TimeoutError) as e:
                    why = str(e) or f"no answer within {bound + 1.0:.1f}s (is Redis reachable?)"
                    log.warning("%s: could not leave the registry cleanly: %s", self.name, why)
        finally:
            self.host.detach(self)
            try:
                if self._owns_host:
                    await self.host.stop()
            finally:
                self._state = "stopped"
                self.stopped.set()

    async def _send_draining(self, membership: Membership) -> None:
        """The registry shows ``draining`` before the agent stops taking work and leaves."""
        beats = self.host.heartbeats
        if beats is None or not membership.beating:
            return
        bound = self.settings.announce_timeout
        try:
            async with asyncio.timeout(bound):
                await beats.send_now(membership)
        except (AgentbusError, TimeoutError) as e:
            why = str(e) or f"no answer within {bound:.1f}s (is Redis reachable?)"
            log.warning("%s: could not report draining: %s", self.name, why)

    async def wait_stopped(self) -> None:
        """Return once stopped (``stopped`` is the underlying event)."""
        await self.stopped.wait()

    def run(self) -> int:
        """Run this agent in this process until SIGTERM or SIGINT, then stop it gracefully
        (handlers finish within ``shutdown_grace``, the agent leaves at once); a second signal
        exits at once. The executable edge: call it from ``if __name__ == "__main__":``.
        Returns the exit status (0 after a clean stop; ``agent_sdk.runner``)."""
        from agent_sdk.runner import run

        return run(self)

    async def __aenter__(self) -> Agent:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def on_control(self, env: Envelope) -> None:
        """A control envelope for this agent arrived on its host's reply list."""
        if self._membership is not None:
            await self._membership.on_control(env)

    @property
    def epoch(self) -> int | None:
        """The registration's fencing token (``AgentRecord.epoch``); ``None`` before the first
        accepted announcement. Pass it with writes to outside systems so they can refuse an
        instance that lost its name (docs/PROTOCOL.md, "Fencing")."""
        return self.fence.epoch

    def _claim_name(self, name: str) -> bool:
        """Take ``name`` (``on_conflict="suffix"``, before announcing it): False if the host
        carries another agent of that name."""
        if name != self.name:
            if not self.host.rename(self, name):
                return False
            self.card = self.card.model_copy(update={"name": name})
            if self._membership is not None:
                self._membership.card = self.card
        return True

    def _name_was_lost(self, error: NameLost) -> None:
        """Another instance registered our name while we were expired: we have stopped
        handling messages (the fence is closed). Tell the program, then stop, unless the program
        asked to decide itself (``on_name_lost``)."""
        self.name_lost = error
        if self._on_name_lost is not None:
            self._on_name_lost(error)
            return
        log.error("%s (instance %s) lost its name; stopping the agent", self.name, self.instance_id)
        if self._lost_stop is None:
            self._lost_stop = asyncio.create_task(self.stop(), name=f"agentbus-lost:{self.name}")

    # -- messaging (delegated to agent_sdk.messaging.Messaging) ---------------------------------
    @property
    def messaging(self) -> Messaging:
        if self._messaging is None:
            raise InvalidInput(f"{self!r} is not started: use `async with agent:` first")
        return self._messaging

    def _data_plane(self) -> Messaging:
        return self.messaging

    def on(self, type: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@agent.on("summarize")`` registers an async handler for a type."""
        return self.handlers.on(type)

    # -- discovery: agent_sdk.verbs.Lookups, over the host's bus -----------------------------
    def _bus(self) -> Bus:
        return self.bus

    def _observe(self, message_type: str, seconds: float, failed: bool) -> None:
        """The handler observer: usage stats in Redis and the handler-duration metric."""
        if message_type not in self.handlers:  # any sender can invent types: one bucket
            message_type = UNKNOWN_TYPE
        if self.usage is not None:
            self.usage.record(message_type, seconds, failed)
        telemetry.record_handled(message_type, seconds, failed)

    def _card_lists_handlers(self) -> None:
        """Name the handled message types in the card's metadata (``handles``, comma-separated)
        for those who describe agents to others (the gateway's A2A agent cards), unless the
        caller set it. Handlers added after ``start`` are not listed (until a restart)."""
        types = [t for t in self.handlers.types if "," not in t]
        if not types or "handles" in self.card.metadata or len(self.card.metadata) >= 32:
            return
        # added to the card's own metadata (a dict this agent made, not shared; the card is
        # not announced yet): a model copy would cost a start about 4 % more
        self.card.metadata["handles"] = ",".join(sorted(types))[:1024]

    def _task_done(
        self, msg: Message, started: float, seconds: float, error: ErrorInfo | None
    ) -> None:
        """The task observer: one entry of the task history, written with the usage stats."""
        if self.usage is not None:
            self.usage.tasks.add(
                msg.id, msg.type, msg.sender, msg.kind.value, msg.headers.get("session"),
                started, seconds, None if error is None else error.code,
            )  # fmt: skip
            self.host.usage_flusher.mark(self.usage)  # written with the next flush round

    # -- activity (agent_sdk.activity) -------------------------------------------------------
    def activity(self, session: str | Message, *, tenant: str | None = None) -> Activity:
        """Report this agent's work for a session: ``async with agent.activity(sid) as act:``
        emits ``agent_started``, then ``agent_completed`` or ``agent_failed``; inside it
        ``act.thinking(...)``, ``act.tool_executing(tool, args)``, ``act.tool_completed(...)``.

        ``session``: a session id (``tenant``: the tenant it belongs to, if any), or the message
        being handled, whose ``session`` and ``tenant`` headers (set by the gateway) say both."""
        if not isinstance(session, str):
            headers = session.headers
            if "session" not in headers:
                raise InvalidInput(f"message {session.id} has no session header")
            session, tenant = headers["session"], headers.get(TENANT_HEADER, tenant)
        return self.bus.activity_log.session(session, self.name, tenant)
