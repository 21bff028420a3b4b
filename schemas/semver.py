"""SemVer 2.0 versions and the ranges discovery filters by (no I/O, no dependencies).

A range is one or more comparators joined by spaces (all must hold) or ``||`` (any group):
``>=1.2.0 <2.0.0``, ``^1.2``, ``~1.4.1``, ``1.x``, ``*``, ``==1.2.3``. Caret and tilde follow the
npm meaning. Pre-releases order below their release (``1.0.0-rc.1 < 1.0.0``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, total_ordering

__all__ = ["Version", "VersionRange", "check_version", "parse_range"]

_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _SEMVER_RE.match(text.strip())
        if not m:
            raise ValueError(
                f"invalid version {text!r}: expected SemVer such as 1.2.3 or 1.2.3-rc.1"
            )
        pre: tuple[int | str, ...] = ()
        if m.group(4):
            pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split("."))
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after its pre-releases; numeric identifiers before alphanumeric ones.
        pre = tuple((0, p) if isinstance(p, int) else (1, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()


@lru_cache(maxsize=1024)
def check_version(text: str) -> str:
    """Return ``text`` if it is valid SemVer 2.0, else raise ``ValueError`` (cached: every
    card validation checks its version, and a fleet shares a few)."""
    Version.parse(text)
    return text


_CMP_RE = re.compile(r"^(\^|~|>=|<=|>|<|==|=)?\s*(.+)$")
_Pred = Callable[[Version], bool]


def _partial(text: str) -> tuple[list[int], tuple[int | str, ...]]:
    """Parse ``1``, ``1.2``, ``1.2.x``, ``1.2.3-rc.1`` into known parts and a pre-release."""
    core, _, pre_text = text.partition("-")
    parts: list[int] = []
    for piece in core.split("."):
        if piece in ("x", "X", "*"):
            break
        if not piece.isdigit():
            raise ValueError(f"invalid version in range: {text!r}")
        parts.append(int(piece))
    if len(parts) > 3 or (pre_text and len(parts) != 3):
        raise ValueError(f"invalid version in range: {text!r}")
    pre = tuple(int(p) if p.isdigit() else p for p in pre_text.split(".")) if pre_text else ()
    return parts, pre


def _bump(parts: list[int], keep: int) -> Version:
    """The lowest version above every version that shares the first ``keep`` parts."""
    high = parts[:keep]
    high[-1] += 1
    high += [0] * (3 - len(high))
    return Version(high[0], high[1], high[2], (0,))  # -0 sorts below every real pre-release


def _comparator(token: str) -> _Pred:
    m = _CMP_RE.match(token)
    if not m:
        raise ValueError(f"invalid range comparator {token!r}")
    op, text = m.group(1) or "=", m.group(2)
    if text in ("*", "x", "X"):
        return lambda v: True
    parts, pre = _partial(text)
    if not parts:
        return lambda v: True
    full = parts + [0] * (3 - len(parts))
    low = Version(full[0], full[1], full[2], pre)
    if op in ("=", "=="):
        if len(parts) == 3:
            return lambda v: v == low
        high = _bump(parts, len(parts))  # 1.2 / 1.2.x means >=1.2.0 <1.3.0
        return lambda v: low <= v < high
    if op == "~":
        high = _bump(parts, min(len(parts), 2))  # ~1.2.3 means >=1.2.3 <1.3.0
        return lambda v: low <= v < high
    if op == "^":
        # bump the first non-zero part among those given (npm semantics)
        keep = next((i + 1 for i, p in enumerate(full[: len(parts)]) if p != 0), len(parts))
        high = _bump(full, keep)
        return lambda v: low <= v < high
    ops: dict[str, _Pred] = {
        ">=": lambda v: v >= low,
        "<=": lambda v: v <= low,
        ">": lambda v: v > low,
        "<": lambda v: v < low,
    }
    return ops[op]


@dataclass(frozen=True, slots=True)
class VersionRange:
    text: str
    groups: tuple[tuple[_Pred, ...], ...]

    def __contains__(self, version: str | Version) -> bool:
        if isinstance(version, str):
            try:
                version = Version.parse(version)
            except ValueError:
                return False
        return any(all(pred(version) for pred in group) for group in self.groups)


@lru_cache(maxsize=256)
def parse_range(text: str) -> VersionRange:
    """Parse a range such as ``>=1.2 <2`` or ``^1.4 || 2.x``; raise ``ValueError`` if invalid."""
    groups: list[tuple[_Pred, ...]] = []
    for group_text in text.split("||"):
        tokens = re.sub(r"(>=|<=|>|<|==|=|\^|~)\s+", r"\1", group_text.strip()).split()
        if not tokens:
            raise ValueError(f"invalid version range {text!r}: empty group")
        groups.append(tuple(_comparator(t) for t in tokens))
    return VersionRange(text, tuple(groups))
