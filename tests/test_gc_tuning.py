"""``tune_gc``: the executable edge (``agentbus run``, ``agent.run()``, the coordinator)
collects garbage cycles less often than Python's default; ``AGENTBUS_GC_THRESHOLD`` sets or
turns it off, and a program's own thresholds are kept."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent_sdk.runner import GC_THRESHOLDS, run_coroutine
from schemas.errors import InvalidInput


@pytest.fixture(autouse=True)
def python_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AGENTBUS_GC_THRESHOLD", raising=False)
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _threshold_while_running() -> tuple[int, ...]:
    seen: list[tuple[int, ...]] = []

    async def main() -> int:
        seen.append(gc.get_threshold())
        return 0

    assert run_coroutine(main()) == 0
    return seen[0]


def test_the_default_is_set_for_the_run() -> None:
    assert _threshold_while_running() == GC_THRESHOLDS


def test_the_variable_sets_the_first_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_GC_THRESHOLD", "20000")
    assert _threshold_while_running() == (20000, *GC_THRESHOLDS[1:])


def test_zero_leaves_pythons_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTBUS_GC_THRESHOLD", "0")
    assert _threshold_while_running() == (700, 10, 10)


def test_a_programs_own_thresholds_are_kept() -> None:
    gc.set_threshold(1234, 5, 6)
    assert _threshold_while_running() == (1234, 5, 6)


@pytest.mark.parametrize("value", ["many", "-1", "1.5"])
def test_a_bad_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AGENTBUS_GC_THRESHOLD", value)

    async def main() -> int:
        raise AssertionError("must not run")

    with pytest.raises(InvalidInput, match="AGENTBUS_GC_THRESHOLD"):
        run_coroutine(main())
    assert gc.get_threshold() == (700, 10, 10)
