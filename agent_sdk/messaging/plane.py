"""``Plane``: the data plane a host shares among the agents it carries.

One of each, whatever the number of agents: the scripts, the send batcher (one connection), the
reply batcher (one connection), the pub/sub hub (one connection: broadcasts, doorbells, direct
requests and topic subscriptions) and the reader (one connection for reads and claims, one for
acks; see ``agent_sdk.messaging.reader``). A broadcast is decoded once and handed to every
agent it is for. ``start``/``stop`` are idempotent; an agent's ``Messaging`` joins and leaves
it.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from agent_sdk.messaging.batcher import Batcher
from agent_sdk.messaging.consumer import Consumer
from agent_sdk.messaging.reader import Reader
from agent_sdk.messaging.scripts import Scripts
from agent_sdk.messaging.topics import ChannelCallback, PubSubHub
from agent_sdk.settings import Settings
from agent_sdk.writethrough import WriteThrough, direct_writer
from schemas.envelope import Envelope, decode_json
from schemas.errors import ProtocolError

__all__ = ["Plane"]

log = logging.getLogger("agentbus.messaging")


class Plane:
    """Connections and loops shared by every agent of a host."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, *, direct: WriteThrough | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.scripts = Scripts.register(client)
        acks, timeout = settings.replica_acks, settings.replica_ack_timeout
        self.send_batcher = Batcher(client, replica_acks=acks, replica_timeout=timeout)
        #: Replies of concurrent handlers share round trips; a reply leaves as soon as it can.
        self.reply_batcher = Batcher(
            client, join_turn=False, replica_acks=acks, replica_timeout=timeout
        )
        #: ``durable=False`` requests and their answers (None on a cluster): the host's writer
        #: (``Host.writer``), or one of its own, which takes its connection at first use.
        self._owns_direct = direct is None
        self.direct = direct or direct_writer(client)
        self.hub = PubSubHub(client, settings)
        self.reader = Reader(client, settings, self.scripts, self.hub, self.send_batcher)
        #: Broadcast channel -> the agents it reaches here.
        self._audience: dict[str, dict[Consumer, None]] = {}
        #: Direct-request channel -> its agent.
        self._direct: dict[str, Consumer] = {}
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.hub.start()
        await self.reader.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.reader.stop()
        await self.hub.stop()
        await self.send_batcher.aclose()
        await self.reply_batcher.aclose()
        if self.direct is not None and self._owns_direct:
            await self.direct.aclose()

    def prepare(self, consumer: Consumer) -> None:
        """Begin ``join`` without waiting (the plane runs): its groups made and its channels
        subscribed together with those of the agents starting in the same turn, e.g. while
        its announcement travels. Nothing reaches it before ``join``."""
        if not self._started or consumer.joining is not None or consumer.accepting:
            return
        keys = self.settings.keys
        channels = [keys.broadcast_channel()]
        if consumer.role is not None:
            channels.append(keys.broadcast_channel(consumer.role))
        new: dict[str, ChannelCallback] = {}
        for channel in channels:
            audience = self._audience.setdefault(channel, {})
            if not audience:
                new[channel] = self._on_broadcast
            audience[consumer] = None
        if not self.settings.secure:  # direct requests carry no proof: not in acl mode
            direct = keys.direct_channel(consumer.name)
            self._direct[direct] = consumer
            new[direct] = self._on_direct
        consumer.prepare(new)  # subscribed together with its doorbells

    async def join(self, consumer: Consumer) -> None:
        """Hand ``consumer`` its broadcasts and its streams from now on."""
        await self.start()
        self.prepare(consumer)
        await consumer.start()

    async def leave(self, consumer: Consumer, grace: float | None = None) -> None:
        """Stop ``consumer`` (drained for ``grace`` seconds) and its broadcasts."""
        gone = []
        for channel, audience in list(self._audience.items()):
            if audience.pop(consumer, 0) is None and not audience:
                del self._audience[channel]
                gone.append(channel)
        direct = self.settings.keys.direct_channel(consumer.name)
        if self._direct.get(direct) is consumer:
            del self._direct[direct]
            gone.append(direct)
        await consumer.stop(grace)
        await consumer.abandon()  # prepared, never started
        await self.hub.unlisten(gone)

    def _on_direct(self, channel: str, data: bytes) -> None:
        consumer = self._direct.get(channel)
        if consumer is None:
            return
        try:
            env = decode_json(data)
        except ProtocolError as e:
            log.warning("dropping an undecodable request on %s: %s", channel, e.description)
            return
        consumer.handle_direct(env, channel)

    def _on_broadcast(self, channel: str, data: bytes) -> None:
        try:
            env = decode_json(data)
        except ProtocolError as e:
            log.warning("dropping an undecodable message on %s: %s", channel, e.description)
            return
        verifier = self.hub.verifier
        if verifier is None:
            self._deliver(channel, env)
        else:  # acl mode: handled once its sender's proof is found (agent_sdk.messaging.verify)
            verifier.submit(channel, data, env, lambda: self._deliver(channel, env))

    def _deliver(self, channel: str, env: Envelope) -> None:
        for consumer in list(self._audience.get(channel, ())):
            consumer.handle_live(env, channel)
