"""model/stats.py: intervals on hand examples, the over-optimisation fits on exact synthetic points,
and the analytic KL of best-of-n."""

from __future__ import annotations

import math

import pytest

from model import rl, stats


def test_paired_interval_hand_example():
    mean, half = stats.paired_interval([1, 0, 1, 1], [0, 0, 1, 0])
    # differences 1, 0, 0, 1: mean 0.5, sd (n - 1) = sqrt(1/3)
    assert mean == 0.5
    assert half == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    assert stats.paired_interval([1, 0, 1, 1], [0, 0, 1, 0], z=1.0)[1] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert stats.paired_interval([0.5, 0.5], [0.5, 0.5]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        stats.paired_interval([1, 0], [1])


def test_stratified_paired_interval_hand_example():
    # task x: diffs [1, 0, 1, 1] (mean 0.75, var 0.25); task y: diffs [0, -1] (mean -0.5, var 0.5)
    a = {"x": [1, 0, 1, 1], "y": [0, 0]}
    b = {"x": [0, 0, 0, 0], "y": [0, 1]}
    mean, half = stats.stratified_paired_interval(a, b)
    assert mean == pytest.approx((0.75 - 0.5) / 2)  # the macro-average: each task weighs the same
    assert half == pytest.approx(1.96 * math.sqrt(0.25 / 4 + 0.5 / 2) / 2)
    # one task: the plain paired interval
    assert stats.stratified_paired_interval({"x": a["x"]}, {"x": b["x"]}) == pytest.approx(stats.paired_interval(a["x"], b["x"]))
    assert stats.stratified_paired_interval({"x": [1.0, 0.0]}, {"x": [1.0, 0.0]}) == (0.0, 0.0)
    with pytest.raises(ValueError):
        stats.stratified_paired_interval({"x": [1]}, {"y": [1]})
    with pytest.raises(ValueError):
        stats.stratified_paired_interval({"x": []}, {"x": []})


def test_mean_interval():
    mean, half = stats.mean_interval([2.0, 4.0, 6.0])
    assert mean == 4.0 and half == pytest.approx(1.96 * 2.0 / math.sqrt(3))
    assert stats.mean_interval([3.0]) == (3.0, math.inf)
    with pytest.raises(ValueError):
        stats.mean_interval([])


def test_wilson_interval():
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # the textbook values
    lo, hi = stats.wilson_interval(10, 10)
    assert hi == 1.0 and 0.69 < lo < 0.73  # stays inside [0, 1], unlike p ± 1.96·sqrt(p(1-p)/n) = [1, 1]
    assert stats.wilson_interval(0, 0) is None


def test_fits_recover_exact_points():
    d = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    r = [x * (0.3 - 0.08 * x) for x in d]
    a, b = stats.fit_best_of_n(d, r)
    assert a == pytest.approx(0.3) and b == pytest.approx(0.08)
    r = [0.0 if x == 0 else x * (0.2 - 0.1 * math.log(x)) for x in d]
    a, b = stats.fit_rl(d, r)  # the d = 0 point is skipped
    assert a == pytest.approx(0.2) and b == pytest.approx(0.1)
    assert stats.curve(a, b, "rl", 2.0) == pytest.approx(r[4]) and stats.curve(a, b, "rl", 0.0) == 0.0
    with pytest.raises(ValueError):
        stats.fit_rl([0.0, 1.0, 1.0], [0.0, 0.1, 0.2])  # one distinct d > 0: underdetermined


def test_peak():
    assert stats.peak(0.3, 0.08, "best_of_n") == pytest.approx(0.3 / 0.16)
    assert stats.peak(0.2, 0.1, "rl") == pytest.approx(math.exp(1.0))
    # the peak is a maximum of the fitted curve
    for a, b, form in ((0.3, 0.08, "best_of_n"), (0.2, 0.1, "rl")):
        p = stats.peak(a, b, form)
        top = stats.curve(a, b, form, p)
        assert top >= stats.curve(a, b, form, 0.9 * p) and top >= stats.curve(a, b, form, 1.1 * p)
    assert stats.peak(0.3, 0.0, "best_of_n") is None and stats.peak(0.3, -0.1, "rl") is None
    assert stats.peak(-0.1, 0.1, "best_of_n") == 0.0  # falls from the start
    with pytest.raises(ValueError):
        stats.peak(1, 1, "ppo")


def test_best_of_n_kl():
    for n in (1, 2, 16, 64):
        assert rl.best_of_n_kl(n) == pytest.approx(math.log(n) - (n - 1) / n)
    assert rl.best_of_n_kl(1) == 0.0
    assert rl.best_of_n_kl(16) == pytest.approx(1.8350887, abs=1e-6)  # 2.7725887 - 0.9375
    assert rl.best_of_n_kl(64) == pytest.approx(3.1745081, abs=1e-6)  # 4.1588831 - 0.984375
