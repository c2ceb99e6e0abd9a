"""``LSTMClassifier``: the sequence model over a job's runtime channels."""

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
from nomade.ml.models.nets import LSTMNet


def with_padding_flag(S: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The LSTM input: ``S`` (left-padded: the valid steps are the last ``lengths``)
    plus one channel that is 1 on padding steps. Masking by flag rather than packing:
    the whole window runs through the LSTM, which learns to carry nothing across the
    flagged steps; faster to train on CPU than packed sequences."""
    T = S.shape[1]
    pad = np.arange(T)[None, :] < (T - np.clip(np.asarray(lengths, np.int64), 0, T))[:, None]
    return np.concatenate([np.where(pad[:, :, None], 0.0, S), pad[:, :, None]], axis=2).astype(np.float32)


class LSTMClassifier(_Estimator):
    """Failure probability of a running job from its recent metric sequence. Jobs
    with no sample yet (length 0) get NaN: no prediction."""

    _params = ("hidden_dim", "out_dim", "dropout", "learning_rate", "epochs", "batch_size",
               "patience", "class_balance", "epoch_size", "seed")

    def __init__(self, hidden_dim: int = 64, out_dim: int = 32, dropout: float = 0.2,
                 learning_rate: float = 1e-3, epochs: int = 100, batch_size: int = 32,
                 patience: int = 10, class_balance: str = "weights", epoch_size: int | None = EPOCH_SIZE,
                 seed: int = 0) -> None:
        self.hidden_dim, self.out_dim, self.dropout = hidden_dim, out_dim, dropout
        self.learning_rate, self.epochs, self.batch_size = learning_rate, epochs, batch_size
        self.patience, self.class_balance, self.epoch_size, self.seed = patience, class_balance, epoch_size, seed

    def fit(self, S: np.ndarray, lengths: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
            val: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None,
            progress: Progress | None = None) -> LSTMClassifier:
        """Train on examples with at least one step; ``val`` = (S, lengths, y, w)."""
        keep = np.asarray(lengths) > 0
        if not keep.any():
            raise ValueError("no example has a sample: the LSTM has nothing to learn from")
        S, lengths, y = S[keep], np.asarray(lengths)[keep], np.asarray(y)[keep]
        w = None if w is None else np.asarray(w)[keep]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.net_ = LSTMNet(S.shape[2] + 1, self.hidden_dim, self.out_dim, self.dropout)
            st = _tensor(with_padding_flag(S, lengths))
            lw, p, size = balance(y, w, self.class_balance)
            yt, lwt = _tensor(y), _tensor(lw)

            def step(b: torch.Tensor) -> torch.Tensor:
                return _logit_loss(self.net_(st[b]), yt[b], lwt[b])

            def validate() -> float:
                vk = np.asarray(val[1]) > 0
                vw = None if val[3] is None else np.asarray(val[3])[vk]
                return _val_score(np.asarray(val[2])[vk], self.predict_proba(val[0][vk], val[1][vk]), vw)

            self.best_epoch_, self.history_ = fit_loop(
                self.net_, self._epoch(size), step, None if val is None else validate,
                self._schedule(), p, gen, progress)
        return self

    def predict_proba(self, S: np.ndarray, lengths: np.ndarray, batch: int = 1024) -> np.ndarray:
        """P(failure) float32[n]; NaN where ``lengths == 0``. ``batch``: rows a forward
        pass (small enough that each step's activations stay in cache)."""
        self._check_fitted()
        lengths = np.minimum(np.asarray(lengths, np.int64), S.shape[1])
        out = np.full(len(lengths), np.nan, np.float32)
        rows = np.flatnonzero(lengths > 0)
        with torch.inference_mode():
            for part in np.array_split(rows, max(1, -(-len(rows) // batch))):
                if len(part):
                    out[part] = torch.sigmoid(self.net_(_tensor(with_padding_flag(S[part], lengths[part])))).numpy()
        return out

    def to_state(self) -> dict[str, Any]:
        """Plain containers and tensors (``weights_only``-loadable)."""
        self._check_fitted()
        return {"params": self.get_params(), "n_channels": self.net_.lstm1.input_size,
                "state_dict": self.net_.state_dict(), "best_epoch": self.best_epoch_,
                "history": list(map(float, self.history_))}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LSTMClassifier:
        """Inverse of :meth:`to_state`."""
        self = cls(**state["params"])
        self.net_ = LSTMNet(state["n_channels"], self.hidden_dim, self.out_dim, self.dropout)
        self.net_.load_state_dict(state["state_dict"])
        self.net_.eval()
        self.best_epoch_, self.history_ = state["best_epoch"], state["history"]
        return self


