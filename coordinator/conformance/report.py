"""What a conformance run reports: one verdict per check, and whether the agent passed.

A check's verdict is ``PASS`` (the rule holds), ``FAIL`` (the agent breaks it: the reason says
how), ``INFO`` (something the check cannot observe over the wire, said rather than passed) or
``SKIP`` (not run: an option was not given, or a check it depends on failed). An agent conforms
when no check fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["CheckResult", "Report", "Verdict"]


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INFO = "INFO"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of one check (``check`` is a dotted id such as ``request.name``)."""

    check: str
    verdict: Verdict
    reason: str

    def line(self, width: int = 24) -> str:
        return f"{self.verdict.value:<4}  {self.check:<{width}}  {self.reason}"


@dataclass(slots=True)
class Report:
    """The results of one run against agent ``name``, in the order the checks ran."""

    name: str
    results: list[CheckResult] = field(default_factory=list)

    def add(self, check: str, verdict: Verdict, reason: str) -> CheckResult:
        result = CheckResult(check, verdict, reason)
        self.results.append(result)
        return result

    def passed(self, check: str, reason: str) -> CheckResult:
        return self.add(check, Verdict.PASS, reason)

    def failed(self, check: str, reason: str) -> CheckResult:
        return self.add(check, Verdict.FAIL, reason)

    def info(self, check: str, reason: str) -> CheckResult:
        return self.add(check, Verdict.INFO, reason)

    def skipped(self, check: str, reason: str) -> CheckResult:
        return self.add(check, Verdict.SKIP, reason)

    def verdict(self, check: str) -> Verdict | None:
        """The verdict of ``check`` (the last one, if it ran twice), or ``None``."""
        for result in reversed(self.results):
            if result.check == check:
                return result.verdict
        return None

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.verdict is Verdict.FAIL]

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    def lines(self) -> list[str]:
        width = max((len(r.check) for r in self.results), default=0)
        return [r.line(width) for r in self.results]

    def summary(self) -> str:
        counts = {v: sum(r.verdict is v for r in self.results) for v in Verdict}
        verdict = "conforms" if self.ok else "does NOT conform"
        return (
            f"{self.name} {verdict}: {counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} "
            f"failed, {counts[Verdict.INFO]} info, {counts[Verdict.SKIP]} skipped"
        )
