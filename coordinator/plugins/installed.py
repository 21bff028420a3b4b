"""Plugins shipped by installed packages: the entry-point group ``agentbus.plugins``.

A distribution declares, in its ``pyproject.toml``::

    [project.entry-points."agentbus.plugins"]
    summarizer = "acme_agents.summarizer"

The value names a **package** (a directory) that holds ``manifest.yaml`` and the plugin's code,
exactly as a plugin directory does (include ``manifest.yaml`` in the package data). The plugin
is located without importing its code (only its parent packages are imported, to find it);
``agentbus run --plugins --installed`` then hosts it as any other plugin (in a worker process,
on a snapshot of that directory); ``agentbus plugins --installed`` lists them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from schemas.plugin import MANIFEST_FILE

__all__ = ["ENTRY_POINT_GROUP", "InstalledPlugin", "installed_plugins"]

ENTRY_POINT_GROUP = "agentbus.plugins"


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """One entry point of the group: where its plugin directory is, or why it has none."""

    entry_point: str
    value: str
    distribution: str
    directory: Path | None
    error: str = ""


def _locate(value: str) -> tuple[Path | None, str]:
    module = value.partition(":")[0].strip()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:  # a parent package that fails to import
        return None, f"cannot locate {module!r}: {e}"
    if spec is None:
        return None, f"no module {module!r} is installed"
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        return None, f"{module!r} is a module, not a package: it must be a directory holding " \
                     f"{MANIFEST_FILE}"  # fmt: skip
    directory = Path(locations[0])
    if not (directory / MANIFEST_FILE).is_file():
        return None, f"package {module!r} ({directory}) has no {MANIFEST_FILE}"
    return directory, ""


def installed_plugins() -> list[InstalledPlugin]:
    """Every entry point of ``agentbus.plugins`` in the environment, located, by name."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        directory, error = _locate(ep.value)
        dist = ep.dist.name if ep.dist is not None else ""
        found.append(InstalledPlugin(ep.name, ep.value, dist, directory, error))
    return sorted(found, key=lambda p: (p.entry_point, p.value))
