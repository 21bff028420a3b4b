"""The pub/sub connections under a ``PubSubHub``: one on one server, one per node on a cluster.

* **One server** (or Sentinel): ``SingleLink``, one connection; channels ``SUBSCRIBE``d,
  topic patterns ``PSUBSCRIBE``d.
* **Redis Cluster**: ``ClusterLinks``. A doorbell (a channel with a hash tag, in its stream's
  slot) is a *sharded* channel: ``SSUBSCRIBE``d on the master that owns its slot, where the send
  script ``SPUBLISH``es it, so a ring costs one node, not the whole cluster bus. Channels
  without a hash tag (broadcasts, the change feed) and topic patterns are classic pub/sub
  (Redis Cluster forwards a ``PUBLISH`` to every node): one more connection, to any node. A
  host thus holds one pub/sub connection per master its agents' streams live on, plus one.

Both read the pushes straight off their connections' hiredis readers (see ``read``); on one
server they are handed to the hub as the connection receives them (``read(sink)``). Any
failure, or a shard channel the server dropped (``sunsubscribe``: its slot moved to another
node, as after a failover), is raised by ``read``: the hub then closes everything, refreshes
the slot map and subscribes again from scratch (and rings every stream, since rings may have
been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from agent_sdk.connection import is_cluster, node_client
from agent_sdk.lane import hand_over_replies, hiredis_reader, incomplete, write_now
from agent_sdk.settings import Settings

__all__ = ["ClusterLinks", "Links", "SingleLink", "open_links"]

_READ_SIZE = 65_536
_CHUNK = 1_000


async def _push_as_is(push: Any) -> Any:
    """What redis-py's default pub/sub push handler returns, without its per-message cost: it
    formats ``"Push response: " + str(push)`` for a debug log line, whether or not it is logged."""
    return push


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


async def read_pushes(pubsub: PubSub, sink: Callable[[Any], None] | None = None) -> list[Any]:
    """The pushes of the connection, as Redis sent them (``[b"message", channel, data]``,
    ``[b"pmessage", pattern, channel, data]``, ``[b"subscribe", channel, count]``, ...):
    every one already received, waiting for the socket only when none is.

    Read straight from the connection: ``PubSub.get_message`` adds a health check, a retry
    wrapper, a dict and a metrics call per message (≈ 6 µs), and even the connection's own
    ``read_response`` costs ≈ 5 µs a message in timeout and push-type checks. With hiredis
    (a dependency) the parser's reader is drained directly: one ``gets()`` per push.
    Reconnecting is ours anyway.

    With ``sink``, the pushes received from now on go to it as they arrive
    (``hand_over_replies``: no task switch per message); this returns what had arrived before,
    and then only ends with the connection.
    """
    conn = pubsub.connection
    if conn is None:
        raise ConnectionError("the pub/sub connection is closed")
    if sink is not None:
        hand_over_replies(conn, sink)
    fast = hiredis_reader(conn)
    if fast is None:  # not the parser we know: the slow path
        return [await conn.read_response(timeout=math.inf, push_request=True)]
    reader, stream = fast
    replies: list[Any] = []
    while True:
        reply = reader.gets()
        if not incomplete(reply):
            replies.append(reply)
            continue
        if replies:
            return replies
        data = await stream.read(_READ_SIZE)
        if not data:
            raise ConnectionError("the pub/sub connection was closed by the server")
        reader.feed(data)


async def _close(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]


class SingleLink:
    """One pub/sub connection to one server."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.pubsub: PubSub | None = None

    async def open(self, channels: list[str], patterns: list[str]) -> None:
        pubsub = self.pubsub = self.client.pubsub(push_handler_func=_push_as_is)
        for chunk in _chunks(channels):
            await pubsub.subscribe(*chunk)
        if patterns:
            await pubsub.psubscribe(*patterns)
        if not channels and not patterns:
            await pubsub.connect()  # type: ignore[no-untyped-call]

    async def subscribe(self, channels: list[str]) -> None:
        pubsub = self.pubsub
        if pubsub is None:
            return
        conn = pubsub.connection
        for chunk in _chunks(channels):
            # packed by hiredis and written at once: redis-py's ``subscribe`` packs in Python
            # and normalizes every name (≈ 3 % of a hosted agent's start, two channels each);
            # its list of channels is kept as it keeps it (what it would subscribe again)
            if conn is not None and write_now(conn, hiredis.pack_command(("SUBSCRIBE", *chunk))):
                pubsub.channels.update(dict.fromkeys(chunk))
                pubsub.pending_unsubscribe_channels.difference_update(chunk)
            else:
                await pubsub.subscribe(*chunk)

    async def unsubscribe(self, channels: list[str]) -> None:
        if self.pubsub is not None:
            for chunk in _chunks(channels):
                await self.pubsub.unsubscribe(*chunk)

    async def psubscribe(self, pattern: str) -> None:
        if self.pubsub is not None:
            await self.pubsub.psubscribe(pattern)

    async def punsubscribe(self, pattern: str) -> None:
        if self.pubsub is not None:
            await self.pubsub.punsubscribe(pattern)

    async def read(self, sink: Callable[[Any], None]) -> list[Any]:
        """Pushes received before ``sink`` was handed the connection; raises when it ends."""
        if self.pubsub is None:
            raise ConnectionError("the pub/sub connection is closed")
        return await read_pushes(self.pubsub, sink)

    async def close(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        await _close(pubsub)


def sharded(channel: str) -> bool:
    """Whether ``channel`` is a doorbell (a hash-tagged channel, in its stream's slot)."""
    return "{" in channel


class ClusterLinks:
    """One pub/sub connection per master owning a subscribed doorbell, plus one for classic
    channels and patterns; their pushes merged into one queue."""

    def __init__(self, client: RedisCluster, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._nodes: dict[str, tuple[aioredis.Redis, PubSub, asyncio.Task[None]]] = {}
        self._global: str | None = None
        self._pushes: asyncio.Queue[list[Any] | BaseException] = asyncio.Queue()
        self._wanted: set[str] = set()
        self._opening = asyncio.Lock()

    async def _link(self, name: str, host: str, port: int) -> PubSub:
        async with self._opening:  # agents starting together subscribe together: one link each
            held = self._nodes.get(name)
            if held is not None:
                return held[1]
            client = node_client(self.settings, host, port)
            pubsub = client.pubsub(push_handler_func=_push_as_is)
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                await _close(pubsub)
                await client.aclose()
                raise
            task = asyncio.create_task(self._pump(pubsub), name=f"agentbus-pubsub-{name}")
            self._nodes[name] = (client, pubsub, task)
            return pubsub

    async def _pump(self, pubsub: PubSub) -> None:
        try:
            while True:
                for push in await read_pushes(pubsub):
                    self._pushes.put_nowait(push)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the hub reconnects everything
            self._pushes.put_nowait(e)

    async def _global_link(self) -> PubSub:
        # the master of the change feed's slot: a node the current slot map says is serving
        # (the default node may be a master that died)
        node = self.client.get_node_from_key(self.settings.keys.events_channel())
        if node is None:
            raise ConnectionError("no cluster node serves pub/sub now")
        self._global = f"global:{node.name}"
        return await self._link(self._global, node.host, int(node.port))

    async def open(self, channels: list[str], patterns: list[str]) -> None:
        await self.client.nodes_manager.initialize()  # a fresh slot map (after a failover)
        plain = [c for c in channels if not sharded(c)]
        pubsub = await self._global_link()
        for chunk in _chunks(plain):
            await pubsub.subscribe(*chunk)
        if patterns:
            await pubsub.psubscribe(*patterns)
        await self.subscribe([c for c in channels if sharded(c)])

    async def subscribe(self, channels: list[str]) -> None:
        plain = [c for c in channels if not sharded(c)]
        if plain:
            await (await self._global_link()).subscribe(*plain)
        by_node: dict[str, list[str]] = {}
        nodes = {}
        for c in channels:
            if sharded(c):
                node = self.client.get_node_from_key(c)
                if node is None:
                    raise ConnectionError(f"no cluster node serves the slot of {c!r} now")
                nodes[node.name] = node
                by_node.setdefault(node.name, []).append(c)
        for name, chans in by_node.items():
            node = nodes[name]
            pubsub = await self._link(name, node.host, int(node.port))
            self._wanted.update(chans)
            by_slot: dict[int, list[str]] = {}
            for c in chans:  # one SSUBSCRIBE names channels of one slot only
                by_slot.setdefault(self.client.keyslot(c), []).append(c)
            for same in by_slot.values():
                await pubsub.execute_command("SSUBSCRIBE", *same)

    async def unsubscribe(self, channels: list[str]) -> None:
        plain = [c for c in channels if not sharded(c)]
        if plain and self._global in self._nodes:
            assert self._global is not None
            await self._nodes[self._global][1].unsubscribe(*plain)
        for c in channels:
            if sharded(c) and c in self._wanted:
                self._wanted.discard(c)
                node = self.client.get_node_from_key(c)
                held = self._nodes.get(node.name) if node is not None else None
                if held is not None:
                    await held[1].execute_command("SUNSUBSCRIBE", c)

    async def psubscribe(self, pattern: str) -> None:
        await (await self._global_link()).psubscribe(pattern)

    async def punsubscribe(self, pattern: str) -> None:
        if self._global in self._nodes:
            assert self._global is not None
            await self._nodes[self._global][1].punsubscribe(pattern)

    async def read(self, sink: Callable[[Any], None]) -> list[Any]:
        """The pushes of every link, from one queue (their pumps check for moved shard
        channels first, so ``sink`` is not used here)."""
        first = await self._pushes.get()
        out: list[Any] = []
        item: list[Any] | BaseException = first
        while True:
            if isinstance(item, BaseException):
                raise item
            if _kind(item) == "sunsubscribe" and len(item) > 1:
                channel = _text(item[1])
                if channel in self._wanted:  # dropped by the server: its slot moved
                    raise ConnectionError(f"the shard channel {channel} moved to another node")
            out.append(item)
            try:
                item = self._pushes.get_nowait()
            except asyncio.QueueEmpty:
                return out

    async def close(self) -> None:
        held, self._nodes = list(self._nodes.values()), {}
        self._wanted = set()
        for _, _, task in held:
            task.cancel()
        for client, pubsub, task in held:
            with contextlib.suppress(BaseException):
                await task
            await _close(pubsub)
            with contextlib.suppress(Exception):
                await client.aclose()
        self._pushes = asyncio.Queue()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _kind(push: Any) -> str:
    return _text(push[0]) if isinstance(push, list) and push else ""


Links = SingleLink | ClusterLinks


def open_links(client: aioredis.Redis, settings: Settings) -> Links:
    """The links for ``client``'s topology (not connected yet: ``open`` them)."""
    if is_cluster(client):
        return ClusterLinks(cast(RedisCluster, client), settings)
    return SingleLink(client)
