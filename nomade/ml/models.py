"""The three models of DESIGN "Models" as scikit-learn-style estimators over torch.

Estimator habits: ``__init__`` stores hyper-parameters only; ``fit`` returns self and
sets attributes ending in ``_``; ``predict*`` checks it was fitted; ``seed`` seeds a
forked torch RNG inside ``fit`` so two fits with the same data and seed give the same
weights; ``to_state``/``from_state`` give plain containers and tensors that
``torch.load(..., weights_only=True)`` reads back.

Inputs are already normalised (``features.Normalizer``): ``X`` float32[n, 19] with 0
where masked, ``S`` float32[n, T, C] left-padded (valid steps last) with NaN→0,
``lengths`` int[n] valid steps. The LSTM reads the whole window plus a padding-flag
channel (:func:`with_padding_flag`) instead of packed sequences.

Epochs: examples are drawn with probability ∝ weight (snapshots weigh 1/ticks), and
one epoch is ``round(Σw)`` draws, i.e. one pass over the jobs however many ticks each
ran, capped at ``epoch_size`` (20,000) so that validation and early stopping come
often enough on large histories; ``epochs`` is the maximum, early stopping keeps the
best validation epoch.

GNN: jobs are nodes; a job receives messages only from its ≤ k most similar
*reference* jobs (ended before it started; ``ml.graph.neighbours``). Layer 1 of a
reference job uses its own features and the similarity-weighted mean of its
neighbours' ``[x, label]`` (``Reference.agg``, computed once: those inputs never
change), so layer 2 is a true two-hop layer while scoring a new job needs only its k
neighbour rows (``h1`` of every reference job is computed at load time). The label is
an ended job's final state, known before the query started, so it leaks nothing
(``neighbour_labels=False`` zeroes it: the plain 19-input GraphConv).

Batch sizes: the LSTM uses ``[ml.training] batch_size`` (32) as given; the GNN and
autoencoder, trained on hundreds of thousands of tiny as-of snapshots, default to 512
so that an epoch is not ~10⁴ optimiser steps of microseconds each.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
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


# ------------------------------------------------------------------ graph inputs

@dataclass
class Neighbours:
    """For each query the ≤ k reference rows it receives messages from (``valid``
    marks the real ones; ``idx`` elsewhere is ignored)."""

    idx: np.ndarray
    sim: np.ndarray
    valid: np.ndarray

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Safe indices and similarity weights that sum to 1 per query (0 if none)."""
        valid = np.asarray(self.valid, bool)
        idx = np.where(valid, np.asarray(self.idx, np.int64), 0)
        w = np.where(valid, np.clip(np.asarray(self.sim, np.float64), 0.0, None), 0.0)
        tot = w.sum(axis=1, keepdims=True)
        return idx, (w / np.where(tot > 0, tot, 1.0)).astype(np.float32)


def messages(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Layer-1 message of each reference job: its 19 features and its label."""
    return np.concatenate([np.asarray(x, np.float32), np.asarray(y, np.float32)[:, None]], axis=1)


@dataclass
class Reference:
    """The ended jobs new jobs attach to: normalised final features ``x``, labels
    ``y``, ``end_ts``, and ``agg`` float32[m, 18], each one's own layer-1 input (the
    weighted mean of its neighbours' messages; see :meth:`build`)."""

    x: np.ndarray
    y: np.ndarray
    end_ts: np.ndarray
    agg: np.ndarray

    @classmethod
    def build(cls, x: np.ndarray, y: np.ndarray, end_ts: np.ndarray, own: Neighbours) -> Reference:
        """``own``: each reference job's neighbours among the reference set (jobs that
        ended before it started)."""
        idx, w = own.weights()
        agg = (w[:, :, None] * messages(x, y)[idx]).sum(axis=1) if len(x) else np.zeros((0, 18))
        return cls(np.asarray(x, np.float32), np.asarray(y, np.float32),
                   np.asarray(end_ts, np.float64), agg.astype(np.float32))

    def recent(self, n: int) -> tuple[Reference, np.ndarray]:
        """The ``n`` most recently ended jobs, and their rows in this set."""
        keep = np.sort(np.argsort(self.end_ts, kind="stable")[-n:]) if n < len(self.x) else np.arange(len(self.x))
        return Reference(self.x[keep], self.y[keep], self.end_ts[keep], self.agg[keep]), keep


# ------------------------------------------------------------------ networks

class GNNNet(nn.Module):
    """GraphConv 19→64 → 64→32 (ReLU; ``h' = W_self h + W_nbr mean_sim(h_nbr)``),
    neighbourhood pooling by the similarity-weighted mean, dense 32→1 (logit)."""

    def __init__(self, n_in: int = 19, hidden: int = 64, out: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.self1, self.nbr1 = nn.Linear(n_in, hidden), nn.Linear(n_in + 1, hidden, bias=False)
        self.self2, self.nbr2 = nn.Linear(hidden, out), nn.Linear(hidden, out, bias=False)
        self.head = nn.Linear(out, 1)
        self.drop = nn.Dropout(dropout)

    def layer1(self, x: torch.Tensor, agg: torch.Tensor) -> torch.Tensor:
        """First GraphConv, for queries or reference jobs alike."""
        return self.drop(torch.relu(self.self1(x) + self.nbr1(agg)))

    def forward(self, x: torch.Tensor, agg: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Logits of queries ``x`` [B,19] with layer-1 input ``agg`` [B,20] and the
        pooled neighbour embeddings ``pooled`` [B,64] (see :func:`pool`)."""
        return self.from_neighbour_terms(x, self.nbr1(agg), self.nbr2(pooled))

    def from_neighbour_terms(self, x: torch.Tensor, nbr1: torch.Tensor, nbr2: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` given ``nbr1(agg)`` and ``nbr2(pooled)``, which do not
        depend on ``x`` (reused when scoring variants of the same jobs)."""
        h1 = self.drop(torch.relu(self.self1(x) + nbr1))
        h2 = self.drop(torch.relu(self.self2(h1) + nbr2))
        return self.head(h2).squeeze(-1)


def pool(nbr: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Neighbourhood pooling: similarity-weighted mean of ``nbr`` [B,k,D] (``w`` [B,k]
    sums to 1, or 0 for a job without neighbours)."""
    return (w.unsqueeze(-1) * nbr).sum(dim=1)


class LSTMNet(nn.Module):
    """LSTM(64) → LSTM(32) → dense 32→16 ReLU → 16→1 (logit), read at the last step."""

    def __init__(self, n_channels: int, hidden: int = 64, out: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.lstm1 = nn.LSTM(n_channels, hidden, batch_first=True)
        self.lstm2 = nn.LSTM(hidden, out, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc1, self.fc2 = nn.Linear(out, 16), nn.Linear(16, 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [B,T,C]: left-padded windows ending at the as-of time."""
        out1, _ = self.lstm1(seq)
        _, (h, _) = self.lstm2(self.drop(out1))
        return self.fc2(torch.relu(self.fc1(self.drop(h[-1])))).squeeze(-1)


class AENet(nn.Module):
    """19→12→8→4→8→12→19, ReLU inside, sigmoid out."""

    def __init__(self, n_in: int = 19) -> None:
        super().__init__()
        sizes = [n_in, 12, 8, 4, 8, 12]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(12, n_in), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ------------------------------------------------------------------ training helpers

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


# ------------------------------------------------------------------ GNN

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


# ------------------------------------------------------------------ LSTM

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


# ------------------------------------------------------------------ autoencoder

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
