"""The Redis ACL rules of each identity of a policy (Redis 7: key permissions and selectors).

Each agent identity gets a root rule set for what it owns (its names' keys
``<ns>:agent:{<name>}:*``, its roles' queues, its doorbells, its topic patterns) and selectors,
each one command family on other keys:

======================  ============================================================  ========
selector                commands                                                      keys
======================  ============================================================  ========
scripts                 EVALSHA (the scripts declare others' keys: Redis checks each    RW
                        declared key, then every command the script runs, again)
send                    XADD, XLEN, XINFO GROUPS, XPENDING, XTRIM on the inboxes and    RW
                        queues of ``send_to``; HMGET of their limits                    R
registry                reads of records, indexes, the change feed, proofs (the         R
                        agents' and the coordinators' ``R:proofs``), limits
control                 XADD to the control stream                                      W
replies                 LPUSH to reply lists                                            W
dead letters            XADD to the dead-letter stream                                  W
doorbells, publish      PUBLISH on doorbells, ``publish`` topics, broadcast channels,  channels
                        its tenants' activity mirrors
======================  ============================================================  ========

**Tenants.** The root rule set also holds the sessions of the identity's ``tenants``: an agent
identity their activity streams and sequence counters
(``<ns>:tenant:<tenant>:session:*:activity`` and ``...:seq``; not the owner keys), a gateway
identity the whole tenant prefix (``<ns>:tenant:<tenant>:*``: owners too). No other tenant's
session keys, and no untenanted session key (``<ns>:session:*``), are in any agent's or
gateway's rules: another tenant's activity is ``NOPERM`` to read and to write.

Nobody but an identity may write its names' proofs (``<ns>:agent:{<name>}:sent``): that is what
binds a claimed sender to a credential. Nobody else may read its inbox, its reply lists or its
role queues. Coordinators and operators are trusted with the whole namespace (operators replay
dead letters as their senders); no generated user may run ``EVAL`` (only ``EVALSHA``),
``FUNCTION``, ``SCRIPT FLUSH``/``KILL``, or anything in ``@dangerous`` / ``@admin``.
"""

from __future__ import annotations

from coordinator.acl.policy import Identity, Policy
from schemas.keys import KeySpace

__all__ = ["BASE_COMMANDS", "rules_for"]

#: What every generated user may run on the keys and channels its rules give it.
BASE_COMMANDS = (
    "+@connection", "+@stream", "+@list", "+@hash", "+@sortedset", "+@set", "+@string",
    "+@keyspace", "+@transaction", "+evalsha", "+evalsha_ro", "+script|load", "+script|exists",
    "+subscribe", "+unsubscribe", "+psubscribe", "+punsubscribe", "-@dangerous", "-@admin",
    "+client|setname", "+client|getname", "+client|id", "+client|info", "+time",
)  # fmt: skip
_TRUSTED = ("+@all", "-@dangerous", "-@admin", "+info", "+client|setname", "+client|getname",
            "+client|id", "+client|info", "+client|list", "+script|flush")  # fmt: skip
_REGISTRY_READS = (
    "+exists", "+scard", "+sismember", "+smembers", "+sinter", "+sintercard", "+sunion",
    "+sscan", "+hget", "+hmget", "+hgetall", "+hexists", "+type", "+xread", "+xrange",
    "+xrevrange", "+xlen", "+xinfo|stream", "+zscore", "+get",
)  # fmt: skip


def _sel(*parts: str) -> str:
    return "(" + " ".join(parts) + ")"


def rules_for(policy: Policy, identity: str, keys: KeySpace) -> list[str]:
    """The ``ACL SETUSER`` rules of ``identity`` (without ``on`` and passwords)."""
    ident = policy.identities[identity]
    head = ["resetkeys", "resetchannels", "clearselectors", "-@all"]
    ns = keys.ns
    if ident.kind in ("coordinator", "operator"):
        return [*head, *_TRUSTED, f"~{ns}:*", f"&{ns}:*"]
    return [*head, *_agent_rules(ident, keys)]


def _tenant_rules(ident: Identity, keys: KeySpace) -> tuple[list[str], list[str]]:
    """The key and channel rules of ``ident``'s tenants' sessions (see the module docstring)."""
    prefixes = [keys.tenant_prefix(t) for t in ident.tenants]
    if ident.kind == "gateway":
        session_keys = [f"~{p}*" for p in prefixes]
    else:
        session_keys = [f"~{p}session:*:{part}" for p in prefixes for part in ("activity", "seq")]
    return session_keys, [f"&{p}session:*" for p in prefixes]


def _agent_rules(ident: Identity, keys: KeySpace) -> list[str]:
    ns, reg = keys.ns, keys.registry_prefix
    session_keys, session_channels = _tenant_rules(ident, keys)
    own = [f"~{keys.agent_prefix(n)}*" for n in ident.names]
    own += [f"~{ns}:role:{{{r}}}:*" for r in ident.roles]
    own += session_keys
    proofs = [f"~{keys.proofs(n)}" for n in ident.names]
    channels = [f"&{keys.bell(keys.inbox(n))}" for n in ident.names]
    channels += [f"&{keys.bell(keys.role_queue(r))}" for r in ident.roles]
    channels += [f"&{keys.broadcast_channel()}", f"&{keys.events_channel()}"]
    channels += [f"&{keys.broadcast_channel(r)}" for r in ident.roles]
    channels += [f"&{keys.topic_channel(t)}" for t in ident.subscribe]
    channels += session_channels
    targets: list[str] = []
    limits: list[str] = []
    for t in ident.send_to:
        if t.startswith("role:"):
            stream = keys.role_queue(t.removeprefix("role:"))
        else:
            stream = keys.inbox(t)
        targets += [f"~{stream}", f"~{stream}:*"]
        limits.append(f"%R~{keys.limits(stream)}")
    root = [*BASE_COMMANDS, *own, *channels]
    if ident.kind == "gateway":
        root += [f"~{ns}:gateway:*", f"%R~{keys.deadletter()}"]
    registry = [  # what discovery reads (the deadlines: each match's last renewal)
        f"{reg}agent:*", f"{reg}agents", f"{reg}role:*", f"{reg}cap:*", f"{reg}tag:*",
        f"{reg}deadlines", f"{reg}leases", f"{reg}layout",
    ]  # fmt: skip
    scripts = _sel(
        "+evalsha", "+evalsha_ro", *own, *proofs, *targets, *(f"~{k}" for k in registry),
        f"~{keys.control()}", f"~{keys.agents_prefix}*:replies:*", f"~{keys.deadletter()}",
        *(x.replace("%R~", "~") for x in limits),
    )  # fmt: skip
    send = _sel("+xadd", "+xlen", "+xinfo|groups", "+xpending", "+xtrim", *targets)
    reads = _sel(
        *_REGISTRY_READS, "+hmget", *(f"%R~{k}" for k in registry), f"%R~{keys.events()}",
        f"%R~{keys.agents_prefix}*:sent", f"%R~{keys.coordinator_proofs()}", *limits,
    )  # fmt: skip
    publish = ["+publish", f"&{keys.agents_prefix}*:inbox:bell", f"&{ns}:role:*:queue:bell"]
    publish += [f"&{keys.topic_channel(t)}" for t in ident.publish]
    publish += session_channels
    if ident.broadcast:
        publish += [f"&{keys.broadcast_channel()}", f"&{keys.broadcast_channel('*')}"]
    return [
        *root,
        scripts,
        send,
        reads,
        _sel("+xadd", f"%W~{keys.control()}"),
        _sel("+lpush", f"%W~{keys.agents_prefix}*:replies:*"),
        _sel("+xadd", f"%W~{keys.deadletter()}"),
        _sel(*publish),
    ]
