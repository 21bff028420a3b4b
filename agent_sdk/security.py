"""acl mode's client side: proofs, unguessable ids, and what Redis's refusals mean.

In ``acl`` mode (``AGENTBUS_SECURITY=acl``, docs/SECURITY.md) every process connects as its own
Redis ACL user, and whatever it writes under a name is **proved**: the script that writes an
entry also adds the entry's digest to ``<ns>:agent:{<name>}:sent``, a key only the user that owns
the name may write (``agentbus acl`` makes the rules). A receiver (or the coordinator) accepts an
entry only if the ``sender`` it claims holds its digest. The digest covers the stream key, the
entry id and every field, so a proof cannot be reused for another entry or another stream.

This module has the pure parts shared by the SDK and the coordinator: the digest, ids that
cannot be guessed, and turning the send script's refusals into exceptions.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence

from redis.exceptions import ResponseError

from schemas.errors import AgentbusError, ErrorCode, InboxFull, PayloadTooLarge

__all__ = [
    "UNVERIFIED",
    "proof_digest",
    "publish_digest",
    "refusal_of",
    "secure_id",
]

#: The delivery count a reader hands over for an entry whose sender is not proved.
UNVERIFIED = -1


def proof_digest(key: str | bytes, entry_id: str | bytes, flat: Sequence[bytes | str]) -> str:
    """The proof of a stream entry: SHA-1 hex of ``key\\nid\\nfield\\nvalue...`` (the same as
    ``proof.lua``'s ``proof_digest``)."""
    parts = [_b(key), _b(entry_id), *(_b(x) for x in flat)]
    return hashlib.sha1(b"\n".join(parts), usedforsecurity=False).hexdigest()


def publish_digest(channel: str | bytes, message: bytes | str) -> str:
    """The proof of a published message: SHA-1 hex of ``channel\\n\\nmessage``."""
    return hashlib.sha1(_b(channel) + b"\n\n" + _b(message), usedforsecurity=False).hexdigest()


def secure_id() -> str:
    """A message id as ``new_id`` makes (12 hex digits of ms, sortable) followed by 20 hex
    digits from the OS's CSPRNG: ids that matter for replies cannot be predicted from others."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.randbits(80):020x}"


def refusal_of(e: ResponseError) -> AgentbusError | None:
    """The exception for a refusal by ``send_secure.lua`` (``INBOX_FULL``, ``TOO_LARGE``)."""
    text = str(e)
    if text.startswith("INBOX_FULL"):
        return InboxFull(
            f"{text[len('INBOX_FULL ') :]}: not queued; retry later", code=ErrorCode.INBOX_FULL
        )
    if text.startswith("TOO_LARGE"):
        return PayloadTooLarge(f"{text[len('TOO_LARGE ') :]}: not queued")
    return None


def _b(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else x.encode()
