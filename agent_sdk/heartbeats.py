"""The heartbeat loop of a host: one control entry per interval for every agent it carries.

Every ``heartbeat_interval`` the loop looks at each member (and at once at the members
``wake(member)`` names: a new member, a status change, a re-announcement done; only those go out
early, so one agent of a 10,000-agent host changing its status does not send the whole lease):

* lost its name: skipped (it is stopping);
* asked to announce again (``reannounce`` from the coordinator) or stalled (its last heartbeat
  that reached Redis was sent more than a TTL ago: the process was frozen, its loop blocked, or
  Redis unreachable, so the registry may have expired it): a re-announcement is started for it
  in a task of its own (one at a time per member), and it is not heartbeated meanwhile;
* otherwise it is due: all due members go out in ONE entry (one per ``LEASE_MAX_BEATS``
  members for a larger host), a plain ``heartbeat`` when the host
  carries a single agent whose own reply list (named after it) is the host's (a lone ``Agent``:
  the wire of protocol 1), else a ``lease`` (docs/PROTOCOL.md, "Hosts") whose ``reply_to`` is
  the host's reply list: a member whose status and load the registry already has is renewed by
  name (``renew``: the host's lease holds it), any other goes as a full beat; every entry says
  how many members the host carries (``members``, protocol 2.2: the lease's one deadline is
  extended without checking the names when the lease holds as many).
  When Redis took the entry, every member in it renews its fence from the time it was sent.

The loop never dies on an error: it logs, backs off and continues (``agent_sdk.retry``); a
re-announcement that fails is tried again the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
import redis.asyncio as aioredis

from agent_sdk.membership import Membership, xadd_control
from agent_sdk.messaging.codec import Outgoing
from agent_sdk.retry import keep_running, retrying
from agent_sdk.settings import Settings
from agent_sdk.tasks import cancel_all, cancel_and_wait
from agent_sdk.writethrough import WriteThrough
from schemas.agent import ControlType
from schemas.envelope import Kind

__all__ = ["LEASE_MAX_BEATS", "Heartbeats"]

#: Beats per ``lease`` entry: a larger host writes several entries per interval. The coordinator
#: applies one entry in one script call, which blocks the registry's Redis meanwhile: 10,000
#: beats in one call held it 40-360 ms on a loaded 2-core machine (docs/SCALING.md), 1,000 keep
#: every other registry call (discovery, the sweeper) waiting a tenth of that.
LEASE_MAX_BEATS = 1000

#: Members looked at per turn of the event loop in a round over all of them: a host of 10,000
#: yields between chunks instead of holding its loop 10-16 ms for each pass (measured on a slow
#: 2-core machine: every handler and reply of the host waited that long once a second).
_CHUNK = 500

log = logging.getLogger("agentbus.heartbeats")


class _Report:
    """Members whose heartbeat ``send_now`` sends in one go, and its outcome."""

    __slots__ = ("done", "members")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.members: dict[Membership, None] = {}
        self.done = done


class Heartbeats:
    """Heartbeats every member of one host. ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        *,
        host: str,
        reply_to: str,
        lease: str | None = None,
        writer: WriteThrough | None = None,
    ) -> None:
        self.client = client
        #: The host's control connection (its entries written at once), if it has one.
        self.writer = writer
        self.settings = settings
        self.host = host
        self.reply_to = reply_to
        #: The host's lease id: members announced under it are renewed by name (``renew``).
        self.lease = lease
        self.members: dict[str, Membership] = {}
        self._reannouncing: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        #: Members to heartbeat before the interval is up (``wake``).
        self._urgent: dict[str, Membership] = {}
        self._next_full = 0.0
        self._task: asyncio.Task[None] | None = None
        #: Entries written (a ``heartbeat`` or a ``lease``): for tests and stats.
        self.sent = 0
        self._send_lock = asyncio.Lock()
        #: The next ``send_now`` report (members joining it until it is sent).
        self._report: _Report | None = None
        self._report_lock = asyncio.Lock()
        self._reports: set[asyncio.Task[None]] = set()

    def add(self, member: Membership, *, urgent: bool = True) -> None:
        """Carry ``member``: with ``urgent``, its first heartbeat goes out at once (with the
        other members added meanwhile, not with every member of the host); else with the loop's
        next round."""
        self.members[member.card.name] = member
        if urgent:
            self.wake(member)

    def remove(self, member: Membership) -> None:
        """Stop carrying ``member`` (a re-announcement under way is left to finish)."""
        if self.members.get(member.card.name) is member:
            del self.members[member.card.name]

    async def discard(self, member: Membership) -> None:
        """Stop carrying ``member`` and wait for its re-announcement, if one is under way."""
        self.remove(member)
        task = self._reannouncing.pop(member.card.name, None)
        if task is not None:
            await cancel_and_wait(task)

    def wake(self, member: Membership) -> None:
        """Heartbeat ``member`` now (a status change, a new member, a re-announcement done):
        the members woken together share one entry; the others wait for the interval (a host
        of 10,000 agents does not send them all because one changed)."""
        self._urgent[member.card.name] = member
        self._wake.set()

    async def send_now(self, member: Membership) -> None:
        """Heartbeat ``member`` now and return once Redis has it (its ``draining`` status
        before it leaves, which a wake-up could lose to the stop that follows). Members asking
        while a report is under way go together in the next one: a host of 10,000 stopping
        reports its agents in a few entries, not in 10,000 round trips one after the other.
        Each report is sent by a task of its own once the one before is out; its members only
        wait for it (a member giving up leaves the others' report alone, and none queues on a
        lock: 10,000 hand-overs of one, one per turn of a busy event loop, outlasted the 5 s
        bound of the draining report)."""
        report = self._report
        if report is None:
            report = self._report = _Report(asyncio.get_running_loop().create_future())
            task = asyncio.create_task(self._send_report(report), name="agentbus-report")
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
        report.members[member] = None
        await asyncio.shield(report.done)

    async def _send_report(self, report: _Report) -> None:
        try:
            async with self._report_lock:  # one report at a time
                self._report = None  # who asks from now on goes in the next one
                attempt = time.monotonic()
                await self._send(list(report.members))
        except BaseException as e:
            if self._report is report:
                self._report = None
            # its members learn it failed (a cancelled report: as not answered)
            report.done.set_exception(e if isinstance(e, Exception) else TimeoutError())
            report.done.exception()  # retrieved: the members, if any, raise it
            if not isinstance(e, Exception):
                raise
            return
        for m in report.members:
            m.beat_sent(attempt)
        report.done.set_result(None)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"agentbus-heartbeats:{self.host}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        tasks = [*self._reannouncing.values(), *self._reports]
        self._reannouncing.clear()
        await cancel_all(tasks)

    # -- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        await keep_running(
            f"{self.host}: heartbeat", self._beat, log=log, cap=self.settings.retry_max_backoff
        )

    async def _beat(self) -> None:
        """Wait for the interval, then heartbeat every member that is due; woken before it
        is up, heartbeat only the members woken."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self._next_full - time.monotonic())):
                await self._wake.wait()
        self._wake.clear()
        attempt = time.monotonic()
        urgent, self._urgent = self._urgent, {}
        if attempt >= self._next_full:
            self._next_full = attempt + self.settings.heartbeat_interval
            due = await self._due(attempt, self.members)
        else:
            due = await self._due(attempt, urgent)
        if not due:
            return
        await self._send(due)
        # when it was sent, not when Redis answered: a stall may sit in between
        for i, member in enumerate(due):
            if i and not i % _CHUNK:
                await asyncio.sleep(0)
            member.beat_sent(attempt)

    async def _due(self, now: float, among: dict[str, Membership]) -> list[Membership]:
        """The members of ``among`` to heartbeat now (still carried: ``_CHUNK`` at a time, a
        member may leave between two); re-announcements started for those that need one."""
        ttl = self.settings.ttl
        members = self.members
        stale_before = now - ttl
        due = []
        stalled: list[str] = []
        for i, (name, member) in enumerate(list(among.items())):
            if i and not i % _CHUNK:
                await asyncio.sleep(0)
            if member.fence.lost is not None or members.get(name) is not member:
                continue
            late = member.last_ok < stale_before
            if member.needs_announce or late:
                if late and not member.needs_announce:
                    stalled.append(member.card.name)
                self._reannounce(member)
                continue
            due.append(member)
        if stalled:  # one line for the host, not one per agent
            log.warning(
                "%s: no heartbeat for more than the TTL (%.2fs) for %d agent(s) (%s%s): "
                "re-announcing",
                self.host,
                ttl,
                len(stalled),
                ", ".join(stalled[:5]),
                ", ..." if len(stalled) > 5 else "",
            )
        return due

    def _reannounce(self, member: Membership) -> None:
        name = member.card.name
        running = self._reannouncing.get(name)
        if running is not None and not running.done():
            return
        member.needs_announce = True  # until it succeeds
        self._reannouncing[name] = asyncio.create_task(
            self._reannounce_once(member), name=f"agentbus-reannounce:{name}"
        )

    async def _reannounce_once(self, member: Membership) -> None:
        """Re-announce ``member`` until it succeeds (or it is no longer carried here)."""
        name = member.card.name
        try:
            async for attempt in retrying(
                f"{name}: re-announce", log=log, cap=self.settings.retry_max_backoff
            ):
                with attempt:
                    if self.members.get(name) is member:
                        await member.reannounce()
        finally:
            if self._reannouncing.get(member.card.name) is asyncio.current_task():
                del self._reannouncing[member.card.name]
            self.wake(member)

    async def _send(self, due: list[Membership]) -> None:
        # One at a time, each built when its turn comes: a lease built before a status change
        # must not reach Redis after the heartbeat that carries the change (send_now).
        async with self._send_lock:
            await self._send_locked(due)

    async def _send_locked(self, due: list[Membership]) -> None:
        only = due[0]
        # a plain heartbeat has no reply_to: the coordinator answers it on the reply list named
        # after the agent, which only a lone Agent's host reads (a renamed one's does not)
        own = self.settings.keys.replies(only.card.name, only.instance_id)
        alone = len(self.members) <= 1 and only.router.key == own == self.reply_to
        if len(due) == 1 and alone:
            env = only.heartbeat_envelope()
            doing = f"sending a heartbeat for {only.card.name!r}"
            await xadd_control(self.client, self.settings, env, doing, writer=self.writer)
            self.sent += 1
            return
        lease = self.lease
        for k in range(0, len(due), LEASE_MAX_BEATS):
            part = due[k : k + LEASE_MAX_BEATS]
            beats, renew, changed = [], [], []
            for m in part:
                # most members of a host renew by name every interval: checked without
                # building their beat (a StrEnum status equals its value)
                reported = m.reported
                if (
                    lease is not None
                    and reported is not None
                    and m.lease == lease
                    and reported[1] == m.load
                    and reported[0] == m.status
                ):
                    renew.append((m.card.name, m.instance_id))
                    continue
                beat = m.beat()
                beats.append(beat)
                changed.append((m, (beat[3], beat[2])))
            payload: dict[str, object] = {"host": self.host, "beats": beats}
            if lease is not None:
                payload.update(lease=lease, ttl_ms=self.settings.ttl_ms, renew=renew,
                               members=len(self.members))  # fmt: skip
            env = Outgoing(  # schemas.agent.Lease, built without validating our own values
                ControlType.LEASE.value,
                self.host,
                orjson.dumps(payload),
                kind=Kind.CONTROL,
                reply_to=self.reply_to,
            )
            doing = f"sending the lease of host {self.host!r} ({len(part)} agents)"
            await xadd_control(self.client, self.settings, env, doing, writer=self.writer)
            for m, values in changed:
                m.reported = values
            self.sent += 1
