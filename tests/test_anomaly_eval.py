"""The multi-seed evaluation's arithmetic (bench/seed_stats.py): seeds parsed as given, the
tuning seeds kept out of a test report, and the mean, 5th percentile and confidence
interval checked against figures worked out by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

# The bench scripts import each other from their folder, as `python bench/x.py` runs them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from seed_stats import TEST_SEEDS, TUNING_SEEDS, parse_seeds, reportable, summarise


def test_tuning_and_test_seeds_do_not_overlap() -> None:
    assert not set(TUNING_SEEDS) & set(TEST_SEEDS)
    assert len(TEST_SEEDS) >= 20


def test_seeds_are_parsed_as_written() -> None:
    assert parse_seeds("101-104,110, 102") == [101, 102, 103, 104, 110]
    assert parse_seeds("7") == [7]
    for bad in ("", "a-3", "9-3", "1-2-3"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def test_a_test_report_never_shows_a_tuning_seed() -> None:
    results = [{"seed": seed, "figure": seed / 1000} for seed in (3, 101, 10, 11, 124)]
    shown = reportable(results)
    assert [r["seed"] for r in shown] == [101, 11, 124]
    assert [r["seed"] for r in reportable(results, report_tuning=True)] == [3, 10]
    assert [r["seed"] for r in reportable(results, tuning=(101,))] == [3, 10, 11, 124]


def test_summary_of_known_values() -> None:
    # Five seeds: mean 0.9; sample standard deviation sqrt(0.025 / 4) = 0.0790569;
    # t(0.975, 4 degrees of freedom) = 2.776445, so the half-width is
    # 2.776445 * 0.0790569 / sqrt(5) = 0.098162.  5th percentile: a fifth of the way
    # from the lowest (0.80) to the next (0.85): 0.81.
    s = summarise([0.9, 0.95, 1.0, 0.85, 0.8])
    assert s.n == 5 and s.mean == pytest.approx(0.9)
    assert s.p5 == pytest.approx(0.81)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.9 - 0.098162, 0.9 + 0.098162), abs=1e-5)
    assert (s.low, s.high) == (0.8, 1.0)
    assert s.as_dict()["min"] == 0.8


def test_seeds_without_a_figure_are_left_out() -> None:
    s = summarise([1.0, float("nan"), 0.5])
    assert s.n == 2 and s.mean == pytest.approx(0.75) and s.p5 == pytest.approx(0.525)
    one = summarise([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.ci_low)
    assert summarise([]).n == 0
