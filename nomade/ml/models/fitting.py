"""What every model's ``fit`` shares: class balance, epochs of weighted draws, early
stopping on the validation score, one thread per fit; the estimator base class."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nomade.ml import metrics

Progress = Callable[[int, int, float], None]
"""``progress(epoch, epochs, validation_score)`` after each epoch."""

BALANCE_MODES = ("weights", "oversample", "none")
EPOCH_SIZE = 20000
"""Most draws per epoch: validation (and early stopping) happens at least this often,
so a large history does not spend ``patience`` full passes after the best epoch."""
MIN_EPOCH_DRAWS = 1024
"""Fewest draws per epoch, so that a first history of a few dozen jobs still gets
enough optimiser steps to move the models off their prior."""
FIT_THREADS = 1
"""Intra-op threads while a model trains (restored afterwards): the steps are so small
that a second thread only adds a barrier to every op, which a busy core turns into
long waits. Parallelism across models is ``train.fit_models``' business."""


class NotFittedError(RuntimeError):
    """A model was used before ``fit`` (or ``from_state``)."""


def balance(y: np.ndarray, w: np.ndarray | None, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Loss weights, sampling probabilities and epoch size for ``ml.class_balance``.

    Examples are drawn with probability ∝ their weight ``w`` (as-of snapshots carry
    1/ticks, so every job counts once), ``round(sum(w))`` draws an epoch: one epoch
    is one pass over the jobs, however many ticks each ran. Then ``weights``: the
    loss weights each class to half the total; ``oversample``: the draws do (each
    class is half of every epoch), loss weights 1; ``none``: neither.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"class_balance must be one of {BALANCE_MODES}, got {mode!r}")
    y = np.asarray(y, np.float64)
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    if len(y) == 0 or not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError("no training examples, or example weights that are not finite, >= 0 and > 0 in sum")
    per_class = np.array([w[y == 0].sum(), w[y == 1].sum()])
    scale = np.where(per_class > 0, w.sum() / (2 * np.maximum(per_class, 1e-12)), 0.0)[y.astype(np.int64)]
    size = max(1, int(round(w.sum())))
    ones = np.ones(len(y), np.float32)
    if mode == "weights":
        return scale.astype(np.float32), w / w.sum(), size
    if mode == "oversample":
        return ones, w * scale / (w * scale).sum(), size
    return ones, w / w.sum(), size


def _epochs(size: int, batch: int, p: np.ndarray, gen: torch.Generator):
    """Index batches of one epoch: ``size`` draws with probabilities ``p``."""
    order = torch.multinomial(torch.from_numpy(p), size, replacement=True, generator=gen)
    return torch.split(order, batch)


@dataclass
class _Schedule:
    """Optimiser and early-stopping settings shared by the three estimators."""

    learning_rate: float
    epochs: int
    batch_size: int
    patience: int


def fit_loop(net: nn.Module, size: int, step_loss: Callable[[torch.Tensor], torch.Tensor],
             validate: Callable[[], float] | None, sched: _Schedule, p: np.ndarray,
             gen: torch.Generator, progress: Progress | None) -> tuple[int, list[float]]:
    """Adam over batches of ``size`` weighted draws; after each epoch ``validate()``
    (higher is better) and keep the best weights; stop after ``patience`` epochs
    without improvement. Returns the best epoch (1-based) and the validation history.
    Runs with :data:`FIT_THREADS` intra-op threads."""
    with _threads(FIT_THREADS):
        return _fit_epochs(net, size, step_loss, validate, sched, p, gen, progress)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_epochs(net: nn.Module, size: int, step_loss: Callable[[torch.Tensor], torch.Tensor],
                validate: Callable[[], float] | None, sched: _Schedule, p: np.ndarray,
                gen: torch.Generator, progress: Progress | None) -> tuple[int, list[float]]:
    opt = torch.optim.Adam(net.parameters(), lr=sched.learning_rate)
    best, best_epoch, best_state, history = -np.inf, 0, None, []
    for epoch in range(1, sched.epochs + 1):
        net.train()
        for batch in _epochs(size, sched.batch_size, p, gen):
            opt.zero_grad()
            step_loss(batch).backward()
            opt.step()
        net.eval()
        score = validate() if validate is not None else float(epoch)
        history.append(score)
        if progress is not None:
            progress(epoch, sched.epochs, score)
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= sched.patience:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return best_epoch, history


def _val_score(y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> float:
    """Validation AUC; weighted log-loss (negated) where AUC is undefined."""
    auc = metrics.auc_roc(y, p, w)
    if np.isfinite(auc):
        return auc
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(np.average(y * np.log(p) + (1 - y) * np.log(1 - p), weights=w))


def _logit_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


class _Estimator:
    """Shared parts: hyper-parameter dict, fitted check, seeded fit context."""

    _params: tuple[str, ...] = ()

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (plain values)."""
        return {k: getattr(self, k) for k in self._params}

    def _check_fitted(self) -> None:
        if getattr(self, "net_", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or from_state() first")

    def _schedule(self) -> _Schedule:
        return _Schedule(self.learning_rate, self.epochs, self.batch_size, self.patience)

    def _epoch(self, size: int) -> int:
        """Draws per epoch: one pass over the jobs, at least ``MIN_EPOCH_DRAWS`` and at
        most ``epoch_size``."""
        size = max(size, MIN_EPOCH_DRAWS)
        return size if self.epoch_size is None else max(1, min(size, self.epoch_size))


def _tensor(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


