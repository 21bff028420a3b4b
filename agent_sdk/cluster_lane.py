"""A lane on a Redis Cluster: the ``Lane`` contract (raw replies, in order, one round trip at a
time) over the nodes that own the commands' keys.

The commands of one ``execute`` are grouped by the master that owns each command's key slot;
each group is written as one pipeline on a connection this lane holds to that node, and the
groups go out in parallel, so a host's pipelined reads and claims cost one round trip per node
they need, not one per stream. Within a node the order of the calls is kept; between nodes
there is none (commands of different slots are independent: agentbus never relies on an
order across slots).

Every command must name its key (the first key decides the node): ``EVALSHA``/``EVAL`` with at
least one key, ``XREADGROUP``/``XREAD`` (the first stream), ``XGROUP``/``XINFO`` (the key after
the subcommand), ``BLMPOP``/``LMPOP`` (the first key after the timeout and count), and any
command whose first argument is a key or a shard channel (``XACK``, ``BRPOP``, ``SPUBLISH``,
...).

Failures:

* a **redirection** (``MOVED``, ``ASK``), ``TRYAGAIN``, ``CLUSTERDOWN`` or ``READONLY`` reply means
  the command was not applied: the slot map is refreshed and the command sent again where it
  now belongs;
* a **connection failure** drops that node's connection and sends its commands again after a
  backoff and a slot-map refresh (a master that died is replaced by its replica after the
  cluster's node timeout): at-least-once, as ``Lane``;
* after ``attempts`` tries the last error is raised (redis-py's ``ConnectionError``).

With ``wait`` (``replica_acks``) each node's commands end with a ``WAIT``; a node whose ``WAIT``
timed out (its replica is gone: it was just promoted) is written without one for
``UNREPLICATED_HOLD`` seconds, then tried again, so a lost replica costs one timeout per node
every few seconds instead of one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_sdk.connection import ACCESS_ERRORS
from agent_sdk.lane import UNREPLICATED_HOLD, Command, Lane, read_replies

__all__ = ["AnyLane", "ClusterLane", "command_key", "open_lane"]

_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError)
_FAILURES = (RedisConnectionError, RedisTimeoutError, OSError)
_STREAMS = {"XREADGROUP", "XREAD"}
_SCRIPTS = {"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"}
#: Where the key is in commands whose first argument is not it: ``XGROUP CREATE key ...``,
#: ``XINFO GROUPS key``, ``LMPOP numkeys key ...``, ``BLMPOP timeout numkeys key ...``
_KEY_AT = {"XGROUP": 2, "XINFO": 2, "OBJECT": 2, "MEMORY": 2, "LMPOP": 2, "ZMPOP": 2,
           "BLMPOP": 3, "BZMPOP": 3}  # fmt: skip


def _name(value: Any) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).upper()


def command_key(command: Command) -> Any:
    """The key (or shard channel) that decides where ``command`` runs; None if it has none."""
    name = _name(command[0])
    if name in _SCRIPTS:
        return command[3] if int(command[2]) > 0 else None
    if name in _STREAMS:
        for i, arg in enumerate(command):
            if _name(arg) == "STREAMS":
                return command[i + 1]
        return None
    if name in _KEY_AT:
        return command[_KEY_AT[name]] if len(command) > _KEY_AT[name] else None
    return command[1] if len(command) > 1 else None


class ClusterLane:
    """One held connection per node of ``client`` (a ``RedisCluster``), used one round trip at
    a time."""

    def __init__(self, client: RedisCluster, *, attempts: int = 10, max_backoff: float = 1.0):
        self.client = client
        self.attempts = attempts
        self.max_backoff = max_backoff
        self._conns: dict[str, tuple[ClusterNode, Connection]] = {}
        self._busy = False
        self._wait: tuple[int, int] | None = None
        self._alone: dict[str, float] = {}  # node -> until when it is written without WAIT
        #: Slot-map refreshes this lane asked for (for tests).
        self.refreshes = 0
        #: Node round trips whose ``WAIT`` timed out before enough replicas confirmed.
        self.under_replicated = 0

    def _node(self, command: Command) -> ClusterNode:
        key = command_key(command)
        node = self.client.get_default_node() if key is None else self.client.get_node_from_key(key)
        if node is None:
            raise RedisConnectionError(f"no cluster node serves {command_key(command)!r} now")
        return node

    async def call(self, *args: Any) -> Any:
        """Run one command; its raw reply, or its error reply raised."""
        (reply,) = await self.execute((args,))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute(
        self, commands: Sequence[Command], *, wait: tuple[int, int] | None = None
    ) -> list[Any]:
        """Run ``commands``, grouped by node; their raw replies in call order. ``wait`` as
        ``Lane.execute``: one ``WAIT`` after each node's commands."""
        if self._busy:
            raise RuntimeError("a Lane runs one round trip at a time")
        self._busy = True
        self._wait = wait
        try:
            return await self._execute(commands)
        finally:
            self._busy = False

    async def _execute(self, commands: Sequence[Command]) -> list[Any]:
        if not self.client.nodes_manager.slots_cache:
            await self.client.initialize()
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        last: BaseException = RedisConnectionError("the cluster did not answer")
        for attempt in range(self.attempts + 1):
            groups: dict[ClusterNode, list[int]] = {}
            try:
                for i in todo:
                    groups.setdefault(self._node(commands[i]), []).append(i)
            except Exception as e:  # a slot nobody serves (failover under way)
                last = e
            else:
                outcomes = await asyncio.gather(
                    *(self._on_node(n, [commands[i] for i in idx]) for n, idx in groups.items()),
                    return_exceptions=True,
                )
                todo = []
                for idx, out in zip(groups.values(), outcomes, strict=True):
                    if isinstance(out, BaseException):
                        if not isinstance(out, _FAILURES) or isinstance(out, ACCESS_ERRORS):
                            raise out  # a refused credential is not a network problem
                        last = out
                        todo.extend(idx)
                        continue
                    for i, reply in zip(idx, out, strict=True):
                        if isinstance(reply, _REDIRECTS):
                            last = reply
                            todo.append(i)
                        else:
                            results[i] = reply
                if not todo:
                    return results
                todo.sort()  # keep each node's commands in call order
            if attempt == self.attempts:
                break
            await asyncio.sleep(min(self.max_backoff, 0.05 * 2**attempt))
            await self._refresh()
        if isinstance(last, _FAILURES):
            raise last
        raise RedisConnectionError(f"the cluster did not serve a command: {last}") from last

    async def _refresh(self) -> None:
        self.refreshes += 1
        with contextlib.suppress(Exception):  # every node unreachable now: the next try says
            await self.client.nodes_manager.initialize()

    async def _on_node(self, node: ClusterNode, commands: list[Command]) -> list[Any]:
        held = self._conns.get(node.name)
        if held is None or held[0] is not node:
            if held is not None:
                await self._drop(node.name)
            held = (node, node.acquire_connection())
            self._conns[node.name] = held
        conn = held[1]
        wait = self._wait
        if wait is not None and self._alone.get(node.name, 0.0) > time.monotonic():
            wait = None  # its last WAIT timed out: no replica now, do not stall every call
        if wait is not None:
            commands = [*commands, ("WAIT", *wait)]
        packed = b"".join([hiredis.pack_command(tuple(c)) for c in commands])
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies = await read_replies(conn, len(commands))
            if wait is not None:
                reply = replies.pop()
                if not isinstance(reply, int) or reply < wait[0]:
                    self.under_replicated += 1
                    self._alone[node.name] = time.monotonic() + UNREPLICATED_HOLD
            return replies
        except BaseException:
            await self._drop(node.name)  # replies may be left unread: never reuse it
            raise

    async def _drop(self, name: str) -> None:
        held = self._conns.pop(name, None)
        if held is not None:
            node, conn = held
            await conn.disconnect()
            node.release(conn)

    async def aclose(self) -> None:
        """Hand every held connection back to its node; one held to a node the client no
        longer knows (dropped from the slot map by a failover) is closed instead: nobody would
        ever close it in that node's pool."""
        known = self.client.nodes_manager.nodes_cache
        for name, (node, conn) in list(self._conns.items()):
            del self._conns[name]
            if known.get(name) is not node:
                await conn.disconnect()
            node.release(conn)


AnyLane = Lane | ClusterLane


def open_lane(client: Any) -> AnyLane:
    """A ``ClusterLane`` for a cluster client, a ``Lane`` otherwise."""
    if isinstance(client, RedisCluster):
        return ClusterLane(client)
    return Lane(client)
