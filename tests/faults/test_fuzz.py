"""Scenario 8: hypothesis-generated envelopes and raw bytes written straight into the control
stream, an inbox and a role queue, plus random announcements, against the real coordinator daemon
and a real agent process: no crash, no stall, every bad entry dead-lettered with its reason, and
the next good message handled.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.envelope import decode_fields
from schemas.errors import ProtocolError
from schemas.keys import AGENT_GROUP, COORDINATOR_GROUP
from tests.faults.harness import Cluster, FleetProc, report
from tests.support import wait_for_sync

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AGENT, ROLE = "fz", "fuzzq"
FIELDS = ["v", "id", "kind", "type", "sender", "target", "correlation_id", "reply_to",
          "sent_at", "deadline", "headers", "payload", "error"]  # fmt: skip

SAMPLES = [
    "1", "2", "0", "send", "request", "reply", "control", "broadcast", "job", "bcast",
    "announce", "heartbeat", "leave", "2026-01-01T00:00:00Z", "{}", "[]", "null", "{", "x" * 300,
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def no_hold(v: Any) -> bool:
    """The test agent's handlers sleep ``payload["hold"]``: keep fuzz out of that knob."""
    return not (isinstance(v, dict) and "hold" in v)


field_value = st.one_of(
    st.binary(max_size=12),  # raw bytes, often not UTF-8
    st.text(max_size=12),
    st.sampled_from(SAMPLES),
    json_values.filter(no_hold).map(json.dumps),  # may hold 2**70 or Infinity: fine
)
field_name = st.one_of(
    st.sampled_from(FIELDS), st.text(min_size=1, max_size=8), st.binary(min_size=1, max_size=6)
)
entries = st.dictionaries(field_name, field_value, min_size=1, max_size=6)
cards = st.fixed_dictionaries(
    {"name": st.text(max_size=10) | st.sampled_from(["ok-1", "fz", "a:b", "{x}"])},
    optional={
        "role": st.text(max_size=6) | st.just("r"),
        "version": st.text(max_size=6) | st.just("1.0.0"),
        "capabilities": st.lists(st.text(max_size=4), max_size=3),
        "metadata": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
        "max_concurrency": st.integers(-2, 5),
    },
)
announces = st.fixed_dictionaries(
    {"card": cards | json_values},
    optional={
        "instance_id": st.text(max_size=8),
        "ttl_ms": st.integers(-5, 10**7),
        "heartbeat_ms": st.integers(-5, 10**6),
    },
)


#: Totals over every example, reported when the module's bus is torn down.
TOTALS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def bus_under_fuzz() -> Iterator[tuple[Cluster, FleetProc]]:
    cluster = Cluster(max_deliveries=2)
    try:
        cluster.coordinator("c1")
        agent = cluster.fleet([AGENT], role=ROLE, concurrency=4)
        wait_for_sync(lambda: AGENT in agent.ledger().ready(), timeout=60, interval=0.05,
                      message="fuzz agent ready")  # fmt: skip
        yield cluster, agent
        report("fuzz", **TOTALS, processes_alive=all(c.alive for c in cluster.children))
    finally:
        cluster.close()


def undecodable(fields: dict[Any, Any]) -> bool:
    try:
        decode_fields(fields, "1-0")
    except ProtocolError:
        return True
    return False


def dead_letters(r: redis.Redis, cluster: Cluster) -> dict[tuple[str, str], dict[str, str]]:
    """(source stream, source entry id) -> the dead letter's own fields (original ones left out:
    they are raw bytes)."""
    raw: Any = r.xrange(cluster.keys.deadletter())
    out = {}
    for _, fields in raw:
        f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()
             if not k.startswith(b"orig.")}  # fmt: skip
        out[(f.get("source", ""), f.get("source_id", ""))] = f
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    inbox=st.lists(entries, max_size=4),
    queue=st.lists(entries, max_size=3),
    control=st.lists(entries, max_size=4),
    announcements=st.lists(announces, max_size=2),
)
# an announcement whose payload is not JSON (``Infinity``) is both answered and dead-lettered
@example(inbox=[], queue=[], control=[], announcements=[{"card": float("inf")}, {"card": {}}])
def test_bad_input_is_dead_lettered_and_the_next_good_message_handled(
    bus_under_fuzz: tuple[Cluster, FleetProc],
    inbox: list[dict[Any, Any]],
    queue: list[dict[Any, Any]],
    control: list[dict[Any, Any]],
    announcements: list[dict[str, Any]],
) -> None:
    cluster, agent = bus_under_fuzz
    r = redis.Redis(port=cluster.redis.port)
    try:
        _exercise(cluster, agent, r, inbox, queue, control, announcements)
    finally:
        r.close()


def _exercise(
    cluster: Cluster,
    agent: FleetProc,
    r: redis.Redis,
    inbox: list[dict[Any, Any]],
    queue: list[dict[Any, Any]],
    control: list[dict[Any, Any]],
    announcements: list[dict[str, Any]],
) -> None:
    keys = cluster.keys
    written: list[tuple[str, str, dict[Any, Any]]] = []
    for stream, batch in ((keys.inbox(AGENT), inbox), (keys.role_queue(ROLE), queue),
                          (keys.control(), control)):  # fmt: skip
        for fields in batch:
            written.append((stream, r.xadd(stream, fields).decode(), fields))  # type: ignore[arg-type,union-attr]
    reply_list = keys.replies("fuzzer", uuid.uuid4().hex[:8])
    for body in announcements:
        fields = {"kind": "control", "type": "announce", "sender": "fuzzer",
                  "reply_to": reply_list, "payload": json.dumps(body)}  # fmt: skip
        eid = r.xadd(keys.control(), fields).decode()  # type: ignore[arg-type,union-attr]
        written.append((keys.control(), eid, fields))

    # the next good messages are handled ...
    good_inbox = uuid.uuid4().hex
    good_queue = uuid.uuid4().hex
    r.xadd(keys.inbox(AGENT), {"id": good_inbox, "type": "job", "payload": "{}"})
    r.xadd(keys.role_queue(ROLE), {"id": good_queue, "type": "job", "payload": "{}"})
    wait_for_sync(
        lambda: {good_inbox, good_queue} <= set(agent.ledger().done_ids()),
        timeout=60, message="the good messages after the bad ones handled",
    )  # fmt: skip

    # ... every entry ends handled or dead-lettered; undecodable ones always dead-lettered
    def settled() -> list[tuple[str, str]]:
        handled_entries = {ln[2] for ln in agent.ledger().of("done")}
        letters = dead_letters(r, cluster)
        missing = []
        for stream, eid, fields in written:
            dl = letters.get((stream, eid))
            if dl is not None:
                assert dl["reason"], dl
                assert dl["code"], dl
                continue
            if undecodable(fields) or (stream != keys.control() and eid not in handled_entries):
                missing.append((stream, eid))
        return missing

    wait_for_sync(lambda: not settled(), timeout=60, message="every bad entry dead-lettered")
    letters = dead_letters(r, cluster)
    TOTALS["examples"] += 1
    TOTALS["entries_written"] += len(written)
    TOTALS["dead_lettered"] += sum(1 for s_, eid, _ in written if (s_, eid) in letters)
    TOTALS["undecodable"] += sum(1 for _, _, f in written if undecodable(f))
    TOTALS["good_messages_handled"] += 2
    # no stall: nothing left pending in any group
    for stream, group in ((keys.inbox(AGENT), AGENT_GROUP), (keys.role_queue(ROLE), AGENT_GROUP),
                          (keys.control(), COORDINATOR_GROUP)):  # fmt: skip
        wait_for_sync(lambda s=stream, g=group: r.xpending(s, g)["pending"] == 0, timeout=60,
                      message=f"nothing pending in {stream}")  # fmt: skip
    # every announcement was answered (accepted or refused) or dead-lettered: none ignored (an
    # undecodable one is both: its sender is told, and the entry is kept as a dead letter)
    sent = [eid for _, eid, _ in written[len(written) - len(announcements) :]]

    def unsettled() -> set[str]:
        letters = dead_letters(r, cluster)
        replies: Any = r.lrange(reply_list, 0, -1)
        answered = {json.loads(raw)["correlation_id"] for raw in replies}
        return {eid for eid in sent if eid not in answered and (keys.control(), eid) not in letters}

    wait_for_sync(lambda: not unsettled(), timeout=30,
                  message="every announcement answered or dead-lettered")  # fmt: skip
    # and the next good announcement is accepted
    name, instance = f"good-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:12]
    good_reply = keys.replies(name, instance)
    card = {"name": name, "role": "probe"}
    body = {"card": card, "instance_id": instance, "heartbeat_ms": 250, "ttl_ms": 2000}
    r.xadd(keys.control(), {"kind": "control", "type": "announce", "sender": name,
                            "reply_to": good_reply, "payload": json.dumps(body)})  # fmt: skip
    popped: Any = r.blpop([good_reply], timeout=30)
    assert popped is not None, "no answer to a good announcement after the bad input"
    answer = json.loads(popped[1])
    assert "error" not in answer or answer["error"] is None, answer
    TOTALS["good_announcements_accepted"] += 1
    assert all(c.alive for c in cluster.children), cluster.diagnostics()
