"""Fixtures of the fault suite: a ``Cluster`` (private Redis + child processes) per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.harness import Cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


def _run(request: pytest.FixtureRequest, c: Cluster) -> Iterator[Cluster]:
    try:
        yield c
    finally:
        if request.node.stash.get(FAILED, False):
            print(f"\n=== stderr of the child processes ===\n{c.diagnostics()}")
        c.close()


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """``security`` is ``off`` unless a test parametrizes it (indirectly) with ``acl``."""
    yield from _run(request, Cluster(security=getattr(request, "param", "off")))


@pytest.fixture
def volatile_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster whose Redis keeps nothing across a restart (no AOF, no RDB)."""
    yield from _run(request, Cluster(persistent=False))


@pytest.fixture
def patient_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster whose agents wait up to 30 s for a name another instance still holds: a
    replacement started right after its predecessor was killed or frozen joins once the
    predecessor expires, instead of failing with ``name_taken``."""
    yield from _run(request, Cluster(name_wait=30.0))
