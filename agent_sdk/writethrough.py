"""A connection whose commands are written the moment they are submitted, answered in order.

A ``Lane`` (and the batchers on it) runs one round trip at a time: what a burst submits in one
turn of the event loop leaves in one write after the burst's turn ends. That is right for the
data plane (fewer, larger writes), wrong for a host's control entries: 100 agents started at
once spend their turn building themselves, and their announcements would reach the coordinator
only after the last one is built. Written here as each is submitted, they reach Redis, and the
coordinator, while the others are still being built: the coordinator works in parallel with the
host instead of after it.

``submit`` packs a command and writes it at once, with whatever was queued before it, unless
the last write was less than ``_COALESCE`` seconds ago: then it is queued, and goes with the
next write (a later ``submit``, or the reading task's once the turn ends). A burst thus writes
every half millisecond or so instead of once per command (a write is a system call), and a
command alone goes at once. One task reads the replies in order and resolves each command's
future (an error reply as its ``ResponseError``). A broken connection is reconnected and the
commands not answered yet are written again (at-least-once, as ``Lane`` retries); after
``_RECONNECTS`` failed attempts they fail with the connection error. A ``READONLY`` reply (the
master was demoted) counts as a broken connection: the next one goes to the new master.
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

from agent_sdk.lane import read_replies, write_now
from agent_sdk.tasks import cancel_and_wait

__all__ = ["WriteThrough"]

log = logging.getLogger("agentbus.writethrough")

#: Reconnection attempts before the commands in hand fail, and the pause before each.
_RECONNECTS = 3
_BACKOFF = 0.05
#: A command submitted less than this long (seconds) after the last write waits for the next.
_COALESCE = 0.0005

_BROKEN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class _Item:
    __slots__ = ("future", "packed")

    def __init__(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        self.packed = packed
        self.future = future


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
        self._writing = False  # the reading task is in an awaited write
        self._last_write = 0.0
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
        self._queued.append(item)
        conn = self._conn
        if conn is not None and self._ready and not self._writing:
            now = time.monotonic()
            if now - self._last_write >= _COALESCE:
                queued = self._queued
                data = queued[0].packed if len(queued) == 1 else b"".join(i.packed for i in queued)
                if write_now(conn, data):
                    self._queued = []
                    self._last_write = now
                    self.writes_now += 1
        self._wake.set()
        return future

    async def run(self, command: Sequence[Any]) -> Any:
        """Write ``command`` (``submit``) and return its reply; an error reply is raised."""
        return await self.submit(command)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                conn = await self._connection()
                await self._write_queued(conn)
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
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
        self._queued = list(self._items)
        if failures > _RECONNECTS:
            log.warning("control connection lost (%s); %d command(s) failed", error,
                        len(self._items))  # fmt: skip
            items, self._items, self._queued = self._items, deque(), []
            for item in items:
                if not item.future.done():
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
            if not item.future.done():
                item.future.set_exception(RedisConnectionError("the control connection closed"))
        conn, self._conn = self._conn, None
        if conn is not None:
            if items:  # replies may still come: never hand it back as it is
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            await self.client.connection_pool.release(conn)
