"""A connection whose commands are written the moment they are submitted, answered in order.

A ``Lane`` (and the batchers on it) runs one round trip at a time: what a burst submits in one
turn of the event loop leaves in one write after the burst's turn ends. That is right for the
data plane (fewer, larger writes), wrong for a host's control entries: 100 agents started at
once spend their turn building themselves, and their announcements would reach the coordinator
only after the last one is built. Written here as each is submitted, they reach Redis, and the
coordinator, while the others are still being built: the coordinator works in parallel with the
host instead of after it.

``submit`` packs a command and writes it at once, with whatever was queued before it, unless
this turn of the event loop wrote less than ``_COALESCE`` seconds ago: then it is queued, and
goes with the next write (a later ``submit``, or the reading task's once the turn ends). A burst
made in one long turn thus writes every half millisecond or so instead of once per command (a
write is a system call), and the first command of a turn (a request, its answer) goes at
once. One task reads the replies in order and resolves each command's
future (an error reply as its ``ResponseError``). A broken connection is reconnected and the
commands not answered yet are written again (at-least-once, as ``Lane`` retries); after
``_RECONNECTS`` failed attempts they fail with the connection error. A ``READONLY`` reply (the
master was demoted) counts as a broken connection: the next one goes to the new master.

``post`` writes a command whose reply nobody wants (the answer to a ``durable=False`` request):
preceded by ``CLIENT REPLY SKIP``, Redis sends nothing back, so nothing wakes this process for
it. Each connection is asked first whether it accepts ``CLIENT REPLY`` (a user without
``+client|reply``, or a proxy, may refuse it): if not, a post is a ``submit`` whose reply is
dropped. A post is at-most-once: one not written when the connection breaks is not written
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_sdk.connection import is_cluster
from agent_sdk.lane import read_replies, write_now
from agent_sdk.tasks import cancel_and_wait

__all__ = ["WriteThrough", "direct_writer"]

log = logging.getLogger("agentbus.writethrough")

#: Reconnection attempts before the commands in hand fail, and the pause before each.
_RECONNECTS = 3
_BACKOFF = 0.05
#: A command submitted less than this long (seconds) after the last write waits for the next.
_COALESCE = 0.0005
#: Written before a posted command: Redis then sends no reply to it.
_SKIP_COMMAND: tuple[Any, ...] = ("CLIENT", "REPLY", "SKIP")
_SKIP = hiredis.pack_command(_SKIP_COMMAND)
#: The probe of ``CLIENT REPLY SKIP``: one ``PONG`` back if it is accepted, else three replies.
_PROBE = _SKIP + hiredis.pack_command(("PING",)) + hiredis.pack_command(("PING",))

_BROKEN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class _Item:
    __slots__ = ("future", "packed")

    def __init__(self, packed: bytes, future: asyncio.Future[Any] | None) -> None:
        self.packed = packed
        self.future = future  # None: posted, no reply comes


class WriteThrough:
    """One connection of ``client``'s pool (from ``start`` to ``aclose``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._conn: AbstractConnection | None = None
        #: Connected, its handshake done: a submitter may write on it (never in the middle of
        #: a (re)connection's handshake, whose replies would then be read as ours).
        self._ready = False
        #: Submitted and not answered, in order; the last ones (``_queued``) not written yet.
        self._items: deque[_Item] = deque()
        self._queued: list[_Item] = []
        #: Whether this connection accepts ``CLIENT REPLY SKIP`` (None: not asked yet).
        self._skip: bool | None = None
        self._writing = False  # the reading task is in an awaited write
        self._last_write = 0.0
        #: A write was made in this turn of the event loop (cleared by a callback of the next).
        self._wrote_this_turn = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Writes made in a submitter's turn (the rest were the reading task's).
        self.writes_now = 0

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Connect (so that the first burst is written as it is made, too) and start reading;
        if Redis cannot be reached now, the first command connects."""
        if self._task is None:
            with contextlib.suppress(*_BROKEN):
                await self._connection()
            self._task = asyncio.create_task(self._run(), name="agentbus-writethrough")

    def submit(self, command: Sequence[Any]) -> asyncio.Future[Any]:
        """Write ``command`` now (or with the next write, if the last was just now); its reply
        (a future)."""
        if self._task is None:
            raise RuntimeError("WriteThrough is not started")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        item = _Item(hiredis.pack_command(tuple(command)), future)
        self._items.append(item)
        self._queue(item)
        return future

    def post(self, command: Sequence[Any]) -> None:
        """Write ``command`` as ``submit`` does, no reply wanted (module docstring). After
        ``CLIENT REPLY SKIP`` Redis sends nothing back, an error included; where that is
        refused, an error reply or the connection failing first is logged."""
        if self._task is None:
            raise RuntimeError("WriteThrough is not started")
        if not (self._skip and self._ready):  # not known to accept it on this connection
            self.submit(command).add_done_callback(_log_post_failure)
            return
        self._queue(_Item(_SKIP + hiredis.pack_command(tuple(command)), None))

    def _queue(self, item: _Item) -> None:
        self._queued.append(item)
        conn = self._conn
        if conn is not None and self._ready and not self._writing:
            now = time.monotonic()
            if not self._wrote_this_turn or now - self._last_write >= _COALESCE:
                queued = self._queued
                data = queued[0].packed if len(queued) == 1 else b"".join(i.packed for i in queued)
                if write_now(conn, data):
                    self._queued = []
                    self._last_write = now
                    self.writes_now += 1
                    if not self._wrote_this_turn:
                        self._wrote_this_turn = True
                        asyncio.get_running_loop().call_soon(self._next_turn)
        if self._queued or item.future is not None:  # a post written now: nothing to read
            self._wake.set()

    def _next_turn(self) -> None:
        self._wrote_this_turn = False

    async def run(self, command: Sequence[Any]) -> Any:
        """Write ``command`` (``submit``) and return its reply; an error reply is raised."""
        return await self.submit(command)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._items and not self._queued:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                conn = await self._connection()
                await self._write_queued(conn)
                if not self._items:  # posts only: nothing comes back
                    continue
                (reply,) = await read_replies(conn, 1)
                if isinstance(reply, ReadOnlyError):
                    # the server was demoted (a Sentinel failover): nothing was written there;
                    # reconnecting asks the sentinels for the new master (as ``Lane`` does)
                    raise RedisConnectionError("Redis is a read-only replica now; reconnecting")
            except _BROKEN as e:
                failures += 1
                await self._broken(e, failures)
                if not self._items:  # they failed: the next command gets its own attempts
                    failures = 0
                continue
            failures = 0
            item = self._items.popleft()
            assert item.future is not None
            if item.future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, ResponseError):
                item.future.set_exception(reply)
            else:
                item.future.set_result(reply)

    async def _connection(self) -> AbstractConnection:
        conn = self._conn
        if conn is not None and self._ready and conn.is_connected:
            return conn
        self._ready = False  # submitters queue until the handshake is done
        if conn is None:
            conn = self._conn = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        if not conn.is_connected:
            await conn.connect()
            self._skip = None  # asked again; posts packed for the last connection are dropped
            self._queued = [item for item in self._queued if item.future is not None]
        if self._skip is None:
            self._skip = await _accepts_skip(conn)
        self._ready = True
        return conn

    async def _write_queued(self, conn: AbstractConnection) -> None:
        """Write what is queued, in order (what is submitted meanwhile queues behind)."""
        while self._queued:
            batch, self._queued = self._queued, []
            data = b"".join(item.packed for item in batch)
            if not write_now(conn, data):  # not writable in this turn: the public API
                self._writing = True
                try:
                    await conn.send_packed_command(data, check_health=False)
                finally:
                    self._writing = False
            self._last_write = time.monotonic()

    async def _broken(self, error: Exception, failures: int) -> None:
        """The connection broke: everything not answered is written again on a new one, or
        fails after ``_RECONNECTS`` attempts."""
        self._ready = False
        self._skip = None  # the next connection is asked again
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
        self._queued = list(self._items)  # posts not written yet are dropped (at-most-once)
        if failures > _RECONNECTS:
            log.warning("control connection lost (%s); %d command(s) failed", error,
                        len(self._items))  # fmt: skip
            items, self._items, self._queued = self._items, deque(), []
            for item in items:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(RedisConnectionError(f"connection lost: {error}"))
            return
        await asyncio.sleep(_BACKOFF * failures)

    async def aclose(self) -> None:
        """Stop reading; commands not answered fail; the connection goes back to the pool."""
        task, self._task = self._task, None
        self._ready = False
        if task is not None:
            await cancel_and_wait(task)
        items, self._items, self._queued = self._items, deque(), []
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(RedisConnectionError("the connection closed"))
        conn, self._conn = self._conn, None
        if conn is not None:
            if items:  # replies may still come: never hand it back as it is
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            await self.client.connection_pool.release(conn)


def direct_writer(client: aioredis.Redis) -> WriteThrough | None:
    """A writer for ``durable=False`` requests and their answers on ``client`` (not started:
    it takes its connection at first use); ``None`` on a cluster, where they are
    ``SPUBLISH``ed in their channel's slot through a batcher."""
    return None if is_cluster(client) else WriteThrough(client)


async def _accepts_skip(conn: AbstractConnection) -> bool:
    """Whether ``conn`` accepts ``CLIENT REPLY SKIP`` (asked with ``_PROBE``)."""
    await conn.send_packed_command(_PROBE, check_health=False)
    (first,) = await read_replies(conn, 1)
    if isinstance(first, ResponseError):  # refused: the two PONGs follow
        await read_replies(conn, 2)
        log.info("CLIENT REPLY SKIP is refused (%s): replies to posted commands are read", first)
        return False
    return True


def _log_post_failure(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.warning("a posted command failed (%s): its message was not delivered", error)
