"""What a run was measured on: CPU, cores, RAM, Python, Redis, redis-py, event loop, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

__all__ = ["describe", "loadavg", "version_of"]


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other engineers share these 2 cores)."""
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def version_of(binary: str, flag: str = "--version") -> str:
    path = shutil.which(binary)
    if not path:
        return "not installed"
    try:
        out = subprocess.run(
            [path, flag], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """The commit measured: ``BENCH_COMMIT`` (set when running from an export), else git's."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            check=False, cwd=os.path.dirname(os.path.abspath(__file__)),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def describe(loop: str, redis_server_version: str = "") -> dict[str, Any]:
    return {
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": redis_server_version or version_of("redis-server"),
        "redis_py": _dist("redis"),
        "hiredis": _dist("hiredis"),
        "nats_server": version_of("nats-server"),
        "nats_py": _dist("nats-py"),
        "event_loop": loop,
        "loadavg_start": loadavg(),
    }
