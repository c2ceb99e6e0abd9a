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
        return dict(zip(PARTS, map(float, self.as_array()), strict=True))

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
                  max_examples: int = 20000, defaults: Weights | None = None
                  ) -> tuple[Weights, dict[str, float]]:
    """Weights that maximise validation AUC of the combined risk, searched on a grid
    of the simplex (``step``). ``folds``-fold cross-validation estimates how well the
    choice generalises: weights picked on the other folds, AUC on the held-out fold.

    Returns the weights picked on all the data and ``{"cv_auc": mean held-out AUC,
    "cv_auc_std": ..., "default_cv_auc": the held-out AUC of ``defaults``
    (default :class:`Weights`)}``. At most
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
    defaults = (defaults or Weights()).as_array()
    default_cv = [_auc(parts[fold == f], y[fold == f], w[fold == f], defaults) for f in range(folds)]
    best = grid[int(np.argmax(whole))]
    return Weights(*best), {"cv_auc": float(np.nanmean(cv)), "cv_auc_std": float(np.nanstd(cv)),
                            "default_cv_auc": float(np.nanmean(default_cv)), "folds": folds, "step": step}


MAX_AUC_SE = 0.02
"""Learned weights are used only where the validation AUC's standard error is at most
this: 0.02 is the margin by which the ensemble must beat the plain baselines, so a
smaller split cannot tell weight choices apart better than the prior. At an AUC of
0.8 it takes about 250 failed and 250 completed validation jobs."""


def auc_standard_error(auc: float, positives: float, negatives: float) -> float:
    """Standard error of an AUC measured on ``positives`` and ``negatives`` (Hanley and
    McNeil, 1982); inf with fewer than one of either."""
    if positives < 1 or negatives < 1 or not np.isfinite(auc):
        return float("inf")
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


@dataclass(frozen=True)
class Choice:
    """The weights used, where they come from (``"learned"`` or ``"config"``), why, and
    both candidates with their validation figures."""

    weights: Weights
    source: str
    reason: str
    config: Weights
    learned: Weights | None
    detail: dict[str, float]


def choose_weights(parts: np.ndarray, y: np.ndarray, w: np.ndarray | None, config: Weights,
                   mode: str = "auto", seed: int = 0) -> Choice:
    """Pick the ensemble weights from validation ``parts``/``y``/``w`` (``w`` sums to
    one per job, so ``w``-weighted counts are job counts).

    ``mode`` ``"config"``: the config weights. ``"learned"``: :func:`learn_weights`
    (``ValueError`` if it cannot). ``"auto"`` (the default): learned where the
    validation AUC's standard error is at most :data:`MAX_AUC_SE` and the learned
    weights' cross-validated AUC is not below the config weights' on the same folds,
    else the config weights (the documented prior)."""
    if mode not in ("auto", "learned", "config"):
        raise ValueError(f"mode must be auto, learned or config, got {mode!r}")
    y = np.asarray(y, np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    pos, neg = float((w * y).sum()), float((w * (1 - y)).sum())
    risk = combine(parts, config)
    ok = np.isfinite(risk)
    auc = metrics.auc_roc(y[ok], risk[ok], w[ok]) if ok.any() else float("nan")
    se = auc_standard_error(auc, pos, neg)
    detail = {"validation_failed_jobs": pos, "validation_completed_jobs": neg,
              "config_auc": auc, "auc_se": se, "max_auc_se": MAX_AUC_SE}
    if mode == "config":
        return Choice(config, "config", "asked for", config, None, detail)
    if mode == "auto" and not se <= MAX_AUC_SE:
        return Choice(config, "config", f"validation too small to trust (AUC standard error {se:.3f} "
                      f"> {MAX_AUC_SE})", config, None, detail)
    try:
        learned, cv = learn_weights(parts, y, w, seed=seed, defaults=config)
    except ValueError:
        if mode == "learned":
            raise
        return Choice(config, "config", "weights cannot be learned from this validation split",
                      config, None, detail)
    detail.update(cv)
    if mode == "auto" and cv["cv_auc"] < cv["default_cv_auc"]:
        return Choice(config, "config", f"learned weights do not beat the config weights in cross-validation "
                      f"({cv['cv_auc']:.3f} < {cv['default_cv_auc']:.3f})", config, learned, detail)
    reason = "asked for" if mode == "learned" else f"validation large enough (AUC standard error {se:.3f})"
    return Choice(learned, "learned", reason, config, learned, detail)
