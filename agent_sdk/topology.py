"""Where Redis is: one server, a Redis Cluster, or a Sentinel deployment, from one URL.

=====================================================================  ==========================
``AGENTBUS_REDIS_URL``                                                 topology
=====================================================================  ==========================
``redis://[user:password@]host:port[/db]``, ``rediss://``, ``unix://``  one server
``redis+cluster://[user:password@]host:port[,host:port...]``           Redis Cluster (seed nodes)
``redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db]``  Sentinel (the sentinels)
=====================================================================  ==========================

``rediss+cluster://`` and ``rediss+sentinel://`` use TLS to the data nodes. The password of a
Sentinel URL is the data nodes'; the sentinels themselves are reached with the same
credentials (one ACL user everywhere is the simple setup). A cluster has no databases other
than 0. ``parse_redis_url`` checks the form and says what is wrong; ``redact_url`` hides the
password of any of these forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["RedisTarget", "Topology", "parse_redis_url", "redact_url"]

_SINGLE = ("redis", "rediss", "unix")
_MULTI = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
SCHEMES = (*_SINGLE, *_MULTI)
_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
#: Query parameters of a Redis URL that hold secrets (redis-py reads ``password`` there).
_SECRET_PARAMS = frozenset({"password", "pass", "pw", "secret", "token", "ssl_password"})


class Topology(StrEnum):
    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``AGENTBUS_REDIS_URL``: for one server only ``url`` matters (redis-py parses
    it); for a cluster or Sentinel, the seed nodes, credentials, master name and database."""

    topology: Topology
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master: str | None = None
    db: int = 0
    tls: bool = False


def _split(url: str) -> tuple[str, str, str]:
    """scheme, netloc, path (no query or fragment allowed in the multi-node forms)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{redact_url(url)!r} has no scheme (use one of {', '.join(SCHEMES)})")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{redact_url(url)!r}: options after '?' are not supported here")
    netloc, _, path = rest.partition("/")
    return scheme.lower(), netloc, path


def parse_redis_url(url: str) -> RedisTarget:
    """The topology ``url`` names; ``ValueError`` with the reason when it is not usable."""
    scheme = url.partition("://")[0].lower()
    if scheme in _SINGLE:
        return RedisTarget(Topology.SINGLE, url, tls=scheme == "rediss")
    if scheme not in _MULTI:
        raise ValueError(
            f"{redact_url(url)!r} must start with one of " + ", ".join(f"{s}://" for s in SCHEMES)
        )
    kind, tls = _MULTI[scheme]
    _, netloc, path = _split(url)
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, str(_DEFAULT_PORT[kind])
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{redact_url(url)!r}: {part!r} is not host:port")
        nodes.append((host, int(port)))
    segments = [s for s in path.split("/") if s]
    master, db = None, 0
    if kind == "cluster":
        if segments not in ([], ["0"]):
            raise ValueError(f"{redact_url(url)!r}: a cluster has only database 0 (no path)")
    else:
        if not segments or len(segments) > 2:
            raise ValueError(
                f"{redact_url(url)!r}: name the master, as "
                "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/db]"
            )
        master = unquote(segments[0])
        if len(segments) == 2:
            if not segments[1].isdigit():
                raise ValueError(f"{redact_url(url)!r}: the database must be a number")
            db = int(segments[1])
    return RedisTarget(Topology(kind), url, tuple(nodes), username, password, master, db, tls)


def _redact_userinfo(netloc: str) -> str:
    if "@" not in netloc:
        return netloc
    userinfo, _, hosts = netloc.rpartition("@")
    if ":" in userinfo:
        return f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    return f"***@{hosts}"  # "redis://secret@host": redis-py reads a lone userinfo as the password


def _redact_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
        return query
    return urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")


def redact_url(url: str) -> str:
    """The URL with every secret replaced by ``***`` (the password of the authority and secret
    query parameters such as ``?password=``): safe to log and print, whatever the URL holds and
    whichever form it has. A one-server URL that does not parse is redacted whole except for
    its scheme."""
    if url.partition("://")[0].lower() in _MULTI:  # host:port,host:port: not for urlsplit
        head, sep, rest = url.partition("://")
        rest, hashmark, fragment = rest.partition("#")
        rest, qmark, query = rest.partition("?")
        netloc, slash, path = rest.partition("/")
        tail = f"{qmark}{_redact_query(query)}{hashmark}{fragment}"
        return f"{head}{sep}{_redact_userinfo(netloc)}{slash}{path}{tail}"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://***" if scheme and scheme.isalnum() else "***"
    netloc = _redact_userinfo(parts.netloc)
    query = _redact_query(parts.query) if parts.query else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
