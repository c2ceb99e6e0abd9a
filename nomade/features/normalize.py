"""``Normalizer``: per-feature standardisation fitted on known values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nomade.features.columns import FEATURES, N_FEATURES, N_START, PRIOR_STRENGTH, WINDOW_S


@dataclass
class Normalizer:
    """Per-feature standardisation fitted on known values only; JSON-safe.

    ``transform`` gives ``clip((x - mean) / std, -CLIP, CLIP)`` and 0 where masked,
    after clipping x into the range the known training values fill (``lo_``, ``hi_``:
    their weighted ``TAIL`` and ``1 - TAIL`` quantiles): a model is never asked about
    values it saw too few of to have learnt anything. The extreme values alone are not
    that range: a starter trained on light lab jobs had three examples at 77 % CPU
    efficiency (page thrashing) and read a site's busy job at 95 % as those three, at a
    risk of 0.06 from one training and 0.5 from the next; now it reads it as the
    busiest 0.5 % of the corpus's examples, which it knows. ``mean``/``std`` are of the
    clipped values, so that a few start-up spikes (memory growing 100 times faster for
    one sample) do not shrink every steady rate to nothing. Follows the estimator
    contract: ``fit`` returns self and sets ``mean_``/``std_``/``lo_``/``hi_``.
    """

    CLIP = 10.0
    TAIL = 0.005
    """Share of the known training values (by weight) left beyond each edge of the range."""
    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None
    lo_: np.ndarray | None = None
    hi_: np.ndarray | None = None

    def fit(self, X: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None) -> Normalizer:
        """Each feature's range (weighted ``TAIL`` quantiles), then its weighted mean and std
        after clipping to that range, over the examples where it is known."""
        X, mask = np.asarray(X, np.float64), np.asarray(mask, bool)
        w = np.ones(len(X)) if weight is None else np.asarray(weight, np.float64)
        mask = mask & (w[:, None] > 0)
        edges = np.array([_weighted_quantiles(X[mask[:, j], j], w[mask[:, j]], (self.TAIL, 1.0 - self.TAIL))
                          for j in range(X.shape[1])])
        self.lo_, self.hi_ = edges[:, 0], edges[:, 1]
        X = self._clipped(X)
        wm = mask * w[:, None]
        tot = wm.sum(axis=0)
        mean = np.where(tot > 0, (wm * X).sum(axis=0) / np.where(tot > 0, tot, 1.0), 0.0)
        var = np.where(tot > 0, (wm * (X - mean) ** 2).sum(axis=0) / np.where(tot > 0, tot, 1.0), 0.0)
        std = np.sqrt(var)
        self.mean_, self.std_ = mean, np.where(std > 1e-9, std, 1.0)
        return self

    def _clipped(self, X: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if self.lo_ is None or self.hi_ is None:
            return X
        clipped: np.ndarray = np.clip(X, self.lo_[cols], self.hi_[cols])
        return clipped

    def _check(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("Normalizer is not fitted: call fit() or from_dict() first")
        return self.mean_, self.std_

    def transform(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Normalised float32[n, N_FEATURES]; 0 where ``mask`` is False."""
        mean, std = self._check()
        z = np.clip((self._clipped(X) - mean) / std, -self.CLIP, self.CLIP)
        return np.where(mask, z, 0.0).astype(np.float32)

    def transform_sequences(self, S: np.ndarray) -> np.ndarray:
        """Normalise :func:`sequences` output with the stats of features 7-19; NaN
        (padding, unknown) becomes 0."""
        mean, std = self._check()
        S = self._clipped(S, slice(N_START, None))   # NaN stays NaN
        z = np.clip((S - mean[N_START:]) / std[N_START:], -self.CLIP, self.CLIP)
        out: np.ndarray = np.nan_to_num(z, nan=0.0).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the feature list so a mismatch is caught on load."""
        mean, std = self._check()
        out = {"version": 1, "features": list(FEATURES), "window_s": WINDOW_S,
               "prior_strength": PRIOR_STRENGTH, "mean": mean.tolist(), "std": std.tolist()}
        if self.lo_ is not None and self.hi_ is not None:   # JSON has no infinity: None is "unbounded"
            out["lo"] = [None if not np.isfinite(v) else float(v) for v in self.lo_]
            out["hi"] = [None if not np.isfinite(v) else float(v) for v in self.hi_]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`; ``ValueError`` if written for other features."""
        if data.get("version") != 1 or list(data.get("features", [])) != list(FEATURES):
            raise ValueError("normalisation was saved for another feature set "
                             f"(version {data.get('version')!r}, features {data.get('features')!r})")
        mean, std = np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64)
        if mean.shape != (N_FEATURES,) or std.shape != (N_FEATURES,) or not (std > 0).all():
            raise ValueError(f"normalisation mean/std must be {N_FEATURES} numbers each, std > 0")
        if "lo" not in data:   # saved before the training range was kept: no clipping
            return cls(mean_=mean, std_=std)
        lo = np.array([-np.inf if v is None else float(v) for v in data["lo"]])
        hi = np.array([np.inf if v is None else float(v) for v in data["hi"]])
        if lo.shape != (N_FEATURES,) or hi.shape != (N_FEATURES,) or not (lo <= hi).all():
            raise ValueError(f"normalisation lo/hi must be {N_FEATURES} numbers each, lo <= hi")
        return cls(mean_=mean, std_=std, lo_=lo, hi_=hi)


def _weighted_quantiles(x: np.ndarray, w: np.ndarray, qs: tuple[float, float]) -> tuple[float, float]:
    """The smallest ``x`` at or below which a share ``q`` of the weight ``w`` lies, for
    each ``q`` of ``qs`` (-inf and +inf when ``x`` is empty: a feature never known is not
    bounded)."""
    if not len(x):
        return -np.inf, np.inf
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    at = np.minimum(np.searchsorted(cum, np.asarray(qs) * cum[-1]), len(x) - 1)
    lo, hi = x[order[at]]
    return float(lo), float(hi)
