"""The proof scripts themselves (acl mode, docs/SECURITY.md "Proofs"): the digest ``proof.lua``
writes is the one ``agent_sdk.security.proof_digest`` computes (the coordinator checks control
entries with the Python one), a reader accepts exactly the proved entries, and old proofs are
pruned by the next write that is the first of its millisecond in its stream (or every 64th);
a control entry is proved through a plain ``EVALSHA``, which loads the script after a flush."""

from __future__ import annotations

import redis.asyncio as aioredis

from agent_sdk.connection import make_client
from agent_sdk.membership import xadd_control
from agent_sdk.messaging.codec import Outgoing
from agent_sdk.messaging.scripts import script_text
from agent_sdk.security import proof_digest
from agent_sdk.settings import Settings
from schemas.envelope import Kind
from schemas.keys import AGENT_GROUP, KeySpace

KEEP_MS = 60_000


async def _xadd_proved(r: aioredis.Redis, stream: str, proofs: str, flat: list[str]) -> str:
    script = r.register_script(script_text("xadd_proved"))
    return str(await script(keys=[stream, proofs], args=[0, KEEP_MS, "", *flat]))


async def test_lua_digest_is_the_python_digest_and_old_proofs_are_pruned(
    r: aioredis.Redis, keys: KeySpace
) -> None:
    stream, proofs = keys.control(), keys.proofs("alice")
    await r.zadd(proofs, {"stale": 1, "recent-enough": 2**50})  # score: ms since the epoch
    flat = ["type", "heartbeat", "sender", "alice", "payload", '{"load": 0}']
    entry_id = await _xadd_proved(r, stream, proofs, flat)
    assert entry_id.endswith("-0")  # the stream's first entry: the first of its millisecond
    members = set(await r.zrange(proofs, 0, -1))
    assert members == {proof_digest(stream, entry_id, flat), "recent-enough"}


async def test_read_secure_verdicts_follow_the_proofs(r: aioredis.Redis, keys: KeySpace) -> None:
    inbox = keys.inbox("bob")
    await r.xgroup_create(inbox, AGENT_GROUP, id="0", mkstream=True)
    proved = await _xadd_proved(r, inbox, keys.proofs("alice"), ["sender", "alice", "x", "1"])
    forged = await r.xadd(inbox, {"sender": "alice", "x": "2"})
    nameless = await r.xadd(inbox, {"x": "3"})
    read = r.register_script(script_text("read_secure"))
    entries, verdicts = await read(
        keys=[inbox], args=[AGENT_GROUP, "c1", 10, keys.agents_prefix + "{"]
    )
    ids = [e[0] for e in entries]
    assert dict(zip(ids, verdicts, strict=True)) == {proved: 1, forged: 0, nameless: 0}


async def test_a_proved_control_entry_survives_a_script_flush(
    r: aioredis.Redis, settings: Settings
) -> None:
    secure = settings.model_copy(update={"security": "acl"})
    client = make_client(secure)
    env = Outgoing("heartbeat", "alice", b'{"load":0}', kind=Kind.CONTROL)
    try:
        await xadd_control(client, secure, env, "beating")
        await r.script_flush()  # Redis restarted, say: EVALSHA gets NOSCRIPT, the script loads
        await xadd_control(client, secure, env, "beating")
    finally:
        await client.aclose()
    control = settings.keys.control()
    entries = await r.xrange(control)
    assert len(entries) == 2
    for entry_id, fields in entries:
        flat = [x for pair in fields.items() for x in pair]
        proof = proof_digest(control, entry_id, flat)
        assert await r.zscore(settings.keys.proofs("alice"), proof) is not None
