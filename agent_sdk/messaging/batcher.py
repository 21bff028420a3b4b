"""Auto-batching of outgoing commands: calls made while a round trip is in flight share the next.

``Batcher.run(op)`` issues one command (an ``EVALSHA`` of a data-plane script, or a plain command
such as ``PUBLISH``) and returns its reply. When nothing is in flight the call yields to the event
loop once (``sleep(0)``, a few µs), so that calls made in the same turn of the loop (a
``gather`` of sends) leave together; a call alone then goes out alone, exactly as a plain call.
Calls made while a round trip is in flight wait, and are then sent together as **one**
non-transactional pipeline (as ioredis' auto-pipelining does):

* **order**: commands leave in the order of the calls, and one batch completes before the next
  is written, so calls of one sender reach Redis in call order (for concurrent calls too);
* **errors stay with their call**: a command's error reply (or ``nil``) goes to its own caller
  only. A connection failure is retried (reconnect + backoff, at-least-once); one that outlasts
  the retries fails every command of that round trip (each caller sees it, as with a plain
  call). A ``NOSCRIPT`` reply (Redis restarted, ``SCRIPT FLUSH``) loads the script and runs the
  refused commands again, in order;
* a call cancelled before its batch is written is dropped from it.

Commands are not made atomic together: each keeps its own check-and-write (the script) and its
own result. Round trips go over the batcher's own ``Lane`` (one connection, no pool checkout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from agent_sdk.cluster_lane import AnyLane, open_lane

__all__ = ["Batcher", "Op"]


@dataclass(slots=True)
class Op:
    """One command: ``script`` with ``keys``/``args``, or a plain command ``args`` (no script)."""

    args: Sequence[Any]
    script: AsyncScript | None = None
    keys: Sequence[Any] = ()
    future: asyncio.Future[Any] | None = field(default=None, repr=False)
    #: The ops queued together by ``submit`` share one future (``_Group``).
    group: _Group | None = field(default=None, repr=False)
    index: int = 0

    def command(self) -> tuple[Any, ...]:
        if self.script is not None:
            return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)
        return tuple(self.args)


class _Group:
    """The replies of ops submitted together, in order; one future, set when the last is in."""

    __slots__ = ("future", "left", "results")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.left = size
        self.results: list[Any] = [None] * size

    def settle(self, index: int, result: Any) -> None:
        self.results[index] = result
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.results)


class Batcher:
    """Coalesces concurrent commands on one client; at most one round trip in flight."""

    def __init__(
        self, client: aioredis.Redis, *, join_turn: bool = True, replica_acks: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:  # fmt: skip
        """``join_turn=False``: a call made while idle goes out at once, without first letting
        the other calls of this loop turn join it (for callers that rarely come together, such
        as the replies of an agent's handlers, where it would only add latency).
        ``replica_acks``: each round trip ends with ``WAIT replica_acks`` (at most
        ``replica_timeout`` seconds) so a call returns once its write is on that many
        replicas."""
        self.client = client
        self.join_turn = join_turn
        self._wait = (replica_acks, round(replica_timeout * 1000)) if replica_acks else None
        self.lane: AnyLane = open_lane(client)
        self._pending: list[Op] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        #: Round trips made, and commands sent in them (for tests and tuning).
        self.flushes = 0
        self.commands = 0

    async def run(self, op: Op) -> Any:
        """Send ``op`` (now when idle, else with the next batch) and return its reply."""
        if not self._busy:
            self._busy = True
            if self.join_turn:
                try:
                    await asyncio.sleep(0)  # calls made in this same turn of the loop join us
                except BaseException:
                    self._after_flush()
                    raise
            if self._pending:  # they did: one batch for all, in call order, sent by the drainer
                op.future = asyncio.get_running_loop().create_future()
                self._pending.insert(0, op)
                self._task = asyncio.create_task(self._drain(), name="agentbus-batcher")
                return await op.future
            try:
                self.flushes += 1
                self.commands += 1
                (result,) = await self._round_trip([op])
            finally:
                self._after_flush()
            if isinstance(result, BaseException):
                raise result
            return result
        op.future = asyncio.get_running_loop().create_future()
        self._pending.append(op)
        return await op.future

    async def run_many(self, ops: Sequence[Op]) -> list[Any]:
        """Send ``ops`` together (in one pipeline when idle, else with the next batch, in order)
        and return their replies in order; the first error reply is raised."""
        if not ops:
            return []
        if not self._busy:  # nothing to join: the batch is already one
            self._busy = True
            try:
                self.flushes += 1
                self.commands += len(ops)
                results = await self._round_trip(list(ops))
            finally:
                self._after_flush()
        else:
            loop = asyncio.get_running_loop()
            futures: list[asyncio.Future[Any]] = []
            for op in ops:
                op.future = fut = loop.create_future()
                futures.append(fut)
            self._pending.extend(ops)
            try:  # queued together, flushed together: the last settles with the rest
                await futures[-1]
            except asyncio.CancelledError:
                for fut in futures:
                    fut.cancel()
                raise
            except Exception:
                pass  # each op's own outcome is read below
            results = [fut.exception() or fut.result() for fut in futures]
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def submit(self, ops: Sequence[Op]) -> asyncio.Future[list[Any]]:
        """Queue ``ops`` for the next round trip without waiting: one future of their replies,
        in order, an error reply in its place (as ``gather(..., return_exceptions=True)``). No
        task and one future per call: what is queued in one turn of the event loop leaves
        together, after that turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not ops:
            future.set_result([])
            return future
        group = _Group(future, len(ops))
        for i, op in enumerate(ops):
            op.group, op.index = group, i
        self._pending.extend(ops)
        if not self._busy:
            self._busy = True
            self._task = loop.create_task(self._drain(), name="agentbus-batcher")
        return future

    async def aclose(self) -> None:
        await self.lane.aclose()

    def _after_flush(self) -> None:
        if self._pending:
            self._task = asyncio.create_task(self._drain(), name="agentbus-batcher")
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [op for op in self._pending if not _abandoned(op)]
                self._pending = []
                if batch:
                    await self._flush(batch)
        finally:
            self._task = None
            self._busy = False
            # A cancelled drain (loop shutting down) must not leave callers waiting forever.
            for op in self._pending:
                _settle(op, RuntimeError("the batcher stopped"))
            self._pending = []

    async def _flush(self, batch: list[Op]) -> None:
        self.flushes += 1
        self.commands += len(batch)
        try:
            results = await self._round_trip(batch)
        except Exception as e:  # the round trip failed: every command of it failed
            for op in batch:
                _settle(op, e)
            return
        except BaseException:
            for op in batch:
                if op.future is not None:
                    op.future.cancel()
                elif op.group is not None:
                    op.group.future.cancel()
            raise
        for op, res in zip(batch, results, strict=True):
            _settle(op, res)

    async def _round_trip(self, batch: list[Op]) -> list[Any]:
        results = await self.lane.execute([op.command() for op in batch], wait=self._wait)
        retry = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if retry:
            for script in {id(batch[i].script): batch[i].script for i in retry}.values():
                assert script is not None
                script.sha = await self.client.script_load(script.script)
            again = await self.lane.execute([batch[i].command() for i in retry], wait=self._wait)
            for i, r in zip(retry, again, strict=True):
                results[i] = r
        return results


def _abandoned(op: Op) -> bool:
    """Its caller no longer waits (cancelled): not sent."""
    if op.group is not None:
        return op.group.future.done()
    return op.future is not None and op.future.done()


def _settle(op: Op, result: Any) -> None:
    if op.group is not None:
        op.group.settle(op.index, result)
        return
    fut = op.future
    if fut is None or fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
