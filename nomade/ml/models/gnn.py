"""``GNNClassifier``: the graph model over a job's most similar reference jobs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nomade.ml.models.fitting import (
    EPOCH_SIZE,
    Progress,
    _Estimator,
    _logit_loss,
    _tensor,
    _val_score,
    balance,
    fit_loop,
)
from nomade.ml.models.nets import GNNNet, Neighbours, Reference, messages, pool


class GNNClassifier(_Estimator):
    """Failure probability of a job from itself and its most similar ended jobs."""

    _params = ("hidden_dim", "out_dim", "dropout", "learning_rate", "epochs", "batch_size",
               "patience", "class_balance", "neighbour_labels", "epoch_size", "seed")

    def __init__(self, hidden_dim: int = 64, out_dim: int = 32, dropout: float = 0.2,
                 learning_rate: float = 1e-3, epochs: int = 100, batch_size: int = 512,
                 patience: int = 10, class_balance: str = "weights", neighbour_labels: bool = True,
                 epoch_size: int | None = EPOCH_SIZE, seed: int = 0) -> None:
        self.hidden_dim, self.out_dim, self.dropout = hidden_dim, out_dim, dropout
        self.learning_rate, self.epochs, self.batch_size = learning_rate, epochs, batch_size
        self.patience, self.class_balance = patience, class_balance
        self.neighbour_labels, self.epoch_size, self.seed = neighbour_labels, epoch_size, seed

    def _ref_tensors(self, ref: Reference) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        agg = ref.agg.copy()
        if not self.neighbour_labels:
            agg[:, -1] = 0.0  # the label column of the neighbours' mean message
        msg = messages(ref.x, ref.y if self.neighbour_labels else np.zeros(len(ref.y)))
        return _tensor(ref.x), _tensor(agg), _tensor(msg)

    def _neighbourhood(self, idx: torch.Tensor, w: torch.Tensor,
                       h1: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-1 input and pooled layer-1 embeddings of the queries' neighbourhoods;
        ``h1`` = cached reference embeddings (inference), else computed with grad."""
        ref_x, ref_agg, ref_msg = self._ref_t
        agg = pool(ref_msg[idx], w)
        if h1 is None:
            flat = idx.reshape(-1)
            nbr = self.net_.layer1(ref_x[flat], ref_agg[flat]).reshape(*idx.shape, -1)
        else:
            nbr = h1[idx]
        return agg, pool(nbr, w)

    def fit(self, ref: Reference, X: np.ndarray, nbrs: Neighbours, y: np.ndarray,
            w: np.ndarray | None = None,
            val: tuple[np.ndarray, Neighbours, np.ndarray, np.ndarray | None] | None = None,
            progress: Progress | None = None) -> GNNClassifier:
        """Train on queries ``X`` whose neighbours ``nbrs`` index ``ref``; ``val`` =
        (X, nbrs, y, w) for early stopping on validation AUC."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.net_ = GNNNet(X.shape[1], self.hidden_dim, self.out_dim, self.dropout)
            self.reference_ = ref
            self._ref_t = self._ref_tensors(ref)
            idx, wn = nbrs.weights()
            xt, it, wt = _tensor(X), _tensor(idx, torch.int64), _tensor(wn)
            lw, p, size = balance(y, w, self.class_balance)
            yt, lwt = _tensor(y), _tensor(lw)

            def step(b: torch.Tensor) -> torch.Tensor:
                agg, pooled = self._neighbourhood(it[b], wt[b], None)
                return _logit_loss(self.net_(xt[b], agg, pooled), yt[b], lwt[b])

            def validate() -> float:
                self._cache()
                return _val_score(val[2], self.predict_proba(val[0], val[1]), val[3])


            self.best_epoch_, self.history_ = fit_loop(
                self.net_, self._epoch(size), step, None if val is None else validate,
                self._schedule(), p, gen, progress)
        self._cache()
        return self

    def _cache(self) -> None:
        with torch.inference_mode():
            self.net_.eval()
            self._h1 = self.net_.layer1(self._ref_t[0], self._ref_t[1])

    def predict_proba(self, X: np.ndarray, nbrs: Neighbours) -> np.ndarray:
        """P(failure) float32[n] of queries whose neighbours index ``reference_``."""
        return self.predict_proba_variants([X], nbrs)[0]

    def predict_proba_variants(self, variants: list[np.ndarray], nbrs: Neighbours) -> list[np.ndarray]:
        """:meth:`predict_proba` of several versions of the same queries (e.g. with one
        feature replaced, for explanations): the neighbourhood is gathered once."""
        self._check_fitted()
        idx, wn = nbrs.weights()
        with torch.inference_mode():
            agg, pooled = self._neighbourhood(_tensor(idx, torch.int64), _tensor(wn), self._h1)
            nbr1, nbr2 = self.net_.nbr1(agg), self.net_.nbr2(pooled)
            return [torch.sigmoid(self.net_.from_neighbour_terms(_tensor(X), nbr1, nbr2)).numpy() for X in variants]

    def keep_recent(self, n: int) -> np.ndarray:
        """Keep only the ``n`` most recently ended reference jobs (live scoring cost
        and file size); returns the kept rows of the old reference set."""
        self._check_fitted()
        self.reference_, keep = self.reference_.recent(n)
        self._ref_t = self._ref_tensors(self.reference_)
        self._cache()
        return keep

    def to_state(self) -> dict[str, Any]:
        """Plain containers and tensors (``weights_only``-loadable)."""
        self._check_fitted()
        ref = self.reference_
        return {"params": self.get_params(), "n_in": int(ref.x.shape[1]),
                "state_dict": self.net_.state_dict(), "best_epoch": self.best_epoch_,
                "history": list(map(float, self.history_)),
                "reference": {"x": _tensor(ref.x), "y": _tensor(ref.y),
                              "end_ts": _tensor(ref.end_ts, torch.float64), "agg": _tensor(ref.agg)}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GNNClassifier:
        """Inverse of :meth:`to_state`."""
        self = cls(**state["params"])
        r = state["reference"]
        self.reference_ = Reference(r["x"].numpy(), r["y"].numpy(), r["end_ts"].numpy(), r["agg"].numpy())
        self.net_ = GNNNet(state["n_in"], self.hidden_dim, self.out_dim, self.dropout)
        self.net_.load_state_dict(state["state_dict"])
        self.best_epoch_, self.history_ = state["best_epoch"], state["history"]
        self._ref_t = self._ref_tensors(self.reference_)
        self._cache()
        return self


