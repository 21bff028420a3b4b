"""The plugin manifest: ``manifest.yaml`` at the top of a plugin directory.

A plugin is a directory holding a manifest and code; its agent is hosted by ``agentbus run
--plugins`` (docs/PLUGINS.md)::

    name: summarizer                # the plugin's name (unique among plugins)
    version: 1.2.0                  # SemVer 2.0 of the plugin's code
    description: Summarises documents.
    role: summarizer                # the agents' role (their role queue)
    entry_point: agent:make         # module:attr, relative to the plugin directory
    capabilities: [summarize]
    tags: [en, text]
    dependencies: ["pydantic>=2"]   # checked against the environment, never installed
    api_version: "^1"               # the plugin API range it was written for
    resources: {max_concurrency: 4, memory: 512MiB}
    replicas: {min: 1, max: 1}
    config: {model: small}          # free-form, handed to the plugin's factory

``entry_point`` may name an ``Agent``, a factory returning one (called with a
``PluginContext``), or a module (``module`` alone, or ``module:attr`` naming a module) whose
functions decorated with ``agent_sdk.plugin.handler`` become the agent's handlers.
"""

from __future__ import annotations

import re
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from schemas.names import Identifier
from schemas.semver import check_version, parse_range

__all__ = [
    "MANIFEST_FILE",
    "PLUGIN_API_VERSION",
    "PluginManifest",
    "PluginReplicas",
    "PluginResources",
]

#: The version of the plugin API this agentbus offers (a manifest's ``api_version`` must admit it).
PLUGIN_API_VERSION = "1.0.0"
#: The manifest's file name inside a plugin directory.
MANIFEST_FILE = "manifest.yaml"

_PLUGIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_ENTRY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")
_MAX_LIST = 64


class PluginResources(BaseModel):
    """What one instance of the plugin may use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: int = Field(
        default=1, ge=1, le=100_000, description="Messages one agent handles at once."
    )
    memory: ByteSize | None = Field(
        default=None,
        description="Address-space limit of the plugin's worker process (bytes, or '512MiB').",
        json_schema_extra={
            "anyOf": [
                {"type": "integer", "minimum": 64 * 1024 * 1024},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"},
                {"type": "null"},
            ]
        },
    )

    @field_validator("memory")
    @classmethod
    def _enough(cls, v: ByteSize | None) -> ByteSize | None:
        if v is not None and v < 64 * 1024 * 1024:
            raise ValueError("a worker needs at least 64MiB")
        return v


class PluginReplicas(BaseModel):
    """How many instances of the plugin's agent run (``min`` today; ``max`` is the ceiling)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(default=1, ge=1, le=1000)
    max: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> PluginReplicas:
        if self.max < self.min:
            raise ValueError(f"replicas.max ({self.max}) is below replicas.min ({self.min})")
        return self


class PluginManifest(BaseModel):
    """``manifest.yaml``: what a plugin is, what it needs, how it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description="Unique among plugins: 1-64 of letters, digits, '_' and '-'.",
        json_schema_extra={"pattern": _PLUGIN_NAME_RE.pattern},
    )
    version: str = Field(max_length=64, description="SemVer 2.0 of the plugin's code.")
    description: str = Field(default="", max_length=1024)
    role: Identifier = Field(description="The role of the plugin's agents.")
    entry_point: str = Field(
        description="module:attr (or module), relative to the plugin directory: an Agent, a "
        "factory, or a module of @handler functions.",
        json_schema_extra={"pattern": _ENTRY_RE.pattern},
    )
    capabilities: tuple[Identifier, ...] = Field(default=(), max_length=_MAX_LIST)
    tags: tuple[Identifier, ...] = Field(default=(), max_length=_MAX_LIST)
    dependencies: tuple[str, ...] = Field(
        default=(),
        max_length=_MAX_LIST,
        description="Requirement strings (PEP 508) checked against the environment.",
    )
    api_version: str = Field(
        default="^1", max_length=64, description="The agentbus plugin API range (SemVer)."
    )
    resources: PluginResources = Field(default_factory=PluginResources)
    replicas: PluginReplicas = Field(default_factory=PluginReplicas)
    config: dict[str, Any] = Field(
        default_factory=dict, description="Free-form settings handed to the plugin."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PLUGIN_NAME_RE.match(v):
            raise ValueError(
                f"invalid plugin name {v!r}: use 1-64 of letters, digits, '_' and '-', starting "
                "with a letter or digit"
            )
        return v

    @field_validator("version", "api_version", mode="before")
    @classmethod
    def _number_as_text(cls, v: Any) -> Any:
        # YAML reads `version: 1.2` as a number: check it as the text it was meant to be
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        return check_version(v)

    @field_validator("entry_point")
    @classmethod
    def _entry(cls, v: str) -> str:
        if not _ENTRY_RE.match(v):
            raise ValueError(
                f"invalid entry point {v!r}: expected module:attr (e.g. agent:make) or a module"
            )
        return v

    @field_validator("api_version")
    @classmethod
    def _range(cls, v: str) -> str:
        parse_range(v)
        return v

    @field_validator("dependencies")
    @classmethod
    def _requirements(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for text in v:
            try:
                Requirement(text)
            except InvalidRequirement as e:
                raise ValueError(f"invalid requirement {text!r}: {e}") from None
        return v

    @property
    def module(self) -> str:
        return self.entry_point.partition(":")[0]

    @property
    def attr(self) -> str | None:
        return self.entry_point.partition(":")[2] or None
