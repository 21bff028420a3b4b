"""Typed settings: one object, defaults, validation, and an ``AGENTBUS_*`` env var per option.

>>> Settings(redis_url="redis://127.0.0.1:6400/0", heartbeat_interval=0.1, ttl=0.3).ttl_ms
300

Precedence: keyword arguments > environment (``AGENTBUS_REDIS_URL``, ...) > defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_sdk.topology import RedisTarget, Topology, parse_redis_url, redact_url
from schemas.errors import ConfigurationError, validation_summary
from schemas.keys import DEFAULT_NAMESPACE, KeySpace, validate_namespace

__all__ = ["Settings", "redact_url"]


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
    inbox_sweep: float = Field(
        default=10.0,
        gt=0,
        description="Every inbox of a host is read at least this often, doorbell or not.",
    )
    inbox_maxlen: int = Field(default=10_000, ge=10, description="Approximate inbox cap.")
    queue_maxlen: int = Field(default=100_000, ge=10, description="Approximate role queue cap.")
    deadletter_maxlen: int = Field(default=100_000, ge=10)
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

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, v: SecretStr) -> SecretStr:
        parse_redis_url(v.get_secret_value())  # ValueError naming what is wrong
        return v

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
    def keys(self) -> KeySpace:
        return KeySpace(self.namespace)

    @property
    def heartbeat_ms(self) -> int:
        return round(self.heartbeat_interval * 1000)

    @property
    def ttl_ms(self) -> int:
        return round(self.ttl * 1000)
