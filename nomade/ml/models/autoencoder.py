"""``AutoencoderScorer``: how unlike the normal jobs a job's features are."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from nomade.ml.models.fitting import EPOCH_SIZE, Progress, _Estimator, _tensor, balance, fit_loop
from nomade.ml.models.nets import AENet


def _known_range(X: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1st and 99th percentile of each feature over its known values (0 and 1 for a
    feature never known, e.g. runtime features of a trace); hi > lo always."""
    known = np.where(mask, X, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": never known
        lo, hi = (np.nanpercentile(known, q, axis=0) if len(X) else np.full(X.shape[1], np.nan) for q in (1, 99))
    lo, hi = np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)
    return lo.astype(np.float32), np.where(hi - lo > 1e-6, hi, lo + 1.0).astype(np.float32)


class AutoencoderScorer(_Estimator):
    """Anomaly score in [0, 1]: the share of held-out COMPLETED examples that the
    autoencoder reconstructs better than this one (so ~uniform on normal jobs).

    Inputs are min-max scaled to [0, 1] (1st/99th percentile of completed training
    examples, clipped) to match the sigmoid output; the reconstruction error is the
    mean squared error over the features the mask says are known.
    """

    _params = ("learning_rate", "epochs", "batch_size", "patience", "max_reference_errors", "epoch_size", "seed")

    def __init__(self, learning_rate: float = 1e-3, epochs: int = 100, batch_size: int = 512,
                 patience: int = 10, max_reference_errors: int = 5000, epoch_size: int | None = EPOCH_SIZE,
                 seed: int = 0) -> None:
        self.learning_rate, self.epochs, self.batch_size = learning_rate, epochs, batch_size
        self.patience, self.max_reference_errors = patience, max_reference_errors
        self.epoch_size, self.seed = epoch_size, seed

    def _scaled(self, X: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        z = np.clip((np.asarray(X, np.float32) - self.lo_) / (self.hi_ - self.lo_), 0.0, 1.0)
        return _tensor(np.where(mask, z, 0.0)), _tensor(mask)

    @staticmethod
    def _errors(out: torch.Tensor, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return ((out - x) ** 2 * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def fit(self, X: np.ndarray, mask: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
            val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
            progress: Progress | None = None) -> AutoencoderScorer:
        """Train on the ``y == 0`` rows; ``val`` = (X, mask, y) supplies the held-out
        completed examples (else 10% of the training ones are held out)."""
        ok = np.asarray(y) == 0
        if ok.sum() < 2:
            raise ValueError("the autoencoder needs at least two COMPLETED examples")
        X, mask = np.asarray(X)[ok], np.asarray(mask, bool)[ok]
        w = np.ones(len(X)) if w is None else np.asarray(w, np.float64)[ok]
        rng = np.random.default_rng(self.seed)
        if val is None:
            hold = rng.random(len(X)) < 0.1
            hold[rng.integers(len(X))] = True
            hx, hm, X, mask, w = X[hold], mask[hold], X[~hold], mask[~hold], w[~hold]
        else:
            vok = np.asarray(val[2]) == 0
            hx, hm = np.asarray(val[0])[vok], np.asarray(val[1], bool)[vok]
        self.lo_, self.hi_ = _known_range(X, mask)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.net_ = AENet(X.shape[1])
            xt, mt = self._scaled(X, mask)
            _, p, size = balance(np.zeros(len(X)), w, "none")
            hxt, hmt = self._scaled(hx, hm)

            def step(b: torch.Tensor) -> torch.Tensor:
                e = self._errors(self.net_(xt[b]), xt[b], mt[b])
                return e.mean()

            def validate() -> float:
                with torch.inference_mode():
                    return -float(self._errors(self.net_(hxt), hxt, hmt).mean()) if len(hx) else 0.0

            self.best_epoch_, self.history_ = fit_loop(self.net_, self._epoch(size), step, validate,
                                                       self._schedule(), p, gen, progress)
        errs = np.sort(self.errors(hx, hm))
        if len(errs) > self.max_reference_errors:
            errs = np.quantile(errs, np.linspace(0, 1, self.max_reference_errors))
        self.reference_errors_ = errs.astype(np.float32)
        return self

    def errors(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Reconstruction error float32[n] over the known features."""
        self._check_fitted()
        xt, mt = self._scaled(X, mask)
        with torch.inference_mode():
            return self._errors(self.net_(xt), xt, mt).numpy()

    def score(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Anomaly score float32[n] in [0, 1] (rank among held-out completed errors)."""
        ref = self.reference_errors_
        return (np.searchsorted(ref, self.errors(X, mask), side="right") / max(len(ref), 1)).astype(np.float32)

    def to_state(self) -> dict[str, Any]:
        """Plain containers and tensors (``weights_only``-loadable)."""
        self._check_fitted()
        return {"params": self.get_params(), "n_in": int(len(self.lo_)), "state_dict": self.net_.state_dict(),
                "lo": _tensor(self.lo_), "hi": _tensor(self.hi_),
                "reference_errors": _tensor(self.reference_errors_),
                "best_epoch": self.best_epoch_, "history": list(map(float, self.history_))}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AutoencoderScorer:
        """Inverse of :meth:`to_state`."""
        self = cls(**state["params"])
        self.net_ = AENet(state["n_in"])
        self.net_.load_state_dict(state["state_dict"])
        self.net_.eval()
        self.lo_, self.hi_ = state["lo"].numpy(), state["hi"].numpy()
        self.reference_errors_ = state["reference_errors"].numpy()
        self.best_epoch_, self.history_ = state["best_epoch"], state["history"]
        return self
