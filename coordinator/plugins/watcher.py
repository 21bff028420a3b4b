"""Following plugin directories with ``watchfiles`` (native file events, debounced, batched).

``watch_plugin_dirs(roots)`` yields, for each batch of file changes, the set of plugin
directories they touched: ``<root>/<dir>`` for any change at or under it. Whether a directory was
created, changed, moved or deleted is decided by the caller from what is on disk once the batch
settled (``PluginSupervisor.apply``), which also covers editors that save by writing a new file
and renaming it. Caches, bytecode, VCS and editor swap files are ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from watchfiles import DefaultFilter, awatch

__all__ = ["watch_plugin_dirs"]


def _plugin_dir(path: Path, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return root / rel.parts[0] if rel.parts else None
    return None


async def watch_plugin_dirs(
    roots: Sequence[Path],
    *,
    stop: asyncio.Event,
    debounce_ms: int = 300,
    ready: asyncio.Event | None = None,
) -> AsyncIterator[set[Path]]:
    """Yield the plugin directories touched by each batch of changes, until ``stop`` is set.
    ``ready`` is set once the watch is in place (changes after it are seen)."""
    watcher = awatch(
        *roots,
        watch_filter=DefaultFilter(),
        debounce=debounce_ms,
        step=50,
        stop_event=stop,
        recursive=True,
        yield_on_timeout=True,
        rust_timeout=200,
    )
    first = True
    async for changes in watcher:
        if first and ready is not None:  # the first (timeout) yield: the watch is in place
            ready.set()
        first = False
        dirs = {d for _, p in changes if (d := _plugin_dir(Path(p), roots)) is not None}
        if dirs:
            yield dirs
