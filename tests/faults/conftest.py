"""Fixtures of the fault suite: a ``Cluster`` (private Redis + child processes) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import Cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def volatile_cluster() -> Iterator[Cluster]:
    """A cluster whose Redis keeps nothing across a restart (no AOF, no RDB)."""
    c = Cluster(persistent=False)
    try:
        yield c
    finally:
        c.close()
