"""Classification metrics in numpy: AUC-ROC, AUC-PR, precision/recall/F1.

Every function takes labels ``y`` (0/1) and scores (higher = more likely 1), with
optional example weights ``w`` (as-of snapshots are weighted so each job counts once).
Where a metric is undefined it is NaN, never a made-up 0 or 1: the AUCs with one class
only, precision with nothing predicted positive, recall with no positives.
F1 is ``2TP / (2TP + FP + FN)``: 0.0 when there are positives and none is predicted (every
failure missed is the worst score, not an unknown one that a comparison would skip), NaN
only with neither positives nor positive predictions.
"""

from __future__ import annotations

import numpy as np

ROC_POINTS = 200
"""Most points kept of a ROC curve (:func:`roc_curve`)."""


def _inputs(y: np.ndarray, score: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, ...]:
    y = np.asarray(y, dtype=np.float64).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if not (y.shape == score.shape == w.shape):
        raise ValueError(f"y, score and w must have one value per example: {y.shape}, {score.shape}, {w.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(score).all():
        raise ValueError("scores must be finite")
    return y, score, w


def auc_roc(y: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the (weighted) chance that a random positive scores
    above a random negative, ties counting one half (Mann-Whitney with mid-ranks)."""
    y, score, w = _inputs(y, score, w)
    pos, neg = (w * y).sum(), (w * (1 - y)).sum()
    if pos <= 0 or neg <= 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s, yy, ww = score[order], y[order], w[order]
    # group tied scores: negatives strictly below count 1, tied negatives count 1/2
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    neg_w = np.add.reduceat(ww * (1 - yy), starts)
    pos_w = np.add.reduceat(ww * yy, starts)
    below = np.cumsum(neg_w) - neg_w
    return float(((below + 0.5 * neg_w) * pos_w).sum() / (pos * neg))


def auc_pr(y: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> float:
    """Area under the precision-recall curve as average precision: the sum over
    distinct score thresholds of precision × the recall gained there (no interpolation)."""
    y, score, w = _inputs(y, score, w)
    pos = (w * y).sum()
    if pos <= 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, yy, ww = score[order], y[order], w[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(ww * yy)[ends]
    predicted = np.cumsum(ww)[ends]
    recall_gain = np.diff(np.r_[0.0, tp]) / pos
    return float((recall_gain * tp / predicted).sum())


def precision_recall_f1(y: np.ndarray, score: np.ndarray, threshold: float = 0.5,
                        w: np.ndarray | None = None) -> tuple[float, float, float]:
    """Precision, recall and F1 when ``score >= threshold`` is predicted positive (NaN
    where undefined; F1 as in the module docstring)."""
    y, score, w = _inputs(y, score, w)
    hit = score >= threshold
    tp = (w * y * hit).sum()
    predicted, actual = (w * hit).sum(), (w * y).sum()
    precision = tp / predicted if predicted > 0 else float("nan")
    recall = tp / actual if actual > 0 else float("nan")
    f1 = 2 * tp / (predicted + actual) if predicted + actual > 0 else float("nan")
    return float(precision), float(recall), float(f1)


def summary(y: np.ndarray, score: np.ndarray, threshold: float = 0.5,
            w: np.ndarray | None = None) -> dict[str, float]:
    """All metrics of one model on one split, as a JSON-ready dict."""
    precision, recall, f1 = precision_recall_f1(y, score, threshold, w)
    return {"auc_roc": auc_roc(y, score, w), "auc_pr": auc_pr(y, score, w),
            "precision": precision, "recall": recall, "f1": f1,
            "threshold": float(threshold), "n": int(np.size(y)),
            "positives": float(np.sum(np.asarray(y) * (1 if w is None else np.asarray(w))))}


def roc_curve(y: np.ndarray, score: np.ndarray, w: np.ndarray | None = None,
              max_points: int = ROC_POINTS) -> tuple[list[float], list[float]]:
    """Weighted ROC curve ``(fpr, tpr)`` from (0, 0) to (1, 1), one point per distinct
    score (NaN scores left out), thinned evenly to at most ``max_points`` (ends kept);
    ([], []) when either class is missing."""
    y, score = np.asarray(y, np.float64), np.asarray(score, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    ok = np.isfinite(score)
    y, score, w = y[ok], score[ok], w[ok]
    pos, neg = (w * y).sum(), (w * (1 - y)).sum()
    if pos <= 0 or neg <= 0:
        return [], []
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tpr = np.r_[0.0, np.cumsum((w * y)[order])[ends] / pos]
    fpr = np.r_[0.0, np.cumsum((w * (1 - y))[order])[ends] / neg]
    if len(fpr) > max_points:
        keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr.tolist(), tpr.tolist()
