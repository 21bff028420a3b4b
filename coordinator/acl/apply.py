"""A policy made Redis ACL users: the plan (a diff against what Redis holds), and applying it.

The desired rules of each user are normalised by Redis itself: they are set on a scratch user,
read back with ``ACL LIST``, and compared with the real user's line (passwords aside). Applying
never removes a password unless asked (``drop_old``): a rotation adds the new password, processes
restart with it at their pace, then ``--drop-old-passwords`` removes the old one. No user is
reset or deleted, so no connection drops. The policy is stored in ``R:policy`` for the
coordinator.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from coordinator.acl.policy import Policy
from coordinator.acl.rules import rules_for
from schemas.errors import ConfigurationError
from schemas.keys import KeySpace

__all__ = [
    "Change", "Plan", "acl_command", "apply_plan", "make_plan", "password_hash", "read_password",
]  # fmt: skip


async def acl_command(client: aioredis.Redis, *args: str) -> Any:
    """One raw command (redis-py types ``execute_command`` loosely)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def read_password(policy_dir: Path, file: str, *, generate: bool) -> str | None:
    """The password in ``file`` (relative to the policy's directory); a new random one written
    there (mode 0600) when missing and ``generate``; else None."""
    path = (policy_dir / file).resolve()
    if path.is_file():
        text = path.read_text(encoding="utf-8").splitlines()
        return text[0] if text else None
    if not generate:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return password


@dataclass(slots=True)
class Change:
    """One user: its rules now (None: no such user) and as the policy wants them."""

    user: str
    before: str | None
    after: str
    rules: list[str]
    password: str | None
    new_password: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.new_password


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.changed]

    def render(self) -> str:
        lines = []
        for c in self.changes:
            if not c.changed:
                lines.append(f"  {c.user}: unchanged")
                continue
            if c.before is None:
                lines.append(f"+ user {c.user}: new")
            elif c.before != c.after:
                lines.append(f"~ user {c.user}:")
                lines.append(f"-   {c.before}")
            lines.append(f"+   {c.after}")
            if c.new_password:
                lines.append(f"+   a new password for {c.user} (old ones kept)")
        return "\n".join(lines)


def _line_rules(line: str) -> str:
    """An ``ACL LIST`` line without its ``user <name>`` head and its password hashes."""
    parts = line.split(" ")
    kept = [p for p in parts[2:] if not (p.startswith("#") or p in _NOT_RULES)]
    return " ".join(kept)


#: Flags of an ``ACL LIST`` line that are not the policy's rules (``reset`` sets the first).
_NOT_RULES = frozenset({"nopass", "resetpass", "sanitize-payload", "skip-sanitize-payload"})


async def _acl_lines(client: aioredis.Redis) -> dict[str, str]:
    lines: Any = await acl_command(client, "ACL", "LIST")
    out = {}
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        name = line.split(" ", 2)[1]
        out[name] = line
    return out


async def make_plan(
    client: aioredis.Redis, policy: Policy, keys: KeySpace, policy_dir: Path, *,
    generate: bool = False,
) -> Plan:  # fmt: skip
    """What applying ``policy`` would change (Redis 7 or later)."""
    info: Any = await acl_command(client, "HELLO")
    version = _field(info, "version")
    if tuple(int(x) for x in version.split(".")[:2]) < (7, 0):
        raise ConfigurationError(
            f"Redis {version} has no ACL selectors or read/write key permissions: acl mode needs "
            "Redis 7 (docs/SECURITY.md, 'Redis 6.2')"
        )
    current = await _acl_lines(client)
    scratch = f"agentbus-scratch-{secrets.token_hex(6)}"
    plan = Plan()
    try:
        for identity in policy.identities:
            user = policy.user(identity)
            rules = rules_for(policy, identity, keys)
            await acl_command(client, "ACL", "SETUSER", scratch, "reset", *rules)
            after = _line_rules((await _acl_lines(client))[scratch])
            ident = policy.identities[identity]
            password = None
            if ident.password_file is not None:
                password = read_password(policy_dir, ident.password_file, generate=generate)
            before_line = current.get(user)
            known = set() if before_line is None else {
                p[1:] for p in before_line.split(" ") if p.startswith("#")
            }  # fmt: skip
            new_password = password is not None and password_hash(password) not in known
            plan.changes.append(Change(
                user, None if before_line is None else _line_rules(before_line), after, rules,
                password, new_password,
            ))  # fmt: skip
    finally:
        await acl_command(client, "ACL", "DELUSER", scratch)
    for c in plan.changes:  # the scratch user is "off"; a user we apply is "on"
        c.after = c.after.replace("off ", "on ", 1) if c.after.startswith("off") else c.after
    return plan


async def apply_plan(
    client: aioredis.Redis, plan: Plan, policy: Policy, keys: KeySpace, *, drop_old: bool = False
) -> int:
    """Apply every change of ``plan``; store the policy in ``R:policy``. Returns users changed."""
    n = 0
    for c in plan.changes:
        if not c.changed and not drop_old:
            continue
        head: list[str] = ["on"]
        if drop_old:
            head.append("resetpass")
        if c.password is not None:
            head.append(f"#{password_hash(c.password)}")
        await acl_command(client, "ACL", "SETUSER", c.user, *head, *c.rules)
        n += 1
    await client.set(keys.policy(), policy.to_json())
    return n


def _field(info: Any, name: str) -> str:
    if isinstance(info, dict):
        v = info.get(name, info.get(name.encode()))
    else:
        items = list(info)
        pairs = dict(zip(items[::2], items[1::2], strict=True))
        v = pairs.get(name, pairs.get(name.encode()))
    return v.decode() if isinstance(v, bytes) else str(v)
