"""A lane: one Redis connection held by one caller, for one round trip at a time.

On loopback, checking a connection out of redis-py's pool and back in costs more than the round
trip itself (≈ 55 µs against ≈ 25 µs for a ``PING``, measured on the bench machine: the
checkout runs a lock, a timeout and a readiness probe of the socket, the release another lock).
The hot paths of agentbus are sequential by construction: the send batcher (one round trip in
flight), an agent's reader (one ``XREADGROUP`` at a time), the reply router (one ``BRPOP``), the
ack loop. Each holds a ``Lane``: commands are packed by hiredis, written in one write, and their
replies read straight off the connection.

* **Replies are raw RESP** (as Redis sent them, decoded to ``str`` only if the client decodes):
  redis-py's response callbacks are not applied, so callers parse ``XREADGROUP`` and the like.
* **Errors stay with their command**: an error reply comes back as its ``ResponseError`` in the
  result list (``execute``) or is raised (``call``).
* **Connection failures are retried** with the client's own ``Retry`` policy (reconnect +
  backoff), as a plain redis-py call is: a command that had reached Redis may be applied twice
  (at-least-once). A ``READONLY`` reply (the master was demoted: a Sentinel failover) counts as
  one: the next connection goes to the new master.
* On a **Redis Cluster** use ``agent_sdk.cluster_lane.open_lane``: the same contract, per node.
* A call **cancelled** mid-flight drops the connection (its reply may still come); the next call
  reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

__all__ = [
    "UNREPLICATED_HOLD",
    "Lane",
    "hand_over_replies",
    "hiredis_reader",
    "incomplete",
    "read_replies",
    "write_now",
]

Command = Sequence[Any]
_READ_SIZE = 65_536

try:  # what redis-py's hiredis reader returns while a reply is incomplete
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - a redis-py without it: the slow path
    _NOT_ENOUGH_DATA = None


def incomplete(reply: Any) -> bool:
    """What the hiredis reader's ``gets()`` returns while no whole reply is buffered."""
    return reply is _NOT_ENOUGH_DATA or reply is False


def hiredis_reader(conn: AbstractConnection) -> tuple[Any, Any] | None:
    """The connection parser's hiredis reader and stream, or None when the parser is not the
    one we know (another redis-py version, no hiredis): callers then use ``read_response``."""
    parser = getattr(conn, "_parser", None)
    reader, stream = getattr(parser, "_reader", None), getattr(parser, "_stream", None)
    if reader is None or stream is None or _NOT_ENOUGH_DATA is None:
        return None
    return reader, stream


def hand_over_replies(conn: AbstractConnection, sink: Callable[[Any], None]) -> bool:
    """From now on, give each reply ``conn`` receives to ``sink`` as the transport receives it
    (in the event loop's read callback: no task woken per reply); what was received before
    stays for the usual reads, which from now on end only with the connection (EOF, or the
    error of a reply hiredis cannot parse). For a connection only we read (pub/sub); False
    when its parser is not the hiredis one we know: read it as before then.

    ``sink`` must not raise: it runs inside the transport's callback."""
    fast = hiredis_reader(conn)
    if fast is None:
        return False
    reader, stream = fast
    if getattr(stream, "_agentbus_sink", None) is sink:
        return True

    def feed_data(data: bytes) -> None:
        replies: list[Any] = []
        error: Exception | None = None
        try:
            reader.feed(data)
            while not incomplete(reply := reader.gets()):
                replies.append(reply)
        except Exception as e:  # unparsable: the connection is done for
            error = e
        for reply in replies:
            sink(reply)
        if error is not None:
            stream.set_exception(RedisConnectionError(f"unreadable reply from Redis: {error}"))

    stream.feed_data = feed_data  # the protocol calls it for every chunk it receives
    stream._agentbus_sink = sink
    return True


def write_now(conn: AbstractConnection, data: bytes) -> bool:
    """Write ``data`` on ``conn`` now, in the caller's turn of the event loop (the transport
    buffers what the socket does not take at once); False when the connection is not one that
    can be written this way (closed, or another redis-py): send it with
    ``send_packed_command`` then."""
    writer = getattr(conn, "_writer", None)
    if writer is None or writer.is_closing():
        return False
    writer.write(data)
    return True


async def read_replies(conn: AbstractConnection, n: int) -> list[Any]:
    """The next ``n`` replies of ``conn``; an error reply as its ``ResponseError`` (a value).

    Straight off the hiredis reader when there is one: ``read_response`` costs ≈ 2-5 µs a reply
    in timeout, push and error checks, more than parsing it.
    """
    fast = hiredis_reader(conn)
    replies: list[Any] = []
    if fast is None:
        for _ in range(n):
            try:
                replies.append(await conn.read_response())
            except ResponseError as e:
                replies.append(e)
        return replies
    reader, stream = fast
    while len(replies) < n:
        reply = reader.gets()
        if incomplete(reply):
            try:
                data = await stream.read(_READ_SIZE)
            except OSError as e:  # e.g. reset by peer: redis-py's own reads raise it as this,
                raise RedisConnectionError(f"Error reading from Redis: {e}") from e  # retried
            if not data:
                raise RedisConnectionError("Connection closed by server.")
            reader.feed(data)
            continue
        if isinstance(reply, RedisConnectionError):
            raise reply
        replies.append(reply)
    return replies


#: Seconds a server whose ``WAIT`` timed out is written without one (see ``Lane.execute``).
UNREPLICATED_HOLD = 5.0


def _short(reply: Any, wanted: int) -> int:
    """1 when a ``WAIT`` reply says fewer than ``wanted`` replicas confirmed, else 0."""
    return 1 if not isinstance(reply, int) or reply < wanted else 0


class Lane:
    """One connection checked out of ``client``'s pool (on first use, until ``aclose``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._conn: AbstractConnection | None = None
        self._busy = False
        #: Rounds whose ``WAIT`` timed out before enough replicas confirmed.
        self.under_replicated = 0
        self._alone_until = 0.0

    async def _connection(self) -> AbstractConnection:
        # Checked out once and kept: closing the client (its pool) closes it too.
        if self._conn is None:
            self._conn = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return self._conn

    async def call(self, *args: Any) -> Any:
        """Run one command; its raw reply, or its error reply raised."""
        (reply,) = await self.execute((args,))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute(
        self, commands: Sequence[Command], *, wait: tuple[int, int] | None = None
    ) -> list[Any]:
        """Run ``commands`` as one write; their raw replies in order (error replies as values).

        ``wait=(replicas, timeout_ms)`` follows them with ``WAIT replicas timeout_ms`` on the
        same connection: the call returns once that many replicas hold what they wrote (or the
        timeout passed: ``under_replicated`` counts those rounds, and the next
        ``UNREPLICATED_HOLD`` seconds go without ``WAIT``: the replica is gone)."""
        if self._busy:
            raise RuntimeError("a Lane runs one round trip at a time")
        self._busy = True
        try:
            conn = await self._connection()
            if wait is not None and self._alone_until > time.monotonic():
                wait = None
            if wait is not None:
                commands = [*commands, ("WAIT", *wait)]
            packed = b"".join([hiredis.pack_command(tuple(c)) for c in commands])

            async def attempt() -> list[Any]:
                if not conn.is_connected:  # connect(), not the send's own: under Sentinel it
                    # asks the sentinels where the master is now
                    await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(packed, check_health=False)
                replies = await read_replies(conn, len(commands))
                if any(isinstance(r, ReadOnlyError) for r in replies):
                    # the server was demoted (a Sentinel failover): nothing was written there;
                    # reconnecting asks the sentinels for the new master
                    raise RedisConnectionError("Redis is a read-only replica now; reconnecting")
                return replies

            async def failed(error: Exception) -> None:
                await conn.disconnect()

            retry: Retry = conn.retry or Retry(NoBackoff(), 0)
            try:
                replies = await retry.call_with_retry(attempt, failed)
                if wait is not None and _short(replies.pop(), wait[0]):
                    self.under_replicated += 1
                    self._alone_until = time.monotonic() + UNREPLICATED_HOLD
                return replies
            except BaseException:
                await conn.disconnect()  # replies may be left unread: never reuse it as it is
                raise
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Hand the connection back to the client's pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.client.connection_pool.release(conn)
