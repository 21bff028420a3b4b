"""The benchmarks keep working: ``python -m bench --quick`` runs and writes well-formed results.

No timing is asserted here (benchmarks are never timed asserts); only the shape of the output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quick_bench_runs_and_writes_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-nats", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "measure" in result.stdout
    data = json.loads(out.read_text())
    for field in ("cpu", "cores", "python", "redis_server", "redis_py", "event_loop", "command"):
        assert data["machine"][field], field
    rows = data["rows"]
    assert rows
    failed = [r for r in rows if r["key"].endswith(".error")]
    assert not failed, failed
    for row in rows:
        assert row["title"]
        value = row["value"]
        if value is None:
            assert row["note"], row  # not measured: says why
            continue
        assert value["kind"] in ("latency_us", "throughput", "scalar"), row
        if value["kind"] == "latency_us":
            assert value["n"] > 0
            assert 0 < value["p50"] <= value["p99"] <= value["max"]
        elif value["kind"] == "throughput":
            assert value["count"] > 0
            assert value["rate"] > 0
    raw_keys = {r["key"] for r in rows if r["key"].startswith("raw.") and r["value"]}
    assert {"raw.ping", "raw.stream_throughput", "raw.lpush_blpop_rr"} <= raw_keys


def test_a_quick_run_never_replaces_the_published_results() -> None:
    from bench.cli import DEFAULT_JSON, QUICK_JSON, results_path

    assert results_path(None, quick=False) == DEFAULT_JSON
    assert results_path(None, quick=True) == QUICK_JSON != DEFAULT_JSON
    chosen = Path("elsewhere.json")
    assert results_path(chosen, quick=True) == chosen
