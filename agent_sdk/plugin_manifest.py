"""Reading a plugin directory's manifest and checking it against this environment.

``read_manifest(directory)`` parses ``manifest.yaml`` into a ``PluginManifest``;
``check_environment(manifest)`` checks its ``api_version`` against the plugin API this agentbus
offers and its ``dependencies`` against the installed distributions (``importlib.metadata``):
nothing is ever installed. Every failure is a ``PluginError`` whose message names the file, the
field and the reason, and whose ``details`` carry them as data.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from pydantic import ValidationError

from schemas.errors import PluginError
from schemas.plugin import MANIFEST_FILE, PLUGIN_API_VERSION, PluginManifest
from schemas.semver import parse_range

__all__ = ["check_environment", "plugin_error", "read_manifest"]

#: Largest manifest read (a manifest is a few hundred bytes; this refuses a mistake early).
MAX_MANIFEST_BYTES = 256 * 1024


def plugin_error(
    directory: Path | str, reason: str, *, file: str | None = None, field: str | None = None
) -> PluginError:
    """A ``PluginError`` saying ``<directory>/<file>: <field>: <reason>``."""
    where = str(Path(directory) / file) if file else str(directory)
    text = f"{where}: {field}: {reason}" if field else f"{where}: {reason}"
    details: dict[str, Any] = {"plugin": str(directory), "reason": reason}
    if file:
        details["file"] = file
    if field:
        details["field"] = field
    return PluginError(text, details=details)


def read_manifest(directory: Path | str) -> PluginManifest:
    """Parse and validate ``<directory>/manifest.yaml``."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise plugin_error(directory, "not a directory")
    if not path.is_file():
        raise plugin_error(directory, f"no {MANIFEST_FILE}: a plugin directory holds one")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise plugin_error(
            directory, f"{size} bytes; the limit is {MAX_MANIFEST_BYTES}", file=MANIFEST_FILE
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise plugin_error(directory, f"not UTF-8 text: {e}", file=MANIFEST_FILE) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise plugin_error(
            directory, f"not valid YAML: {where}{problem}", file=MANIFEST_FILE
        ) from e
    if not isinstance(data, dict):
        raise plugin_error(
            directory,
            f"expected a mapping of fields (name, version, role, entry_point, ...), got "
            f"{type(data).__name__}",
            file=MANIFEST_FILE,
        )
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        reasons = []
        for err in e.errors(include_url=False, include_context=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (see docs/PLUGINS.md for the fields)"
            reasons.append(f"{loc}: {msg}" if loc else msg)
        reason = "; ".join(reasons)
        raise PluginError(
            f"{path}: {reason}",
            details={"plugin": str(directory), "file": MANIFEST_FILE, "field": field,
                     "reason": reason},
        ) from None  # fmt: skip


def check_environment(manifest: PluginManifest, directory: Path | str) -> None:
    """Refuse a plugin written for another plugin API, or whose dependencies are missing."""
    if PLUGIN_API_VERSION not in parse_range(manifest.api_version):
        raise plugin_error(
            directory,
            f"the plugin needs plugin API {manifest.api_version!r}; this agentbus offers "
            f"{PLUGIN_API_VERSION}",
            file=MANIFEST_FILE,
            field="api_version",
        )
    problems = []
    for text in manifest.dependencies:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue  # not for this platform or Python
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{text!r} is not installed")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{text!r} is not met: {req.name} {installed} is installed")
    if problems:
        raise plugin_error(
            directory,
            "; ".join(problems) + " (agentbus never installs dependencies: install them first)",
            file=MANIFEST_FILE,
            field="dependencies",
        )
