"""Repeated timings and what is reported of them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Series:
    """Wall-clock seconds of one figure, one value per repetition."""

    name: str
    routes: int
    seconds: list[float] = field(default_factory=list)
    note: str = ""
    extrapolated: bool = False  # per-route figure measured on a sample

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "routes": self.routes,
            "seconds": self.seconds,
            "min": self.min,
            "median": self.median,
            "max": self.max,
            "note": self.note,
            "extrapolated": self.extrapolated,
        }


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


@dataclass
class Verdict:
    """One target: ``value`` must be <= ``limit`` (a ratio, unit "x"; or
    seconds, unit "s"); with unit "faster", a speed-up that must be >= it."""

    target: str
    value: float
    limit: float
    detail: str
    unit: str = "x"
    informational: bool = False  # shown, but not one of the targets

    @property
    def ok(self) -> bool:
        if self.unit == "faster":
            return self.value >= self.limit
        return self.value <= self.limit

    def line(self) -> str:
        if self.unit == "x":
            shown = f"ratio {self.value:.2f} (limit {self.limit:g})"
        elif self.unit == "faster":
            shown = f"{self.value:.0f}x faster (at least {self.limit:g}x)"
        else:
            shown = f"{self.value * 1000:.1f} ms (limit {self.limit * 1000:g} ms)"
        state = "INFO" if self.informational else "PASS" if self.ok else "FAIL"
        return f"{state}  {self.target}: {shown}; {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "value": self.value,
            "limit": self.limit,
            "unit": self.unit,
            "pass": self.ok,
            "informational": self.informational,
            "detail": self.detail,
        }
