"""Every Redis key, stream, consumer group and channel agentbus uses is named here.

No other module formats a key. ``KeySpace(ns)`` builds them for one namespace (default
``agentbus``). The layout has two halves:

* the **registry** (control plane) lives under the hash tag ``{registry}``, so one Lua script can
  update a record and all its indexes atomically;
* the **data plane** lives under one hash tag per agent (``{<name>}``), per role (``{<role>}``)
  and per session, and each agent's own keys share one prefix, ``<ns>:agent:{<name>}:``, for a
  per-agent ACL.

On a Redis Cluster every script call stays in one of these slots: the calls that span two
on one server are split there (docs/PROTOCOL.md, "Redis Cluster and Sentinel"), and the
doorbell channels, which carry their stream's hash tag, are sharded channels.

Data model (mirrored in docs/PROTOCOL.md; ``R`` = ``<ns>:{registry}``; ``T`` =
``<ns>:tenant:<tenant>``, the sessions of one tenant, docs/SECURITY.md "Tenants"):

=====================================  ======  ==========================  =============  ==============
key                                    type    TTL                         written by     read by
=====================================  ======  ==========================  =============  ==============
R:agent:<name>                         hash    none; removed on leave or   coordinator    everyone
                                               expiry by the sweeper
R:agents                               set     none                        coordinator    discovery, CLI
R:role:<role>                          set     none                        coordinator    discovery, send
R:cap:<capability>                     set     none                        coordinator    discovery
R:tag:<tag>                            set     none                        coordinator    discovery
R:deadlines                            zset    none (score = deadline ms)  coordinator    sweeper
R:clock                                hash    none                        coordinator    coordinator
R:tombstones                           zset    none (score = fence ms;     coordinator    coordinator
                                               pruned after tombstone_keep)
R:epoch                                string  none (INCR per new          coordinator    coordinator
                                               registration)
R:control                              stream  MAXLEN ~ (settings)         agents         coordinators
R:events                               stream  MAXLEN ~ (settings)         coordinator,   watchers
                                                                           plugin hosts
R:coordinators                         zset    none (score = last tick)    coordinator    CLI
R:coordinator:<id>                     string  PX 3 x tick                 coordinator    ``check``
R:policy                               string  none (JSON: the acl policy) ``acl --apply`` coordinator
R:identity:<identity>:names            set     none (pruned lazily)        coordinator    coordinator
R:proofs                               zset    proofs pruned after         coordinator    reply routers
                                               proof_keep (acl mode)
<ns>:agent:{<name>}:sent               zset    proofs pruned after         the name's     receivers,
                                               proof_keep (acl mode)       owner          coordinator
<ns>:agent:{<name>}:limits             hash    none (acl mode: maxlen,     the agent      send script
                                               max_bytes)
<ns>:role:{<role>}:limits              hash    none (as above)             role members   send script
<ns>:agent:{<name>}:inbox:lost         string  none (entries trimmed       the agent      the agent
                                               unread, reported)
<ns>:role:{<role>}:queue:lost          string  none (as above)             role members   role members
<ns>:agent:{<name>}:inbox              stream  MAXLEN ~ (settings)         senders        the agent
<ns>:agent:{<name>}:inbox:<priority>   stream  MAXLEN ~ (critical,         senders        the agent
                                               important, low)
<ns>:agent:{<name>}:replies:<instance> list    PX request deadline         responders     the agent
<ns>:agent:{<name>}:stats              hash    none                        the agent      CLI
<ns>:agent:{<name>}:tasks              stream  MAXLEN ~ (task_history)     the agent      CLI, gateway
<ns>:agent:{<name>}:state              hash    none (survives restarts)    the agent      the agent
<ns>:role:{<role>}:queue               stream  MAXLEN ~ (settings)         senders        role members
<ns>:role:{<role>}:queue:<priority>    stream  MAXLEN ~ (critical,         senders        role members
                                               important, low)
<ns>:role:{<role>}:default             string  none (a SemVer version)     ``plugins      senders
                                                                           default``,
                                                                           plugin hosts
<ns>:session:{<session>}:activity      stream  MAXLEN ~; PX retention      agents         UIs
<ns>:session:{<session>}:seq           string  PX retention                agents         agents
<ns>:session:{<session>}:owner         string  PX retention                gateway        gateway
T:session:{<session>}:activity         stream  MAXLEN ~; PX retention      the tenant's   the tenant's
                                                                           agents         agents, gateway
T:session:{<session>}:seq              string  PX retention                the tenant's   the tenant's
                                                                           agents         agents
T:session:{<session>}:owner            string  PX retention                gateway        gateway
<ns>:deadletter                        stream  MAXLEN ~ (settings)         everyone       ``deadletter``
<ns>:gateway:tokens                    hash    none (sha256 of a token ->  ``token``      gateway
                                               JSON user, role, expiry)    command
<ns>:plugins                           set     none                        plugin hosts   ``plugins``
<ns>:plugin:<name>                     hash    none; removed when its      plugin hosts   ``plugins``
                                               last version is deleted
<ns>:plugin:<name>:version:<version>   hash    none; removed when that     plugin hosts   ``plugins``
                                               version's directory is
                                               deleted
=====================================  ======  ==========================  =============  ==============

Pub/sub channels: ``<ns>:broadcast`` (every agent), ``<ns>:broadcast:role:<role>``, the doorbells
``<ns>:agent:{<name>}:inbox:bell`` and ``<ns>:role:{<role>}:queue:bell`` (protocol 2), direct
requests ``<ns>:agent:{<name>}:direct``,
``<ns>:topic:<topic>`` (subscribers may use glob patterns), ``<ns>:events`` (change feed mirror),
``<ns>:session:<session>:activity`` and ``T:session:<session>:activity`` (activity mirrors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "AGENT_GROUP",
    "COORDINATOR_GROUP",
    "DEFAULT_NAMESPACE",
    "KeySpace",
    "validate_namespace",
]

DEFAULT_NAMESPACE = "agentbus"

#: Consumer group of the coordinators on the control stream.
COORDINATOR_GROUP = "coordinators"
#: Consumer group of agents on their inbox and on their role's queue (consumers are instance
#: ids). One name for both, so one blocking ``XREADGROUP`` can wait on both streams.
AGENT_GROUP = "agent"

_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_namespace(ns: str) -> str:
    """Return ``ns`` if it is a valid namespace, else raise ``ValueError``."""
    if not _NAMESPACE_RE.match(ns):
        raise ValueError(
            f"invalid namespace {ns!r}: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a "
            "letter or digit"
        )
    return ns


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds the names of one namespace. Cheap to create; all methods are pure."""

    ns: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        validate_namespace(self.ns)

    # -- registry (one hash tag: {registry}) -------------------------------------------------
    @property
    def registry_prefix(self) -> str:
        """``<ns>:{registry}:``, the prefix Lua scripts append index names to."""
        return f"{self.ns}:{{registry}}:"

    def record(self, name: str) -> str:
        return f"{self.registry_prefix}agent:{name}"

    @property
    def record_prefix(self) -> str:
        return f"{self.registry_prefix}agent:"

    def agents(self) -> str:
        return f"{self.registry_prefix}agents"

    def role_index(self, role: str) -> str:
        return f"{self.registry_prefix}role:{role}"

    def role_capability_index(self, role: str, capability: str) -> str:
        """The names of ``role`` with ``capability`` (``R:role:<role>:cap:<capability>``, kept
        beside the role and capability sets): a discovery by role and capabilities starts its
        intersection from these smaller sets (docs/PROTOCOL.md, "Registry")."""
        return f"{self.registry_prefix}role:{role}:cap:{capability}"

    def layout(self) -> str:
        """The registry layout's version: ``2`` once every record's role × capability sets
        exist (a coordinator builds them for records written before them)."""
        return f"{self.registry_prefix}layout"

    @property
    def role_index_prefix(self) -> str:
        return f"{self.registry_prefix}role:"

    def capability_index(self, capability: str) -> str:
        return f"{self.registry_prefix}cap:{capability}"

    @property
    def capability_index_prefix(self) -> str:
        return f"{self.registry_prefix}cap:"

    def tag_index(self, tag: str) -> str:
        return f"{self.registry_prefix}tag:{tag}"

    @property
    def tag_index_prefix(self) -> str:
        return f"{self.registry_prefix}tag:"

    def deadlines(self) -> str:
        return f"{self.registry_prefix}deadlines"

    def leases(self) -> str:
        """The deadlines of hosts' leases (zset lease id -> ms, Redis clock): a name registered
        under a lease lives as long as its lease (docs/PROTOCOL.md, "Hosts")."""
        return f"{self.registry_prefix}leases"

    def lease_members(self, lease: str) -> str:
        """The names a host's lease holds (a set, kept by the control script): its renewals
        extend exactly these names' deadlines (docs/PROTOCOL.md, "Hosts")."""
        return f"{self.lease_prefix}{lease}"

    @property
    def lease_prefix(self) -> str:
        return f"{self.registry_prefix}lease:"

    def clock(self) -> str:
        return f"{self.registry_prefix}clock"

    def tombstones(self) -> str:
        """Instances that left or expired, scored by their fence (ms): their control entries
        written before it are stale (docs/PROTOCOL.md, "Fencing")."""
        return f"{self.registry_prefix}tombstones"

    def epoch(self) -> str:
        """The registration counter: each new registration of a name takes the next value."""
        return f"{self.registry_prefix}epoch"

    def control(self) -> str:
        return f"{self.registry_prefix}control"

    def policy(self) -> str:
        """The acl policy in force (JSON written by ``agentbus acl --apply``; acl mode)."""
        return f"{self.registry_prefix}policy"

    def identity_names(self, identity: str) -> str:
        """The names an identity registered (its ``max_agents`` quota; acl mode)."""
        return f"{self.registry_prefix}identity:{identity}:names"

    def coordinator_proofs(self) -> str:
        """The proofs of what coordinators pushed to reply lists (acl mode): digests of
        ``<list>\\n\\n<envelope>`` scored by time; only coordinators may write it, so an agent
        cannot pass off a ``reannounce`` as the coordinator's (docs/SECURITY.md)."""
        return f"{self.registry_prefix}proofs"

    def events(self) -> str:
        return f"{self.registry_prefix}events"

    def coordinators(self) -> str:
        return f"{self.registry_prefix}coordinators"

    def coordinator_health(self, coordinator_id: str) -> str:
        return f"{self.registry_prefix}coordinator:{coordinator_id}"

    # -- data plane: one hash tag per agent / role / session ---------------------------------
    @property
    def agents_prefix(self) -> str:
        """``<ns>:agent:``: every agent's data-plane keys start with it (reply lists too)."""
        return f"{self.ns}:agent:"

    def agent_prefix(self, name: str) -> str:
        """``<ns>:agent:{<name>}:``: every data-plane key of one agent (grant it in an ACL)."""
        return f"{self.agents_prefix}{{{name}}}:"

    def inbox(self, name: str) -> str:
        return f"{self.agent_prefix(name)}inbox"

    def replies(self, name: str, instance_id: str) -> str:
        return f"{self.agent_prefix(name)}replies:{instance_id}"

    def proofs(self, name: str) -> str:
        """The proofs of what ``name`` wrote (acl mode): a zset of digests scored by time,
        writable only by the user that owns the name (docs/SECURITY.md, "Proofs")."""
        return f"{self.agent_prefix(name)}sent"

    def limits(self, family: str) -> str:
        """The receiver's limits of an inbox or role queue family (``maxlen``, ``max_bytes``):
        ``<inbox or queue key minus its last part>:limits``."""
        return f"{family.rsplit(':', 1)[0]}:limits"

    def losses(self, stream: str) -> str:
        """How many entries of an inbox or role queue stream were found trimmed before they
        were read and reported (``agent_sdk.messaging.losses``): ``<stream>:lost``."""
        return f"{stream}:lost"

    def stats(self, name: str) -> str:
        return f"{self.agent_prefix(name)}stats"

    def tasks(self, name: str) -> str:
        """The agent's task history: one entry per handled message (``agent_sdk.task_history``)."""
        return f"{self.agent_prefix(name)}tasks"

    def agent_state(self, name: str) -> str:
        """The persisted state of an agent name (``agent.state``): JSON values, ``_epoch``."""
        return f"{self.agent_prefix(name)}state"

    def role_queue(self, role: str) -> str:
        return f"{self.ns}:role:{{{role}}}:queue"

    def role_default(self, role: str) -> str:
        """The default version of a role: a send or request to the role without ``version=``
        goes to a live member of this version (any member when none is live); set by
        ``agentbus plugins default`` (docs/PLUGINS.md, "Versions side by side")."""
        return f"{self.ns}:role:{{{role}}}:default"

    def prioritized(self, stream: str, priority: str) -> str:
        """The stream of ``priority`` in the family of inbox or role queue ``stream``:
        ``stream`` itself for ``normal``, ``<stream>:<priority>`` otherwise (``schemas.priority``);
        same hash slot, same doorbell."""
        return stream if priority == "normal" else f"{stream}:{priority}"

    def bell(self, stream: str) -> str:
        """The doorbell channel of an inbox or role queue: ``<stream key>:bell``. A sender
        ``PUBLISH``es on it after each ``XADD`` (the send script does), so that a host reading
        thousands of streams wakes for the one that has work (docs/PROTOCOL.md, "Doorbells")."""
        return f"{stream}:bell"

    # -- sessions: untenanted (``tenant=None``) or under their tenant's prefix ----------------
    def tenant_prefix(self, tenant: str) -> str:
        """``<ns>:tenant:<tenant>:``: every key and channel of one tenant's sessions (grant it
        in an ACL; docs/SECURITY.md, "Tenants"). A tenant is an identifier (``schemas.names``),
        so it holds no ``:`` and no glob character: the prefix of one tenant never matches
        another's keys."""
        return f"{self.ns}:tenant:{tenant}:"

    def _session(self, session_id: str, tenant: str | None) -> str:
        if tenant is None:
            return f"{self.ns}:session:{{{session_id}}}:"
        return f"{self.tenant_prefix(tenant)}session:{{{session_id}}}:"

    def session_activity(self, session_id: str, tenant: str | None = None) -> str:
        """A session's activity stream: ``<ns>:session:{<session>}:activity`` without a
        tenant, ``<ns>:tenant:<tenant>:session:{<session>}:activity`` with one."""
        return f"{self._session(session_id, tenant)}activity"

    def session_seq(self, session_id: str, tenant: str | None = None) -> str:
        """Counter behind the per-session activity sequence numbers (INCR, same slot)."""
        return f"{self._session(session_id, tenant)}seq"

    def session_owner(self, session_id: str, tenant: str | None = None) -> str:
        """The user a session belongs to (set by the gateway when a user starts it)."""
        return f"{self._session(session_id, tenant)}owner"

    def deadletter(self) -> str:
        return f"{self.ns}:deadletter"

    # -- gateway ---------------------------------------------------------------------------
    def gateway_tokens(self) -> str:
        """The gateway's bearer tokens: field = sha256 hex of a token, value = JSON (user,
        role, issued_at, expires_at). The tokens themselves are never stored."""
        return f"{self.ns}:gateway:tokens"

    # -- plugin catalogue (written by plugin hosts: ``agentbus run --plugins``) ---------------
    def plugins(self) -> str:
        """The names of every plugin a host has loaded (the catalogue's index)."""
        return f"{self.ns}:plugins"

    def plugin(self, name: str) -> str:
        """One plugin's catalogue entry: flat strings (version, status, path, agents, ...)."""
        return f"{self.ns}:plugin:{name}"

    def plugin_version(self, name: str, version: str) -> str:
        """One version of a plugin (several may run side by side): the same flat fields."""
        return f"{self.ns}:plugin:{name}:version:{version}"

    # -- pub/sub channels --------------------------------------------------------------------
    def direct_channel(self, name: str) -> str:
        """``<ns>:agent:{<name>}:direct``: requests sent with ``durable=False`` (at-most-once,
        straight to the agent's host over pub/sub; docs/PROTOCOL.md, "Direct requests")."""
        return f"{self.agent_prefix(name)}direct"

    def broadcast_channel(self, role: str | None = None) -> str:
        if role is None:
            return f"{self.ns}:broadcast"
        return f"{self.ns}:broadcast:role:{role}"

    def topic_channel(self, topic: str) -> str:
        """Channel of a topic; ``topic`` may be a glob pattern when used with PSUBSCRIBE."""
        return f"{self.ns}:topic:{topic}"

    @property
    def topic_channel_prefix(self) -> str:
        return f"{self.ns}:topic:"

    def events_channel(self) -> str:
        return f"{self.ns}:events"

    def session_channel(self, session_id: str, tenant: str | None = None) -> str:
        """The activity mirror: ``<ns>:session:<session>:activity``, or
        ``<ns>:tenant:<tenant>:session:<session>:activity`` for a tenant's session."""
        if tenant is None:
            return f"{self.ns}:session:{session_id}:activity"
        return f"{self.tenant_prefix(tenant)}session:{session_id}:activity"

    # -- patterns for SCAN (inspection only, never on a hot path) ---------------------------
    def all_keys_pattern(self) -> str:
        return f"{self.ns}:*"
