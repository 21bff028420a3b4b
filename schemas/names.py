"""Validation of the identifiers that end up inside Redis key names.

A name is an address: it goes into keys such as ``<ns>:agent:{<name>}:inbox``, so characters
that break keys, hash tags or glob patterns (space, ``:``, ``{``, ``}``, ``*``, ``?``, ``[``) are
refused. The same rule covers roles, capabilities, tags and session ids.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "MAX_NAME_LENGTH",
    "Identifier",
    "LeaseId",
    "TopicName",
    "check_identifier",
    "check_lease_id",
    "check_topic",
    "check_topic_pattern",
    "lease_host",
    "lease_id",
]

MAX_NAME_LENGTH = 128

_IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]*$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_TOPIC_PATTERN_RE = re.compile(r"^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*$")


#: Identifiers found valid lately (a sender names the same few agents and roles again and
#: again: a dict lookup instead of the pattern's match), emptied when full.
_VALID: dict[str, None] = {}
_VALID_MAX = 4096


def check_identifier(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid identifier, else raise ``ValueError`` saying why."""
    if type(value) is str and value in _VALID:
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not _IDENT_RE.match(value):
        bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._@/-"))})
        shown = ", ".join(repr(c) for c in bad) or "its first character"
        raise ValueError(
            f"{what} {value!r} has characters that cannot be part of a Redis key ({shown}); "
            "use letters, digits, '.', '_', '-', '@', '/', starting with a letter or digit"
        )
    if type(value) is str:  # a subclass may compare equal and hash alike, yet not be one
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID[value] = None
    return value


def lease_id(host: str, instance_id: str) -> str:
    """The id of a host's lease: ``<host>:<instance>`` (``:`` is in no name, so the host part
    is unambiguous: acl mode checks it against the lease's proved sender)."""
    return f"{host}:{instance_id}"


def check_lease_id(value: str) -> str:
    """``<host name>:<instance id>``, each part an identifier (``lease_id``)."""
    host, sep, inst = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not host or not inst or len(inst) > 64:
        raise ValueError(f"invalid lease id {value!r}: expected <host name>:<instance id>")
    check_identifier(host, "lease host")
    check_identifier(inst, "lease instance")
    return value


def lease_host(lease: str) -> str:
    """The host part of a lease id."""
    return lease.partition(":")[0]


def check_topic(value: str) -> str:
    """A topic: dot-separated words of letters, digits, '_' and '-' (``news.eu``)."""
    if not value or len(value) > 256 or not _TOPIC_RE.match(value):
        raise ValueError(
            f"invalid topic {value!r}: use dot-separated words of letters, digits, '_', '-' "
            "(at most 256 characters)"
        )
    return value


def check_topic_pattern(value: str) -> str:
    """A topic or a pattern in which ``*`` matches any run of characters (``news.*``)."""
    if not value or len(value) > 256 or not _TOPIC_PATTERN_RE.match(value):
        raise ValueError(
            f"invalid topic pattern {value!r}: use dot-separated words of letters, digits, "
            "'_', '-' and '*'"
        )
    return value


Identifier = Annotated[str, AfterValidator(check_identifier)]
LeaseId = Annotated[str, AfterValidator(check_lease_id)]
TopicName = Annotated[str, AfterValidator(check_topic)]
