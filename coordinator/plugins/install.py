"""``agentbus plugins install PATH``: check a plugin directory or archive, and place it.

An archive (``.zip``, ``.tar.gz``/``.tgz``) is unpacked into a private temporary directory
first; a member whose path is absolute, climbs out with ``..``, or is a link or a device, is
refused (the archive is not unpacked at all). The plugin is the archive's root if it holds
``manifest.yaml``, else its single top-level directory. The manifest is validated and its
``api_version`` and ``dependencies`` checked (never installed). With a destination (a watched
plugin directory), the plugin is copied to ``<dest>/<name>`` through a hidden staging directory
and one rename, so a watcher sees it appear whole and loads it.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from agent_sdk.plugin_manifest import check_environment, plugin_error, read_manifest
from schemas.plugin import MANIFEST_FILE, PluginManifest

__all__ = ["check_plugin", "install_plugin"]

_ARCHIVES = (".zip", ".tar.gz", ".tgz")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache")


def _safe_member(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise plugin_error(archive, f"refused: member {name!r} escapes the archive's directory")


def _unpack(archive: Path, into: Path) -> None:
    if archive.name.endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _safe_member(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise plugin_error(archive, f"refused: member {info.filename!r} is a link")
                z.extractall(into)
        except zipfile.BadZipFile as e:
            raise plugin_error(archive, f"not a readable zip archive: {e}") from e
        return
    try:
        with tarfile.open(archive, "r:gz") as t:
            for member in t.getmembers():
                _safe_member(archive, member.name)
                if not (member.isfile() or member.isdir()):
                    raise plugin_error(
                        archive, f"refused: member {member.name!r} is not a file or a directory"
                    )
            t.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise plugin_error(archive, f"not a readable .tar.gz archive: {e}") from e


def _plugin_root(unpacked: Path, archive: Path) -> Path:
    if (unpacked / MANIFEST_FILE).is_file():
        return unpacked
    entries = [p for p in unpacked.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and (entries[0] / MANIFEST_FILE).is_file():
        return entries[0]
    raise plugin_error(
        archive, f"no {MANIFEST_FILE} at the archive's root or in its one top-level directory"
    )


def check_plugin(directory: Path) -> PluginManifest:
    """Validate a plugin directory: manifest, plugin API range, dependencies."""
    manifest = read_manifest(directory)
    check_environment(manifest, directory)
    return manifest


def install_plugin(path: Path, dest: Path | None = None) -> tuple[PluginManifest, Path | None]:
    """Check the plugin at ``path`` (a directory or an archive); with ``dest``, copy it to
    ``dest/<name>`` (refused if that exists). Returns the manifest and where it was put."""
    with tempfile.TemporaryDirectory(prefix="agentbus-install-") as tmp:
        if path.is_dir():
            source = path
        elif path.is_file() and path.name.endswith(_ARCHIVES):
            _unpack(path, Path(tmp))
            source = _plugin_root(Path(tmp), path)
        else:
            raise plugin_error(path, "expected a plugin directory, a .zip or a .tar.gz archive")
        manifest = check_plugin(source)
        if dest is None:
            return manifest, None
        target = dest / manifest.name
        if target.exists():
            raise plugin_error(path, f"{target} already exists: remove it first to replace it")
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.", dir=dest))
        try:
            shutil.copytree(source, staging, ignore=_IGNORED, dirs_exist_ok=True)
            staging.chmod(0o755)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest, target
