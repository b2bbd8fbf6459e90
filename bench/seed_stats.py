"""Figures over many seeds of the detection evaluation: which seeds tune and which test,
and the mean, 5th percentile and confidence interval of a per-seed figure
(bench/eval_detection.py, docs/detection-quality.md)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

TUNING_SEEDS: tuple[int, ...] = tuple(range(1, 11))
"""Seeds the settings were chosen on: their figures are never reported as results."""
TEST_SEEDS: tuple[int, ...] = tuple(range(101, 121))
"""Seeds the reported figures come from (none of them was looked at while tuning)."""


def parse_seeds(text: str) -> list[int]:
    """Seeds from "101-124,130": ranges inclusive, in the order given, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError as err:
            raise ValueError(f"seeds {text!r}: {part!r} is not a seed or a range of seeds") from err
        if last < first:
            raise ValueError(f"seeds {text!r}: the range {part!r} ends before it starts")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    if not seeds:
        raise ValueError(f"seeds {text!r}: no seed")
    return seeds


def reportable(results: Iterable[Mapping[str, Any]], tuning: Sequence[int] = TUNING_SEEDS,
               report_tuning: bool = False) -> list[Mapping[str, Any]]:
    """The per-seed results a report may show: a test report leaves out every tuning seed
    (`report_tuning`: the tuning set's own report, its seeds only)."""
    chosen = set(tuning)
    return [r for r in results if (int(r["seed"]) in chosen) == report_tuning]


@dataclass(frozen=True)
class Summary:
    """A figure over seeds: how many seeds had it, their mean, 5th percentile (linear
    interpolation between order statistics, numpy's default), the two-sided 95% Student
    t interval of the mean, and the lowest and highest seed."""

    n: int
    mean: float
    p5: float
    ci_low: float
    ci_high: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "p5": self.p5, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "min": self.low, "max": self.high}


def summarise(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """The Summary of per-seed values; NaN (a seed without positives of a kind) is left out."""
    array = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    n = len(array)
    if not n:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan)
    mean = float(array.mean())
    if n > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(array.std(ddof=1)) / math.sqrt(n)
    else:
        half = float("nan")
    return Summary(n, mean, float(np.percentile(array, 5)), mean - half, mean + half, float(array.min()),
                   float(array.max()))
