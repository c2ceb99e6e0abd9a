"""Combining the three model outputs into one risk, and the risk levels.

``risk = Σ wᵢ·partᵢ / Σ wᵢ`` over the parts available for a job (NaN = not
available, e.g. no LSTM before the first sample). Weights come from
``[ml.ensemble]`` or are learned on validation data (:func:`learn_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nomade.ml import metrics

PARTS: tuple[str, ...] = ("gnn", "lstm", "autoencoder")
LEVELS: tuple[tuple[float, str], ...] = ((0.3, "low"), (0.6, "moderate"), (0.8, "high"))
"""Upper bounds (exclusive) of each level; at or above 0.8 it is ``critical``."""
UNKNOWN = "unknown"
"""Level of a job no available model could score (risk NaN)."""


def level(risk: float) -> str:
    """The level name of one risk: < 0.3 low, < 0.6 moderate, < 0.8 high, else critical."""
    if not np.isfinite(risk):
        return UNKNOWN
    for bound, name in LEVELS:
        if risk < bound:
            return name
    return "critical"


def levels(risk: np.ndarray) -> np.ndarray:
    """:func:`level` of each risk, as an object array of str."""
    names = np.array([name for _, name in LEVELS] + ["critical", UNKNOWN], dtype=object)
    code = np.searchsorted(np.array([b for b, _ in LEVELS]), risk, side="right")
    return names[np.where(np.isfinite(risk), code, len(names) - 1)]


@dataclass(frozen=True)
class Weights:
    """Non-negative weights of the parts (not necessarily summing to 1)."""

    gnn: float = 0.4
    lstm: float = 0.35
    autoencoder: float = 0.25

    def __post_init__(self) -> None:
        values = self.as_array()
        if not (np.isfinite(values).all() and (values >= 0).all() and values.sum() > 0):
            raise ValueError(f"ensemble weights must be >= 0 and not all 0, got {self.as_dict()}")

    def as_array(self) -> np.ndarray:
        return np.array([self.gnn, self.lstm, self.autoencoder], dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(PARTS, map(float, self.as_array())))

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> Weights:
        """From ``{"gnn": .., "lstm": .., "autoencoder": ..}``; ``ValueError`` if a key is
        missing or a value is not a number."""
        try:
            return cls(*(float(data[k]) for k in PARTS))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"ensemble weights need numbers for {PARTS}: {e}") from e


def combine(parts: np.ndarray, weights: Weights) -> np.ndarray:
    """Risk float64[n] from ``parts`` float[n, 3] (columns in ``PARTS`` order, NaN where
    not available), weights renormalised per job; NaN where no part is available."""
    parts = np.asarray(parts, np.float64)
    have = np.isfinite(parts)
    w = np.where(have, weights.as_array()[None, :], 0.0)
    tot = w.sum(axis=1)
    risk = (w * np.where(have, parts, 0.0)).sum(axis=1) / np.where(tot > 0, tot, 1.0)
    return np.where(tot > 0, risk, np.nan)


def _simplex(step: float) -> np.ndarray:
    """Every weight triple on a grid of ``step`` that sums to 1."""
    n = int(round(1 / step))
    return np.array([(a, b, n - a - b) for a in range(n + 1) for b in range(n + 1 - a)], np.float64) / n


def _auc(parts: np.ndarray, y: np.ndarray, w: np.ndarray, weights: np.ndarray) -> float:
    """AUC of the combined risk over the rows some part scores; NaN (not a candidate)
    if these weights leave one of them without a risk (e.g. LSTM only: no risk before
    a job's first sample)."""
    if weights.sum() <= 0:
        return float("nan")
    risk = combine(parts, Weights(*weights))
    ok = np.isfinite(parts).any(axis=1)
    if not np.isfinite(risk[ok]).all():
        return float("nan")
    return metrics.auc_roc(y[ok], risk[ok], w[ok])


def learn_weights(parts: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                  folds: int = 5, step: float = 0.05, seed: int = 0,
                  max_examples: int = 20000) -> tuple[Weights, dict[str, float]]:
    """Weights that maximise validation AUC of the combined risk, searched on a grid
    of the simplex (``step``). ``folds``-fold cross-validation estimates how well the
    choice generalises: weights picked on the other folds, AUC on the held-out fold.

    Returns the weights picked on all the data and ``{"cv_auc": mean held-out AUC,
    "cv_auc_std": ..., "default_cv_auc": the defaults' held-out AUC}``. At most
    ``max_examples`` (a seeded subsample) are used, to keep the search to seconds.
    """
    parts, y = np.asarray(parts, np.float64), np.asarray(y, np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    rng = np.random.default_rng(seed)
    if len(y) > max_examples:
        pick = rng.choice(len(y), max_examples, replace=False)
        parts, y, w = parts[pick], y[pick], w[pick]
    if len(np.unique(y)) < 2:
        raise ValueError("learning ensemble weights needs both failed and completed jobs in the validation data")
    grid = _simplex(step)
    absent = ~np.isfinite(parts).any(axis=0)  # a model not trained: weight 0, not an arbitrary tie
    grid = grid[(grid[:, absent] == 0).all(axis=1)]
    whole = np.array([_auc(parts, y, w, g) for g in grid])
    if not np.isfinite(whole).any():
        raise ValueError("no weights give every validation example a risk with an AUC")
    grid, whole = grid[np.isfinite(whole)], whole[np.isfinite(whole)]
    fold = rng.permutation(len(y)) % folds
    auc = np.array([[_auc(parts[fold != f], y[fold != f], w[fold != f], g) for g in grid] for f in range(folds)])
    held = np.array([[_auc(parts[fold == f], y[fold == f], w[fold == f], g) for g in grid] for f in range(folds)])
    chosen = np.nanargmax(np.where(np.isfinite(auc), auc, -np.inf), axis=1)
    cv = held[np.arange(folds), chosen]
    defaults = Weights().as_array()
    default_cv = [_auc(parts[fold == f], y[fold == f], w[fold == f], defaults) for f in range(folds)]
    best = grid[int(np.argmax(whole))]
    return Weights(*best), {"cv_auc": float(np.nanmean(cv)), "cv_auc_std": float(np.nanstd(cv)),
                            "default_cv_auc": float(np.nanmean(default_cv)), "folds": folds, "step": step}
