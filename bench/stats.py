"""Summaries of samples (latency, throughput) and the rows of the result table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Latency", "Row", "Scalar", "Throughput", "Value", "merge_runs", "percentile"]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency summary in microseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def from_ns(cls, samples_ns: list[int]) -> Latency:
        return cls.from_us([s / 1000 for s in samples_ns])

    @classmethod
    def from_us(cls, samples_us: list[float]) -> Latency:
        values = sorted(samples_us)
        if not values:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(
            n=len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            mean=sum(values) / len(values),
            min=values[0],
            max=values[-1],
        )

    def text(self) -> str:
        return f"{_us(self.p50)} / {_us(self.p99)}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "latency_us", **asdict(self)}


def _us(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 10_000:
        return f"{value / 1000:.1f} ms"
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.0f} µs"


@dataclass(frozen=True, slots=True)
class Throughput:
    """Messages (or operations) per second over a measured window."""

    count: int
    seconds: float
    unit: str = "msg/s"

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    def text(self) -> str:
        rate = self.rate
        if math.isnan(rate):
            return "n/a"
        if rate >= 10_000:
            return f"{rate / 1000:.1f}k {self.unit}"
        return f"{rate:.0f} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "throughput",
            "count": self.count,
            "seconds": self.seconds,
            "rate": self.rate,
            "unit": self.unit,
        }


@dataclass(frozen=True, slots=True)
class Scalar:
    """One number with a unit (CPU %, MB, bytes per agent, seconds)."""

    value: float
    unit: str
    fmt: str = "{:.1f}"

    def text(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.fmt.format(self.value)} {self.unit}".strip()

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "scalar", "value": self.value, "unit": self.unit}


Value = Latency | Throughput | Scalar


@dataclass(slots=True)
class Row:
    """One line of the result table: a measure, its baseline (if any), the target."""

    key: str
    title: str
    value: Value | None
    baseline_name: str = ""
    baseline: Value | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """agentbus / baseline: p50 ratio for latency, rate ratio for throughput."""
        a, b = self.value, self.baseline
        if isinstance(a, Latency) and isinstance(b, Latency) and b.p50 > 0:
            return a.p50 / b.p50
        if isinstance(a, Throughput) and isinstance(b, Throughput) and b.rate > 0:
            return a.rate / b.rate
        if isinstance(a, Scalar) and isinstance(b, Scalar) and b.value > 0:
            return a.value / b.value
        return None

    def ratio_text(self) -> str:
        ratio = self.ratio
        if ratio is None or math.isnan(ratio):
            return ""
        if isinstance(self.value, Throughput):
            return f"{ratio * 100:.0f} %"
        return f"{ratio:.2f}×"

    def met_text(self) -> str:
        return {True: "yes", False: "NO", None: ""}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "value": self.value.as_dict() if self.value else None,
            "value_text": self.value.text() if self.value else "",
            "baseline_name": self.baseline_name,
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "baseline_text": self.baseline.text() if self.baseline else "",
            "ratio": self.ratio,
            "ratio_text": self.ratio_text(),
            "target": self.target,
            "met": self.met,
            "note": self.note,
            "extra": self.extra,
        }


def _primary(row: Row) -> float:
    ratio = row.ratio
    if ratio is not None:
        return ratio
    v = row.value
    if isinstance(v, Latency):
        return v.p50
    if isinstance(v, Throughput):
        return v.rate
    if isinstance(v, Scalar):
        return v.value
    return math.nan


def merge_runs(passes: list[list[Row]]) -> list[Row]:
    """One row per key: the median pass (by ratio when there is a baseline, else by value),
    so each figure keeps the baseline measured beside it; the spread goes into the note."""
    if len(passes) == 1:
        return passes[0]
    by_key: dict[str, list[Row]] = {}
    order: list[str] = []
    for rows in passes:
        for row in rows:
            if row.key not in by_key:
                order.append(row.key)
            by_key.setdefault(row.key, []).append(row)
    merged = []
    for key in order:
        rows = by_key[key]
        measured = [r for r in rows if r.value is not None and not math.isnan(_primary(r))]
        if len(measured) < 2:
            merged.append(rows[0])
            continue
        measured.sort(key=_primary)
        median = measured[(len(measured) - 1) // 2]
        values = [_primary(r) for r in measured]
        what = "ratio" if median.ratio is not None else "value"
        spread = f"median of {len(measured)} runs ({what} {_fmt(values[0])} … {_fmt(values[-1])})"
        median.note = f"{spread}; {median.note}" if median.note else spread
        merged.append(median)
    return merged


def _fmt(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 100 else f"{x:.0f}"
