"""The reply router: one blocking pop loop over an agent's (or client's) reply list.

Everything that answers this process pushes a JSON envelope onto its reply list
``<ns>:agent:{<name>}:replies:<instance>`` (``schemas.keys.KeySpace.replies``): the coordinator
(``announce_result``, ``reannounce``) and responders to requests. The router pops them on a
dedicated connection (blocking reads must not hold a pooled connection others need), decodes
them and hands each to whoever waits for it:

* ``expect(correlation_id)`` returns a future resolved by the reply whose ``correlation_id``
  matches; register it *before* sending whatever is answered, and ``discard`` it in ``finally``;
* an envelope nobody waits for goes to ``on_unsolicited`` if it is of kind ``control`` (e.g. the
  coordinator's ``reannounce``); a late reply to a forgotten request is dropped (logged at debug).
  In acl mode such a control envelope is handed on only if a coordinator proved it
  (``R:proofs``, which only coordinators may write): anyone allowed to answer requests may push
  to a reply list, but not a ``reannounce`` the agent would obey; an unproved one is dropped,
  counted (``unproved``) and logged;
* an entry that does not decode is logged and dead-lettered (``<ns>:deadletter``).

Replies are ``LPUSH``ed and popped from the right, in arrival order: on Redis 7 one
``BLMPOP ... RIGHT COUNT _DRAIN_BATCH`` waits for the first and takes what else waits; on 6.2,
``BRPOP``, then ``RPOP key count`` while there is more. The loop survives Redis outages: it
logs, backs off and continues (``agent_sdk.retry``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from agent_sdk.cluster_lane import AnyLane, open_lane
from agent_sdk.connection import CONNECTION_ERRORS, access_error, make_client
from agent_sdk.messaging.topics import PubSubHub
from agent_sdk.retry import keep_running
from agent_sdk.security import publish_digest
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_and_wait
from schemas.display import safe_text
from schemas.envelope import Envelope, Kind, decode_json, utcnow
from schemas.errors import PermissionDenied, ProtocolError

__all__ = ["ReplyRouter", "UnsolicitedHandler"]

log = logging.getLogger("agentbus.replies")

#: Called with a control envelope nobody waited for (``reannounce``, …).
UnsolicitedHandler = Callable[[Envelope], Awaitable[None] | None]

_POP_TIMEOUT = 1.0  # seconds a BRPOP blocks; bounds how stale the loop's view of "stop" is
#: Replies taken per round trip once one arrived (``RPOP key count``): a host's reply list can
#: receive thousands at once (the announce results of its agents starting together), and one
#: pop per round trip falls behind when the event loop is busy.
_DRAIN_BATCH = 256


class ReplyRouter:
    """Routes the envelopes of one reply list to waiting futures and a control callback.

    ``start``/``stop`` are idempotent; ``stopped`` is set once the loop has ended. No task or
    connection exists before ``start``.
    """

    def __init__(
        self,
        settings: Settings,
        key: str,
        *,
        on_unsolicited: UnsolicitedHandler | None = None,
        owner: str = "",
    ) -> None:
        self.settings = settings
        self.key = key
        self.owner = owner or key
        self.on_unsolicited = on_unsolicited
        self.stopped = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[Envelope]] = {}
        #: correlation id -> the only sender whose reply is accepted (acl mode)
        self._senders: dict[str, str] = {}
        #: replies dropped because they came from another sender than the one asked
        self.forged = 0
        #: acl mode: unsolicited control envelopes dropped because no coordinator proved them
        self.unproved = 0
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._ready = asyncio.Event()
        self._push_hubs: list[PubSubHub] = []

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- waiting for replies -----------------------------------------------------------------
    def expect(self, correlation_id: str, *, sender: str | None = None) -> asyncio.Future[Envelope]:
        """A future for the reply to ``correlation_id`` (register before sending). With
        ``sender`` (acl mode, a request to a named agent), a reply that claims another sender is
        dropped and logged: only the agent the request went to can answer it."""
        fut = self._waiting.get(correlation_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = fut
        if sender is not None:
            self._senders[correlation_id] = sender
        return fut

    def discard(self, correlation_id: str) -> None:
        """Stop waiting for ``correlation_id`` (cancels its future if still pending)."""
        fut = self._waiting.pop(correlation_id, None)
        self._senders.pop(correlation_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def listen_pushed(self, hub: PubSubHub) -> None:
        """Also take replies ``PUBLISH``ed on the channel named like the reply list (the
        answers to ``durable=False`` requests), on ``hub``'s connection. Idempotent."""
        if hub not in self._push_hubs:
            await hub.listen({self.key: self._on_push})
            self._push_hubs.append(hub)

    def _on_push(self, channel: str, data: bytes) -> None:
        try:
            env = decode_json(data)
        except ProtocolError as e:
            log.warning("reply channel %s: dropping an undecodable reply: %s", channel, e)
            return
        cid = env.correlation_id
        fut = self._waiting.pop(cid, None) if cid is not None else None
        if fut is not None and not fut.done():
            fut.set_result(env)
        elif fut is None:
            log.debug("reply channel %s: dropping a reply nobody waits for (%s)", channel, cid)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self.stopped.clear()
        # One connection of our own: BRPOP blocks it for up to _POP_TIMEOUT.
        self._client = make_client(self.settings, max_connections=2)  # the BRPOP lane + spare
        self._task = asyncio.create_task(self._run(), name=f"agentbus-replies:{self.owner}")
        # Make sure the list is being read before anyone sends what is answered on it.
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        task = self._task
        if task.done() and not task.cancelled() and task.exception() is not None:
            error = task.exception()
            await self.stop()
            assert error is not None
            raise error

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        self._waiting.clear()
        self._ready.clear()
        self.stopped.set()

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._client is not None
        client = self._client
        lane = open_lane(client)  # BRPOP straight on one connection (no pool checkout per pop)
        try:
            await self._loop(client, lane)
        finally:
            await lane.aclose()

    async def _first_pop(self, lane: AnyLane) -> None:
        """What waits already (a non-blocking pop), then ``ready``. A pop Redis refuses (the
        ACL user may not take this list: the name is not its identity's) ends the router with
        ``PermissionDenied``, which ``start`` raises: nothing sent would ever be answered."""
        try:
            items = await lane.call("RPOP", self.key, _DRAIN_BATCH)
        except NoPermissionError as e:
            raise access_error(self.settings, f"reading the reply list {self.key}", e) from e
        self._ready.set()
        for data in items or []:
            await self._route(data)

    async def _loop(self, client: aioredis.Redis, lane: AnyLane) -> None:
        drain = False  # the last pop found something: take what else waits, without blocking
        blmpop = True  # Redis >= 7: one command blocks for the first and takes what else waits

        async def pop() -> None:
            nonlocal drain, blmpop
            if not self._ready.is_set():
                await self._first_pop(lane)
                return
            items: list[Any]
            if blmpop:
                try:
                    got = await lane.call(
                        "BLMPOP", _POP_TIMEOUT, 1, self.key, "RIGHT", "COUNT", _DRAIN_BATCH
                    )
                except ResponseError as e:
                    if "unknown command" not in str(e).lower():
                        raise
                    blmpop = False  # Redis 6.2: BRPOP, then RPOP COUNT while there is more
                    return
                items = list(got[1]) if got is not None else []
            elif drain:
                items = await lane.call("RPOP", self.key, _DRAIN_BATCH) or []
            else:
                item = await lane.call("BRPOP", self.key, _POP_TIMEOUT)
                items = [item[1]] if item is not None else []
            drain = bool(items)
            for data in items:
                await self._route(data)

        def failed(error: BaseException) -> None:
            if isinstance(error, CONNECTION_ERRORS):
                self._ready.set()  # do not hold start() hostage to an outage

        try:
            await self._first_pop(lane)
        except PermissionDenied:
            raise  # ends the router: start() raises it
        except CONNECTION_ERRORS:
            self._ready.set()  # do not hold start() hostage to an outage: the loop retries
        except Exception:
            log.exception("reading the reply list %s: the first pop failed", self.key)
        await keep_running(
            f"reading the reply list {self.key} on {self.settings.display_url}",
            pop,
            log=log,
            cap=self.settings.retry_max_backoff,
            on_error=failed,
        )

    async def _route(self, data: bytes | str) -> None:
        try:
            env = decode_json(data)
        except ProtocolError as e:
            log.warning("reply list %s: dead-lettering an undecodable entry: %s", self.key, e)
            await self._dead_letter(data, e)
            return
        cid = env.correlation_id
        wanted = self._senders.get(cid) if cid is not None else None
        if wanted is not None and env.sender != wanted:
            self.forged += 1
            log.warning(
                "reply list %s: dropping a reply to %s that claims sender %s (the request went "
                "to %s)", self.key, cid, safe_text(env.sender), wanted,
            )  # fmt: skip
            return
        fut = self._waiting.pop(cid, None) if cid is not None else None
        if cid is not None:
            self._senders.pop(cid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(env)
            return
        if env.kind is Kind.CONTROL and self.on_unsolicited is not None:
            if self.settings.secure and not await self._proved(data):
                self.unproved += 1
                log.warning(
                    "reply list %s: dropping a %s control envelope claiming sender %s: no "
                    "coordinator proved it (acl mode)", self.key, safe_text(env.type, 64),
                    safe_text(env.sender, 128),
                )  # fmt: skip
                return
            try:
                result = self.on_unsolicited(env)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("reply list %s: control handler failed for %s", self.key, env.type)
            return
        log.debug(
            "reply list %s: dropping %s %s (correlation_id=%s): nobody waits for it",
            self.key,
            env.kind.value,
            env.type,
            cid,
        )

    async def _proved(self, data: bytes | str) -> bool:
        """Whether a coordinator proved ``data`` pushed to this list (acl mode)."""
        if self._client is None:
            return False
        proofs = self.settings.keys.coordinator_proofs()
        return await self._client.zscore(proofs, publish_digest(self.key, data)) is not None

    async def _dead_letter(self, data: bytes | str, error: ProtocolError) -> None:
        if self._client is None:
            return
        fields: dict[str, str | bytes] = {
            "reason": error.description,
            "code": error.code,
            "source": self.key,
            "source_id": "",
            "failed_at": utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "orig.data": data,
        }
        try:
            await self._client.xadd(
                self.settings.keys.deadletter(),
                fields,  # type: ignore[arg-type]
                maxlen=self.settings.deadletter_maxlen,
                approximate=True,
            )
        except Exception:
            log.exception("reply list %s: could not dead-letter an undecodable entry", self.key)
