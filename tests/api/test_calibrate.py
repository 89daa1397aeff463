"""The calibration math against brute force and simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from api.calibrate import (
    CalibrationError,
    best_f1,
    conformal_threshold,
    false_alarm_rate,
    p_values,
    sigma_threshold,
    target_precision,
    what_if,
)


def test_conformal_rank_and_its_limits() -> None:
    cal = np.arange(1, 100, dtype=float)  # n = 99
    assert conformal_threshold(cal, 0.1) == 90.0  # rank ceil(100 * 0.9) = 90
    assert conformal_threshold(cal[::-1], 0.05) == 95.0  # order of input does not matter
    with pytest.raises(CalibrationError, match="below 1/\\(n\\+1\\)"):
        conformal_threshold(cal, 0.005)
    with pytest.raises(CalibrationError):
        conformal_threshold(np.array([]), 0.1)


def test_false_alarm_rate_holds_for_fresh_normal_data() -> None:
    """Over many calibration sets, the realised rate of the fpr threshold falls inside the
    reported interval about as often as its confidence says, and averages at most alpha."""
    rng = np.random.default_rng(0)
    alpha, n, hits, rates = 0.1, 200, 0, []
    for _ in range(400):
        cal = rng.normal(size=n)
        t = conformal_threshold(cal, alpha)
        realised = 0.5 * math.erfc(t / math.sqrt(2))  # P(N(0,1) > t)
        far = false_alarm_rate(cal, t, confidence=0.9)
        hits += far.low <= realised <= far.high
        rates.append(realised)
    assert 0.85 <= hits / 400 <= 0.97
    assert np.mean(rates) <= alpha + 0.005
    assert far.n_calibration == n and far.expected == pytest.approx(
        (n + 1 - math.ceil((n + 1) * (1 - alpha))) / (n + 1)
    )


def test_p_values_count_calibration_scores_at_least_as_high() -> None:
    cal = np.sort(np.array([1.0, 2.0, 3.0, 4.0]))
    got = p_values(cal, np.array([0.5, 2.0, 2.5, 9.0]))
    assert got.tolist() == [5 / 5, 4 / 5, 3 / 5, 1 / 5]


def _brute_f1(scores: np.ndarray, y: np.ndarray) -> float:
    best = 0.0
    for t in np.r_[scores, scores.min() - 1]:
        pred = scores > t
        tp = np.sum(pred & y)
        if tp:
            p, r = tp / pred.sum(), tp / y.sum()
            best = max(best, 2 * p * r / (p + r))
    return best


def test_best_f1_matches_brute_force_and_its_threshold_reproduces_it() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.random(60) < 0.3
        scores = np.round(rng.normal(loc=y * 1.5, size=60), 1)  # ties on purpose
        if y.all() or not y.any():
            continue
        fit = best_f1(scores, y)
        assert fit.f1 == pytest.approx(_brute_f1(scores, y))
        pred = scores > fit.threshold
        tp = np.sum(pred & y)
        assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(fit.f1)


def test_target_precision_takes_the_most_recall() -> None:
    scores = np.array([1, 2, 3, 4, 5, 6], dtype=float)
    y = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
    fit = target_precision(scores, y, 0.75)
    assert (fit.precision, fit.recall) == (0.75, 1.0)
    assert 2 < fit.threshold < 3
    with pytest.raises(CalibrationError, match="both kinds"):
        best_f1(scores, np.ones(6, dtype=bool))


def test_sigma_and_what_if() -> None:
    cal = np.array([1.0, 2.0, 3.0])
    assert sigma_threshold(cal, 2) == pytest.approx(2 + 2 * 1.0)
    window = pd.DataFrame({"line": ["a", "a", "a", "b"], "score": [1.0, 5.0, 9.0, 9.0]})
    out = what_if(window, {"a": 4.0}).set_index("line")
    assert list(out.index) == ["a"] and out.loc["a", "alerts"] == 2 and out.loc["a", "items"] == 3
