"""Typed settings: one object, defaults, validation, and an ``AGENTBUS_*`` env var per option.

>>> Settings(redis_url="redis://127.0.0.1:6400/0", heartbeat_interval=0.1, ttl=0.3).ttl_ms
300

Precedence: keyword arguments > environment (``AGENTBUS_REDIS_URL``, ...) > defaults.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_sdk.topology import RedisTarget, Topology, parse_redis_url, redact_url
from schemas.errors import ConfigurationError, validation_summary
from schemas.keys import DEFAULT_NAMESPACE, KeySpace, validate_namespace

__all__ = ["Security", "Settings", "redact_url"]

log = logging.getLogger("agentbus.settings")

#: ``off``: one shared credential, identities are claimed (the default, as before);
#: ``acl``: each process connects as its own Redis ACL user and every claimed identity is proved
#: (docs/SECURITY.md).
Security = Literal["off", "acl"]


class Settings(BaseSettings):
    """Settings shared by agents, the coordinator and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTBUS_", extra="forbid", validate_default=True, frozen=True
    )

    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description=(
            "Redis to use: redis://[user:password@]host:port/db, rediss://, unix://; a cluster "
            "as redis+cluster://[user:password@]host:port[,host:port...]; Sentinel as "
            "redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db]."
        ),
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
    loss_check: float = Field(
        default=10.0,
        ge=0,
        description="Seconds between checks of the streams a host reads for entries trimmed "
        "before they were read (dead-lettered as messages_lost); 0: never.",
    )
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
    replica_acks: int = Field(
        default=0,
        ge=0,
        le=16,
        description=(
            "Replicas that must hold a sent message or reply before the call returns (WAIT "
            "after each round trip): 1 keeps what was acknowledged through a failover."
        ),
    )
    replica_ack_timeout: float = Field(
        default=1.0, gt=0, description="Longest WAIT for replica_acks, seconds."
    )
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
        parse_redis_url(v.get_secret_value())  # ValueError naming what is wrong
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
        target = self.target
        if (self.tls_ca or self.tls_cert) and not target.tls:
            raise ValueError(
                "TLS files are set but the URL is not rediss:// (or rediss+cluster://, "
                "rediss+sentinel://): use a TLS scheme"
            )
        if self.secure and target.topology is Topology.CLUSTER:
            raise ValueError(
                "security=acl is not supported on a Redis Cluster (a message's proof lives in "
                "its sender's slot, its check in the receiver's: docs/SECURITY.md); use one "
                "server or Sentinel"
            )
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
    def target(self) -> RedisTarget:
        """The topology the URL names (one server, a cluster, Sentinel) and its parts."""
        return parse_redis_url(self.url)

    @property
    def topology(self) -> Topology:
        return self.target.topology

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
        """redis-py connection options for a TLS URL (``rediss://``, ``rediss+cluster://``,
        ``rediss+sentinel://``; empty otherwise). Verification is on
        unless ``tls_verify`` is False, which is logged loudly each time a client is made."""
        if not self.target.tls:
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
        return _keyspace(self.namespace)

    @property
    def heartbeat_ms(self) -> int:
        return round(self.heartbeat_interval * 1000)

    @property
    def ttl_ms(self) -> int:
        return round(self.ttl * 1000)


@functools.lru_cache(maxsize=64)
def _keyspace(namespace: str) -> KeySpace:
    """One ``KeySpace`` per namespace (it is immutable; ``settings.keys`` is called often)."""
    return KeySpace(namespace)
