"""Threshold calibration: the math, apart from storage and HTTP.

An item alerts when its score is strictly above the threshold. Every method returns the
threshold and what it implies on the model's normal calibration scores; ``what_if`` counts the
alerts a threshold would have raised over a window of recent scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


class CalibrationError(ValueError):
    """The data cannot support the requested calibration (too few scores, one label only)."""


@dataclass(frozen=True)
class FalseAlarmRate:
    """The false-alarm rate a threshold implies for exchangeable normal data.

    ``expected`` is the conformal estimate; ``low``/``high`` bound the realised rate (the rate
    given this calibration set) with probability ``confidence``.
    """

    expected: float
    low: float
    high: float
    confidence: float
    n_calibration: int
    n_above: int  # calibration scores above the threshold


def conformal_threshold(calibration: np.ndarray, alpha: float) -> float:
    """The ⌈(n+1)(1−α)⌉-th smallest calibration score: a new normal score exceeds it with
    probability at most α (split conformal; Vovk et al. 2005, Angelopoulos & Bates 2021 §1)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    n = len(cal)
    if n == 0:
        raise CalibrationError("no calibration scores")
    if not 0 < alpha < 1:
        raise CalibrationError(f"alpha {alpha} must be between 0 and 1")
    rank = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # no float noise past an exact rank
    if rank > n:
        raise CalibrationError(
            f"alpha {alpha} is below 1/(n+1) = {1 / (n + 1):.4g} for {n} calibration scores: "
            "no threshold guarantees it; choose a larger alpha or calibrate on more normal images"
        )
    return float(cal[rank - 1])


def supported_alpha(alpha: float, n: int) -> float:
    """``alpha``, raised to 1/(n+1) when n calibration scores cannot guarantee less (the
    strictest conformal threshold, the largest calibration score, guarantees 1/(n+1))."""
    return max(alpha, 1 / (n + 1))


def false_alarm_rate(
    calibration: np.ndarray, threshold: float, confidence: float = 0.95
) -> FalseAlarmRate:
    """Implied false-alarm rate of ``threshold``: with k of n calibration scores at or below
    it, the realised rate lies between Beta(n−k, k+1) and Beta(n+1−k, k) (the coverage of the
    k-th order statistic and the next); the interval spans their central quantiles."""
    cal = np.asarray(calibration, dtype=np.float64)
    n = len(cal)
    if n == 0:
        raise CalibrationError("no calibration scores")
    k = int(np.sum(cal <= threshold))
    tail = (1 - confidence) / 2
    low = 0.0 if k == n else float(stats.beta.ppf(tail, n - k, k + 1))
    high = 1.0 if k == 0 else float(stats.beta.ppf(1 - tail, n + 1 - k, k))
    return FalseAlarmRate(
        expected=(n + 1 - k) / (n + 1),
        low=low,
        high=high,
        confidence=confidence,
        n_calibration=n,
        n_above=n - k,
    )


def p_values(calibration_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values (1 + #{calibration ≥ s}) / (n + 1); ``calibration_sorted`` ascending.
    Under normality a p-value is (super-)uniform: small means unlike the normal images."""
    n = len(calibration_sorted)
    at_least = n - np.searchsorted(calibration_sorted, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)


def sigma_threshold(calibration: np.ndarray, k: float) -> float:
    """Mean + k·σ of the normal calibration scores."""
    cal = np.asarray(calibration, dtype=np.float64)
    if len(cal) < 2:
        raise CalibrationError("sigma needs at least 2 calibration scores")
    return float(cal.mean() + k * cal.std(ddof=1))


@dataclass(frozen=True)
class LabelFit:
    """A threshold chosen on operator-labelled items, with its quality on them."""

    threshold: float
    precision: float
    recall: float
    f1: float
    n_anomaly: int
    n_normal: int


def _label_curve(scores: np.ndarray, is_anomaly: np.ndarray) -> pd.DataFrame:
    """Precision/recall/F1 of every distinct candidate threshold (alert when score > t).

    Candidates sit just below each distinct score (so that score alerts), plus one above the
    largest (nothing alerts)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError(
            f"labels need both kinds: {n_pos} labelled anomaly, {n_neg} labelled false_alarm "
            "or normal"
        )
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # Keep the last position of each run of equal scores: ties alert together.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp, fp, cut = tp[last], fp[last], s_sorted[last]
    below = np.r_[cut[1:], -np.inf]  # the next lower distinct score
    # A threshold midway between this score and the next lower one alerts exactly these.
    thresholds = np.where(np.isfinite(below), (cut + below) / 2, cut - np.abs(cut) * 1e-9 - 1e-9)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return pd.DataFrame(
        {"threshold": thresholds, "precision": precision, "recall": recall, "f1": f1}
    ).assign(n_anomaly=n_pos, n_normal=n_neg)


def best_f1(scores: np.ndarray, is_anomaly: np.ndarray) -> LabelFit:
    """The threshold with the best F1 on labelled items (the highest such, on ties)."""
    curve = _label_curve(scores, is_anomaly)
    return _fit(curve, int(curve["f1"].to_numpy().argmax()))


def target_precision(scores: np.ndarray, is_anomaly: np.ndarray, precision: float) -> LabelFit:
    """The lowest threshold (most recall) whose precision on labelled items is ≥ ``precision``."""
    curve = _label_curve(scores, is_anomaly)
    ok = np.flatnonzero(curve["precision"].to_numpy() >= precision)
    if len(ok) == 0:
        raise CalibrationError(f"no threshold reaches precision {precision} on the labels")
    return _fit(curve, int(ok[-1]))


def _fit(curve: pd.DataFrame, i: int) -> LabelFit:
    row = curve.iloc[i]
    return LabelFit(
        threshold=float(row["threshold"]),
        precision=float(row["precision"]),
        recall=float(row["recall"]),
        f1=float(row["f1"]),
        n_anomaly=int(row["n_anomaly"]),
        n_normal=int(row["n_normal"]),
    )


def what_if(window: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Per line: items in ``window`` (columns line, score) and how many would alert under
    ``thresholds`` (line → value; lines not in it are left out)."""
    if window.empty or not thresholds:
        return pd.DataFrame(columns=["line", "items", "alerts", "alert_rate", "threshold"])
    df = window[window["line"].isin(thresholds)].copy()
    df["threshold"] = df["line"].map(thresholds)
    df["alert"] = df["score"] > df["threshold"]
    out = (
        df.groupby("line", sort=True)
        .agg(items=("score", "size"), alerts=("alert", "sum"), threshold=("threshold", "first"))
        .reset_index()
    )
    out["alert_rate"] = out["alerts"] / out["items"]
    return out[["line", "items", "alerts", "alert_rate", "threshold"]]
