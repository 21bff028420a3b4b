"""The nemesis: seeded, overlapping faults against a real fleet; invariants checked throughout.

CI runs 3 seeds of a 20 s fault phase (about 35 s each). A release check runs longer::

    AGENTBUS_NEMESIS_SECONDS=180 AGENTBUS_NEMESIS_SEEDS=1,2,3,4,5 \
        pytest tests/faults/test_nemesis.py -s

A failure names its seed; the same seed replays the same fault schedule
(``AGENTBUS_NEMESIS_FAULTS=agent_zombie,redis_sleep`` narrows it to some kinds).
"""

from __future__ import annotations

import os

import pytest

from tests.faults.harness import Cluster, report
from tests.faults.nemesis import Config, run_nemesis

SEEDS = [int(s) for s in os.environ.get("AGENTBUS_NEMESIS_SEEDS", "1,2,3").split(",") if s]
SECONDS = float(os.environ.get("AGENTBUS_NEMESIS_SECONDS", "20"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(3 * SECONDS + 120))]


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
async def test_nemesis(patient_cluster: Cluster, seed: int) -> None:
    cfg = Config.from_env(seed)
    outcome = await run_nemesis(patient_cluster, cfg)
    report("nemesis", **outcome.report)
    rerun = (
        f"AGENTBUS_NEMESIS_SEEDS={seed} AGENTBUS_NEMESIS_SECONDS={cfg.seconds:g} "
        "pytest tests/faults/test_nemesis.py -s"
    )
    assert not outcome.violations, (
        f"nemesis seed {seed}: invariants violated {outcome.violations.counts()} "
        f"(reproduce: {rerun})\n"
        + "\n".join(outcome.violations.lines())
        + "\nfaults:\n"
        + "\n".join(outcome.report["fault_log"])
    )
