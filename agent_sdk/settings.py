"""Typed settings: one object, defaults, validation, and an ``AGENTBUS_*`` env var per option.

>>> Settings(redis_url="redis://127.0.0.1:6400/0", heartbeat_interval=0.1, ttl=0.3).ttl_ms
300

Precedence: keyword arguments > environment (``AGENTBUS_REDIS_URL``, ...) > defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigurationError, validation_summary
from schemas.keys import DEFAULT_NAMESPACE, KeySpace, validate_namespace

__all__ = ["Security", "Settings", "redact_url"]

log = logging.getLogger("agentbus.settings")

_SCHEMES = ("redis", "rediss", "unix")
#: Query parameters of a Redis URL that hold secrets (redis-py reads ``password`` there).
_SECRET_PARAMS = frozenset({"password", "pass", "pw", "secret", "token", "ssl_password"})

#: ``off``: one shared credential, identities are claimed (the default, as before);
#: ``acl``: each process connects as its own Redis ACL user and every claimed identity is proved
#: (docs/SECURITY.md).
Security = Literal["off", "acl"]


def redact_url(url: str) -> str:
    """The URL with every secret replaced by ``***`` (the password of the authority and secret
    query parameters such as ``?password=``): safe to log and print, whatever the URL holds.
    A URL that does not parse is redacted whole except for its scheme."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://***" if scheme and scheme.isalnum() else "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        # "redis://secret@host": redis-py reads a lone userinfo as the password
        netloc = f"{user}:***@{hostport}" if user else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Settings(BaseSettings):
    """Settings shared by agents, the coordinator and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTBUS_", extra="forbid", validate_default=True, frozen=True
    )

    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis to use: redis://[user:password@]host:port/db, rediss://, unix://.",
    )
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Prefix of every key.")
    heartbeat_interval: float = Field(default=1.0, ge=0.1, le=3600, description="Seconds.")
    ttl: float = Field(default=3.0, ge=0.3, le=86400, description="Seconds without heartbeat.")
    announce_timeout: float = Field(default=5.0, gt=0, description="Wait for the coordinator.")
    name_wait: float = Field(
        default=0.0, ge=0, description="Wait this long for a name held by a dead instance."
    )
    request_timeout: float = Field(default=5.0, gt=0, description="Default request timeout.")
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024, description="Encoded payload.")
    max_deliveries: int = Field(default=5, ge=1, description="Then a message is dead-lettered.")
    claim_interval: float = Field(default=1.0, gt=0, description="Role queue reclaim period.")
    inbox_sweep: float = Field(
        default=60.0,
        gt=0,
        description="Every inbox of a host is read at least this often, doorbell or not.",
    )
    inbox_maxlen: int = Field(default=10_000, ge=10, description="Approximate inbox cap.")
    queue_maxlen: int = Field(default=100_000, ge=10, description="Approximate role queue cap.")
    deadletter_maxlen: int = Field(default=100_000, ge=10)
    task_history: int = Field(
        default=1000, ge=0, le=1_000_000, description="Handled messages kept per agent (0: none)."
    )
    shutdown_grace: float = Field(default=10.0, ge=0, description="Drain time on stop.")
    connect_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(
        default=64, ge=2, description="Connections per client; callers queue beyond it."
    )
    pool_timeout: float = Field(default=20.0, gt=0, description="Wait for a free connection.")
    retry_attempts: int = Field(default=8, ge=0, description="Redis reconnect attempts per call.")
    retry_max_backoff: float = Field(default=2.0, gt=0, description="Seconds between retries.")
    # -- security (docs/SECURITY.md) --------------------------------------------------------
    security: Security = Field(
        default="off",
        description="off: claimed identities (default); acl: per-process Redis users, proved "
        "identities, receiver-owned limits.",
    )
    redis_username: str | None = Field(
        default=None, description="Redis ACL user (overrides the URL's user)."
    )
    redis_password: SecretStr | None = Field(
        default=None, description="Redis password (overrides the URL's; kept out of URLs)."
    )
    redis_password_file: Path | None = Field(
        default=None, description="File holding the Redis password (first line)."
    )
    tls_ca: Path | None = Field(default=None, description="CA bundle to verify Redis (TLS).")
    tls_cert: Path | None = Field(default=None, description="Client certificate (mTLS).")
    tls_key: Path | None = Field(default=None, description="Client key (mTLS).")
    tls_verify: bool = Field(
        default=True, description="Verify the server's certificate and name (off: warned)."
    )
    proof_keep: float = Field(
        default=900.0,
        ge=10,
        le=7 * 86400,
        description="acl mode: seconds a sender's proofs are kept; older unread messages are "
        "dead-lettered as unverifiable.",
    )

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        scheme = urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"{redact_url(url)!r} must start with one of "
                + ", ".join(f"{s}://" for s in _SCHEMES)
            )
        return v

    @model_validator(mode="after")
    def _check_secrets_and_tls(self) -> Settings:
        if self.redis_password is not None and self.redis_password_file is not None:
            raise ValueError("give redis_password or redis_password_file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (mutual TLS needs both)")
        for name in ("tls_ca", "tls_cert", "tls_key", "redis_password_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {str(path)!r}")
        tls_files = self.tls_ca or self.tls_cert
        if tls_files and urlsplit(self.url).scheme != "rediss":
            raise ValueError("TLS files are set but the URL is not rediss://: use rediss://")
        query = {k.lower() for k, _ in parse_qsl(urlsplit(self.url).query)}
        if query & {"ssl_cert_reqs", "ssl_check_hostname"}:
            raise ValueError(
                "TLS verification is set by AGENTBUS_TLS_VERIFY (and AGENTBUS_TLS_CA/CERT/KEY), "
                "not by URL parameters"
            )
        return self

    @field_validator("namespace")
    @classmethod
    def _check_ns(cls, v: str) -> str:
        return validate_namespace(v)

    @model_validator(mode="after")
    def _ttl_covers_heartbeats(self) -> Settings:
        if self.ttl < 2 * self.heartbeat_interval:
            raise ValueError(
                f"ttl ({self.ttl}s) must be at least twice heartbeat_interval "
                f"({self.heartbeat_interval}s)"
            )
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings, turning validation problems into one ``ConfigurationError``."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**clean)
        except ValidationError as e:  # one line naming each setting at fault
            raise ConfigurationError(f"invalid agentbus settings: {validation_summary(e)}") from e
        except ValueError as e:
            raise ConfigurationError(f"invalid agentbus settings: {e}") from e

    @property
    def url(self) -> str:
        return self.redis_url.get_secret_value()

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    @property
    def secure(self) -> bool:
        """True in ``acl`` mode: identities are proved, limits are the receiver's."""
        return self.security == "acl"

    def password(self) -> str | None:
        """The password to authenticate with: the setting, its file, else None (the URL's own
        password, if any, is used by the client)."""
        if self.redis_password is not None:
            return self.redis_password.get_secret_value()
        if self.redis_password_file is not None:
            text = Path(self.redis_password_file).read_text(encoding="utf-8")
            return text.splitlines()[0] if text else ""
        return None

    def tls_options(self) -> dict[str, Any]:
        """redis-py connection options for ``rediss://`` (empty otherwise). Verification is on
        unless ``tls_verify`` is False, which is logged loudly each time a client is made."""
        if urlsplit(self.url).scheme != "rediss":
            return {}
        opts: dict[str, Any] = {
            "ssl_cert_reqs": "required" if self.tls_verify else "none",
            "ssl_check_hostname": self.tls_verify,
        }
        if self.tls_ca is not None:
            opts["ssl_ca_certs"] = str(self.tls_ca)
        if self.tls_cert is not None:
            opts["ssl_certfile"] = str(self.tls_cert)
            opts["ssl_keyfile"] = str(self.tls_key)
        if not self.tls_verify:
            log.warning(
                "TLS certificate verification is OFF for %s (AGENTBUS_TLS_VERIFY=false): "
                "anyone on the path can impersonate Redis and read every message",
                self.display_url,
            )
        return opts

    @property
    def keys(self) -> KeySpace:
        return KeySpace(self.namespace)

    @property
    def heartbeat_ms(self) -> int:
        return round(self.heartbeat_interval * 1000)

    @property
    def ttl_ms(self) -> int:
        return round(self.ttl * 1000)
