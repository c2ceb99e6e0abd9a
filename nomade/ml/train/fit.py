"""Fitting the models on a prepared dataset: the normalised inputs and graph, one fit
per model, the LSTM in its own process when that pays."""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from nomade import features
from nomade.config import Config
from nomade.errors import NomadeError
from nomade.ml import graph, metrics
from nomade.ml.inference import START_PART
from nomade.ml.models import AutoencoderScorer, GNNClassifier, LSTMClassifier, Neighbours, Progress, Reference
from nomade.ml.train.prepare import (
    PARALLEL_MIN_EXAMPLES,
    THRESHOLD,
    VALIDATION_MAX,
    Prepared,
    Reporter,
)


@dataclass
class _Data:
    """Normalised arrays shared by the models."""

    p: Prepared
    Xn: np.ndarray
    Sn: np.ndarray
    ref: Reference
    nbrs: Neighbours

    def nb(self, rows: np.ndarray) -> Neighbours:
        return Neighbours(self.nbrs.idx[rows], self.nbrs.sim[rows], self.nbrs.valid[rows])


def build_data(p: Prepared, norm: features.Normalizer, threshold: float, k: int) -> _Data:
    """Normalise, and find each job's graph neighbours once, by its start-time
    features: every as-of example of a job shares its neighbourhood (see
    ``inference``), and a reference job's own neighbourhood is the same list."""
    Xn = norm.transform(p.X, p.mask)
    ref_x = norm.transform(p.ref_X, p.ref_mask)
    start_mask = np.broadcast_to(START_PART, p.ref_start_X.shape)
    start_x = norm.transform(p.ref_start_X, start_mask)
    own = Neighbours(*graph.neighbours(ref_x, p.ref_end_ts, start_x, p.ref_start_ts, start_mask, threshold, k))
    at = np.searchsorted(p.ref_job, p.job)
    nbrs = Neighbours(own.idx[at], own.sim[at], own.valid[at])
    return _Data(p, Xn, norm.transform_sequences(p.S), Reference.build(ref_x, p.ref_y, p.ref_end_ts, own), nbrs)


def estimators(cfg: Config) -> dict[str, Any]:
    """Unfitted estimators with the hyper-parameters of ``[ml]``/``[ml.training]``.
    The GNN and autoencoder batch is ``max(batch_size, 512)`` (see ``models``)."""
    t, ml = cfg.ml.training, cfg.ml
    big = max(t.batch_size, 512)
    common = {"learning_rate": t.learning_rate, "epochs": t.epochs, "patience": t.patience, "seed": ml.seed}
    return {"gnn": GNNClassifier(hidden_dim=t.hidden_dim, out_dim=max(1, t.hidden_dim // 2), dropout=t.dropout,
                                 batch_size=big, class_balance=ml.class_balance, **common),
            "lstm": LSTMClassifier(hidden_dim=t.hidden_dim, out_dim=max(1, t.hidden_dim // 2), dropout=t.dropout,
                                   batch_size=t.batch_size, class_balance=ml.class_balance, **common),
            "autoencoder": AutoencoderScorer(batch_size=big, **common)}


def fit_one(kind: str, model: Any, d: _Data, progress: Progress | None, seed: int) -> Any:
    """Fit one estimator of :func:`estimators` on the training split of ``d``, early
    stopping on (at most ``VALIDATION_MAX`` seeded) validation examples."""
    args, kwargs = _fit_args(kind, d, seed)
    return model.fit(*args, progress=progress, **kwargs)


def _fit_args(kind: str, d: _Data, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of ``kind``'s ``fit`` (all but ``progress``)."""
    p, tr, va = d.p, d.p.rows("train"), d.p.rows("validation")
    if len(va) > VALIDATION_MAX:
        va = np.sort(np.random.default_rng(seed).choice(va, VALIDATION_MAX, replace=False))
    if kind == "gnn":
        return ((d.ref, d.Xn[tr], d.nb(tr), p.y[tr], p.w[tr]),
                {"val": (d.Xn[va], d.nb(va), p.y[va], p.w[va]) if len(va) else None})
    if kind == "lstm":
        has_va = len(va) and (p.lengths[va] > 0).any()
        return ((d.Sn[tr], p.lengths[tr], p.y[tr], p.w[tr]),
                {"val": (d.Sn[va], p.lengths[va], p.y[va], p.w[va]) if has_va else None})
    return ((d.Xn[tr], p.mask[tr], p.y[tr], p.w[tr]),
            {"val": (d.Xn[va], p.mask[va], p.y[va]) if len(va) else None})


def fit_models(kinds: Sequence[str], cfg: Config, d: _Data, reporter: Reporter | None = None,
               parallel: bool | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit ``kinds`` (in that order) on ``d``; returns the fitted estimators and each
    one's training seconds. Each fit runs on one thread (``models.FIT_THREADS``), so
    with ``parallel`` the LSTM, the longest fit, trains in a spawned process on the
    second core while this one fits the others. Default: parallel when there are
    other models, the LSTM has at least ``PARALLEL_MIN_EXAMPLES`` training examples and
    this process may run on two CPUs. Every fit seeds itself, so the models are the
    same either way. A model that cannot be trained raises ``NomadeError``. As with any
    spawned process, a script that calls this must guard its entry point with
    ``if __name__ == "__main__":`` (else the new process runs the script again, fails,
    and this says so) or pass ``parallel=False``."""
    if parallel is None:
        parallel = (_usable_cpus() >= 2
                    and int((d.p.lengths[d.p.rows("train")] > 0).sum()) >= PARALLEL_MIN_EXAMPLES)
    child = _LSTMProcess(estimators(cfg)["lstm"], _fit_args("lstm", d, cfg.ml.seed)) \
        if parallel and "lstm" in kinds and len(kinds) > 1 else None
    fitted, seconds = {}, {}
    try:
        for kind in kinds:
            if kind == "lstm" and child is not None:
                continue
            t1 = time.monotonic()
            try:
                fitted[kind] = fit_one(kind, estimators(cfg)[kind], d, _progress(reporter, kind), cfg.ml.seed)
            except ValueError as e:
                raise NomadeError(f"cannot train the {kind} model: {e}") from e
            seconds[kind] = time.monotonic() - t1
        if child is not None:
            fitted["lstm"], seconds["lstm"] = child.result(_progress(reporter, "lstm"))
    finally:
        if child is not None:
            child.close()
    return {k: fitted[k] for k in kinds}, seconds


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _progress(reporter: Reporter | None, kind: str) -> Progress | None:
    return None if reporter is None else (lambda e, n, s: reporter(kind, e, n, s))


class _LSTMProcess:
    """The LSTM fit in a spawned process (a fresh interpreter: no fork of a process
    that holds torch threads). Its work goes through a socket pair once it runs (not
    through ``start``, whose bootstrap pipe blocks forever if the process dies before
    reading it); its progress, then its model (a ``torch.save``'d state), come back."""

    def __init__(self, model: LSTMClassifier, fit_args: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_fit_lstm_and_send, args=(theirs,), name="nomade-train-lstm", daemon=True)
        self._proc.start()
        theirs.close()
        try:
            self._conn.send((model, *fit_args))
        except OSError:
            pass  # it ended before reading its work; result() says how

    def result(self, progress: Progress | None) -> tuple[LSTMClassifier, float]:
        """Wait for the fitted model and its training seconds, passing progress on."""
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                self._proc.join()
                raise NomadeError("cannot train the lstm model: its training process ended without a model "
                                  f"(exit code {self._proc.exitcode})") from None
            if msg[0] == "progress":
                if progress is not None:
                    progress(*msg[1:])
            elif msg[0] == "done":
                return LSTMClassifier.from_state(torch.load(io.BytesIO(msg[1]), weights_only=True)), msg[2]
            else:
                raise NomadeError(f"cannot train the lstm model: {msg[1]}")

    def close(self) -> None:
        """Stop the process if it still runs (this side failed) and release it."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._proc.close()
        self._conn.close()


def _fit_lstm_and_send(conn: Connection) -> None:
    """Body of :class:`_LSTMProcess`: receives (model, args, kwargs), sends
    ("progress", epoch, epochs, score) messages, then ("done", ``torch.save``'d state,
    seconds) or ("error", message) for data it cannot learn from."""
    model, args, kwargs = conn.recv()
    t0 = time.monotonic()
    try:
        model.fit(*args, progress=lambda e, n, s: conn.send(("progress", e, n, s)), **kwargs)
    except ValueError as e:
        conn.send(("error", str(e)))
    else:
        state = io.BytesIO()  # as a model file: torch's pickler would send tensors as shared-memory handles
        torch.save(model.to_state(), state)
        conn.send(("done", state.getvalue(), time.monotonic() - t0))
    finally:
        conn.close()


def _predict(kind: str, model: Any, d: _Data, rows: np.ndarray) -> np.ndarray:
    if kind == "gnn":
        return model.predict_proba(d.Xn[rows], d.nb(rows))
    if kind == "lstm":
        return model.predict_proba(d.Sn[rows], d.p.lengths[rows])
    return model.score(d.Xn[rows], d.p.mask[rows])


def _evaluate(y: np.ndarray, w: np.ndarray, score: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(score)
    out = metrics.summary(y[ok], score[ok], THRESHOLD, w[ok]) if ok.any() else {"n": 0}
    out["coverage"] = float(ok.mean()) if len(ok) else 0.0
    return out


