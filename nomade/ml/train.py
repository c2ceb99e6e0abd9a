"""Training pipeline: prepare a dataset, fit the models, evaluate, save.

``prepare(jobs, samples, ...)`` turns a :class:`features.JobTable` and
:class:`features.SampleTable` into a :class:`Prepared` dataset of as-of examples
(every scoring tick of an ended job, weighted so each job counts once), the reference
set (ended jobs' final features, what new jobs attach to in the graph), and a split
by job start time: the earliest 80% of jobs train, the next 10% validate, the last
10% test. ``fit_and_save(prepared, cfg, ...)`` normalises, builds the graph, trains the
chosen models with early stopping on validation AUC, evaluates them and the ensemble
on validation and test, and writes the model files (``persist``).

No leakage by construction: an example's features are as of its tick; its neighbours
ended before its job started; validation/test jobs start after every training job.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nomade import features
from nomade.config import Config
from nomade.errors import NomadeError
from nomade.ml import graph, metrics, persist
from nomade.ml.baselines import time_split
from nomade.ml.ensemble import PARTS, Weights, choose_weights, combine
from nomade.ml.evidence import EVIDENCE_KEY, Evidence, raise_risk
from nomade.ml.inference import START_PART, reference_stats
from nomade.ml.models import AutoencoderScorer, GNNClassifier, LSTMClassifier, Neighbours, Progress, Reference

Reporter = Callable[[str, int, int, float], None]
"""``reporter(model, epoch, epochs, validation_score)``."""
SPLITS = ("train", "validation", "test")
REFERENCE_SIZE = 20000
"""Most recently ended jobs kept as the GNN's live reference set (scoring cost, file size)."""
VALIDATION_MAX = 20000
"""Validation examples (a seeded subsample) scored after each epoch for early stopping."""
PARALLEL_MIN_EXAMPLES = 20000
"""LSTM training examples (with samples) from which :func:`fit_models` trains the LSTM
in its own process by default: below, starting it (~2-3 s) saves little."""
THRESHOLD = 0.5
"""Score at which precision/recall/F1 count a prediction as "will fail"."""


@dataclass
class Prepared:
    """A prepared dataset (``.npz``). Examples: ``X``/``mask`` raw as-of features,
    ``S``/``lengths`` sequences, ``y`` label, ``w`` weight, ``job`` row into the
    job arrays, ``t`` as-of time, ``start_ts`` of the job, ``split`` 0/1/2. Reference
    (ended labelled jobs, final features): ``ref_X``, ``ref_mask``, ``ref_start_ts``,
    ``ref_end_ts``, ``ref_y``, ``ref_job`` (job row, sorted), and ``ref_start_X``, the
    start-time features as of the job's start (what its graph neighbours are found
    by). ``summary``: JSON-safe description of the data."""

    X: np.ndarray
    mask: np.ndarray
    S: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    w: np.ndarray
    job: np.ndarray
    t: np.ndarray
    start_ts: np.ndarray
    split: np.ndarray
    ref_X: np.ndarray
    ref_mask: np.ndarray
    ref_start_ts: np.ndarray
    ref_end_ts: np.ndarray
    ref_y: np.ndarray
    ref_job: np.ndarray
    ref_start_X: np.ndarray
    summary: dict[str, Any]

    def save(self, path: str | Path) -> None:
        """Write atomically as a compressed ``.npz`` (no pickles)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "summary"}
        np.savez_compressed(tmp, summary=np.array(json.dumps(persist.clean_json(self.summary))), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Prepared:
        """Read a file written by :meth:`save`; ``NomadeError`` if it is not one."""
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                data = {f.name: z[f.name] for f in fields(cls) if f.name != "summary"}
                summary = json.loads(str(z["summary"]))
        except FileNotFoundError as e:
            raise NomadeError(f"{path}: no prepared dataset; run `nomade train --prepare` first") from e
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
            raise NomadeError(f"{path}: not a prepared dataset ({e}); rerun `nomade train --prepare`") from e
        return cls(**data, summary=summary)

    def rows(self, split: str) -> np.ndarray:
        """Example rows of one split."""
        return np.flatnonzero(self.split == SPLITS.index(split))


# ------------------------------------------------------------------ prepare

def prepare(jobs: features.JobTable, samples: features.SampleTable, interval_s: float,
            sequence_length: int, max_per_job: int = 4, source: str = "", augment: bool = True) -> Prepared:
    """As-of examples (at most ``max_per_job`` ticks per job, ``interval_s`` apart,
    spread over its run), reference set and time split of the labelled ended jobs that
    ran. A job with a final state but no start (cancelled while pending) never ran: the
    live system never scores it, and its missing request would give its label away, so
    it is neither learnt nor judged (``summary["never_ran"]`` counts them); it stays in
    the users' history like any ended job. Sequences are on the fixed grid
    (``features.GRID_STEP_S`` x ``sequence_length``). ``augment``: the training and
    validation examples are also computed from the samples thinned to each coarser
    interval of ``features.AUGMENT_INTERVALS_S`` (:func:`augment_intervals`), weighted so
    that each job still counts once; test examples are the samples as recorded."""
    rows, t, w = features.snapshots(jobs, samples, interval_s, max_per_job=max_per_job)  # started jobs only
    if len(rows) == 0:
        raise NomadeError(f"{source or 'the data'}: no ended job with a known final state and a start to learn from "
                          f"({int(never_ran(jobs).sum())} never ran)")
    ended = np.unique(rows)
    train, val, test = time_split(jobs.start_ts[ended])
    job_split = np.full(len(jobs), -1, np.int8)
    for code, part in enumerate((train, val, test)):
        job_split[ended[part]] = code
    inputs = _example_inputs(jobs, samples, t, rows, sequence_length)
    every = augment_intervals(samples) if augment else []
    if every:
        aug = np.flatnonzero(job_split[rows] < 2)
        w = np.where(job_split[rows] < 2, w / (1 + len(every)), w)
        extra = [_example_inputs(jobs, features.thin(samples, e, seed=k + 1), t[aug], rows[aug], sequence_length)
                 for k, e in enumerate(every)]
        inputs = tuple(np.concatenate([a, *(x[i] for x in extra)]) for i, a in enumerate(inputs))
        rows, t = np.concatenate([rows, *[rows[aug]] * len(every)]), np.concatenate([t, *[t[aug]] * len(every)])
        w = np.concatenate([w, *[w[aug]] * len(every)])
    X, mask, S, lengths = inputs
    ref_X, ref_mask = features.asof_features(jobs, samples, jobs.end_ts[ended], ended)
    start_X = features.start_features(jobs, ended)
    y = jobs.label[rows].astype(np.float32)
    prepared = Prepared(X, mask, S, lengths, y, w.astype(np.float32), rows, t, jobs.start_ts[rows],
                        job_split[rows], ref_X, ref_mask, jobs.start_ts[ended], jobs.end_ts[ended],
                        jobs.label[ended].astype(np.float32), ended, start_X, {})
    prepared.summary = _summary(prepared, jobs, ended, source, interval_s)
    prepared.summary["grid"] = {"step_s": features.GRID_STEP_S, "length": int(sequence_length)}
    prepared.summary["augment_intervals_s"] = every
    prepared.summary["sampling_interval_s"] = features.sampling_interval(samples)
    return prepared


def never_ran(jobs: features.JobTable) -> np.ndarray:
    """bool[n]: jobs with a final state but no start (cancelled while pending)."""
    return np.isfinite(jobs.label) & ~np.isfinite(jobs.start_ts)


def _example_inputs(jobs: features.JobTable, samples: features.SampleTable, t: np.ndarray, rows: np.ndarray,
                    length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X, mask, S, lengths`` of the examples (job ``rows`` as of ``t``), as the agent's tick makes them."""
    X, mask = features.asof_features(jobs, samples, t, rows)
    S, lengths = features.sequences(jobs, samples, t, length, features.GRID_STEP_S, rows)
    return X, mask, S, lengths


def augment_intervals(samples: features.SampleTable) -> list[float]:
    """The intervals of ``features.AUGMENT_INTERVALS_S`` that thin these samples: at
    least 1.5x their median interval (none without samples)."""
    base = features.sampling_interval(samples)
    if not np.isfinite(base):
        return []
    return [e for e in features.AUGMENT_INTERVALS_S if e >= 1.5 * base]


def _summary(p: Prepared, jobs: features.JobTable, ended: np.ndarray, source: str,
             interval_s: float) -> dict[str, Any]:
    parts = {}
    for code, name in enumerate(SPLITS):
        jr = np.unique(p.job[p.split == code])
        parts[name] = {"jobs": int(len(jr)), "examples": int((p.split == code).sum()),
                       "failed": int(np.nansum(jobs.label[jr])),
                       "failure_rate": float(np.nanmean(jobs.label[jr])) if len(jr) else None,
                       "first_start_ts": float(jobs.start_ts[jr].min()) if len(jr) else None,
                       "last_start_ts": float(jobs.start_ts[jr].max()) if len(jr) else None}
    return {"source": source, "jobs": int(len(ended)), "never_ran": int(never_ran(jobs).sum()),
            "examples": int(len(p.y)),
            "interval_s": interval_s, "sequence_length": int(p.S.shape[1]),
            "first_start_ts": float(np.min(jobs.start_ts[ended])),
            "last_end_ts": float(np.max(jobs.end_ts[ended])),
            "with_samples": float(np.mean(p.lengths > 0)), "splits": parts}


def tables_from_store(db_path: str | Path, iowait_max_age_s: float = features.IOWAIT_MAX_AGE_S
                      ) -> tuple[features.JobTable, features.SampleTable]:
    """Every ended job in the store, and their samples (``nomade.history``: the one path
    from stored rows to tables, shared with a corpus file)."""
    from nomade import history
    return history.tables(history.rows_from_store(db_path, iowait_max_age_s), iowait_max_age_s)


def tables_from_swf(path: str | Path, partial: bool = False) -> tuple[features.JobTable, features.SampleTable]:
    """Jobs of an SWF trace (start-time features only: a trace has no samples);
    ``partial``: malformed lines skipped, not an error (``traces.read_swf``)."""
    from nomade.traces import read_swf
    return read_swf(path, partial=partial).jobs, features.SampleTable.empty()


# ------------------------------------------------------------------ fit

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


def fit_and_save(p: Prepared, cfg: Config, models_dir: str | Path, kinds: Sequence[str] | None = None,
                 weights_mode: str = "auto", reporter: Reporter | None = None,
                 parallel: bool | None = None, starter_dir: str | Path | None = None,
                 pin_weights: bool = False) -> dict[str, Any]:
    """Train ``kinds`` (default: every model the data supports; no LSTM for data
    without samples, such as a trace) on ``p``, evaluate them and their ensemble (the
    models of this run only) on validation and test, choose the ensemble weights
    (``ensemble.choose_weights`` with ``weights_mode``; a hand-picked subset keeps the
    config weights and leaves a learned weights file as it is), save; returns the
    report (JSON-safe). ``parallel``: see :func:`fit_models`; ``timings`` holds each
    model's training seconds and ``models_s``, the wall time of all fits together.
    ``starter_dir``: judge the new ensemble against that starter model on the
    validation split (``starter.compare``); the decision is reported and saved in the
    metadata. ``pin_weights``: save the weights used with the models whatever their
    source (the starter's travel with it, not with a site's ``[ml.ensemble]``)."""
    if len(p.rows("train")) == 0:
        raise NomadeError("the training split is empty")
    subset = kinds is not None and set(kinds) != set(PARTS)
    if weights_mode == "learned" and subset:
        raise NomadeError("--learn-weights needs all three models trained in the same run")
    if kinds is None:
        kinds = PARTS if (p.lengths[p.rows("train")] > 0).any() else tuple(k for k in PARTS if k != "lstm")
    t0 = time.monotonic()
    tr = p.rows("train")
    norm = features.Normalizer().fit(p.X[tr], p.mask[tr], p.w[tr])
    d = build_data(p, norm, cfg.ml.similarity_threshold, cfg.ml.max_neighbors)
    timings = {"graph_s": time.monotonic() - t0}
    t1 = time.monotonic()
    fitted, seconds = fit_models(kinds, cfg, d, reporter, parallel)
    timings["models_s"] = time.monotonic() - t1
    timings.update({f"{kind}_s": v for kind, v in seconds.items()})
    scores, report = score_splits(fitted, d)
    e = cfg.ml.ensemble
    config = Weights(e.gnn_weight, e.lstm_weight, e.autoencoder_weight)
    va = p.rows("validation")
    try:
        choice = choose_weights(scores["validation"], p.y[va], p.w[va], config,
                                "config" if subset else weights_mode, seed=cfg.ml.seed)
    except ValueError as err:
        raise NomadeError(f"cannot learn ensemble weights: {err}") from err
    weights = choice.weights
    if choice.learned is not None:
        report["weights_cv"] = choice.detail
    report["weights"], report["weights_source"] = weights.as_dict(), choice.source
    report["weights_reason"] = choice.reason
    ev = fit_evidence(p)
    risk = {s: ensemble_risk(scores[s], weights, ev, p, p.rows(s)) for s in SPLITS[1:]}
    report["ensemble"] = {s: _evaluate(p.y[p.rows(s)], p.w[p.rows(s)], risk[s]) for s in SPLITS[1:]}
    report["ensemble_parts"] = list(fitted)
    report[EVIDENCE_KEY] = ev.to_dict()
    extra: dict[str, Any] = {EVIDENCE_KEY: ev.to_dict()}
    if starter_dir is not None:
        from nomade.ml import starter
        verdict = starter.compare(risk["validation"], p, starter_dir, weights)
        if verdict is not None:
            report[starter.COMPARISON] = extra[starter.COMPARISON] = verdict
    keep = choice.source == "learned" or pin_weights
    save_models(models_dir, fitted, norm, report, weights if keep else None, cfg, p,
                forget_weights=not subset, extra=extra,
                weights_source="pinned" if pin_weights and choice.source != "learned" else "learned")
    timings["total_s"] = time.monotonic() - t0
    report["timings"], report["models_dir"] = timings, str(models_dir)
    return persist.clean_json(report)


def fit_evidence(p: Prepared) -> Evidence:
    """The runtime evidence's rates (``nomade.ml.evidence``) from the training split."""
    tr = p.rows("train")
    return Evidence().fit(p.X[tr], p.mask[tr], p.y[tr], p.job[tr])


def ensemble_risk(parts: np.ndarray, weights: Weights, ev: Evidence, p: Prepared, rows: np.ndarray) -> np.ndarray:
    """The live risk of examples ``rows`` of ``p`` from their model ``parts``: the
    weighted ensemble raised by the evidence, as ``inference.Scorer`` computes it."""
    return raise_risk(combine(parts, weights), ev.risk(p.X[rows], p.mask[rows]))


def score_splits(fitted: dict[str, Any], d: _Data) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parts (NaN where absent) of every validation and test example, and metrics."""
    p = d.p
    scores = {s: np.full((len(p.rows(s)), len(PARTS)), np.nan) for s in SPLITS[1:]}
    report: dict[str, Any] = {"models": {}, "data": p.summary}
    for kind, model in fitted.items():
        entry = {"best_epoch": model.best_epoch_, "epochs_run": len(model.history_)}
        for s in SPLITS[1:]:
            rows = p.rows(s)
            scores[s][:, PARTS.index(kind)] = _predict(kind, model, d, rows)
            entry[s] = _evaluate(p.y[rows], p.w[rows], scores[s][:, PARTS.index(kind)])
        report["models"][kind] = entry
    return scores, report


def save_models(models_dir: str | Path, fitted: dict[str, Any], norm: features.Normalizer, report: dict[str, Any],
                learned: Weights | None, cfg: Config, p: Prepared, forget_weights: bool = False,
                extra: dict[str, Any] | None = None, weights_source: str = "learned") -> None:
    """Write the models, their metadata (with ``extra`` entries) and ``learned``
    weights; ``forget_weights``: without learned weights, remove a learned weights file
    an earlier run left (the ensemble of these models then uses ``[ml.ensemble]``)."""
    if "gnn" in fitted:
        fitted["gnn"].keep_recent(REFERENCE_SIZE)
    info = {k: {"metrics": {s: report["models"][k][s] for s in SPLITS[1:]}, "data": _range(p)} for k in fitted}
    if "gnn" in info:
        info["gnn"]["graph"] = {"threshold": cfg.ml.similarity_threshold, "k": cfg.ml.max_neighbors,
                                "reference_size": len(fitted["gnn"].reference_.x)}
    tr = p.rows("train")
    persist.save(models_dir, fitted, norm.to_dict(), info, learned, p.summary,
                 reference_stats(p.X[tr], p.mask[tr], p.y[tr]), extra, weights_source)
    if learned is None and forget_weights:
        (Path(models_dir) / persist.WEIGHTS_FILE).unlink(missing_ok=True)


def _range(p: Prepared) -> dict[str, Any]:
    return {k: p.summary.get(k) for k in ("source", "jobs", "examples", "first_start_ts", "last_end_ts")}


# ------------------------------------------------------------------ report

def format_report(report: dict[str, Any]) -> str:
    """The summary table: per model and the ensemble, AUC-ROC, AUC-PR, precision,
    recall, F1 on validation and test."""
    head = ("model", "split", "AUC-ROC", "AUC-PR", "precision", "recall", "F1", "n")
    rows = []
    entries = [(k, v) for k, v in report["models"].items()] + [("ensemble", report["ensemble"])]
    for name, entry in entries:
        for s in SPLITS[1:]:
            m = entry.get(s, {})
            rows.append((name, s, *(_num(m.get(c)) for c in ("auc_roc", "auc_pr", "precision", "recall", "f1")),
                         str(m.get("n", 0))))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    w = report["weights"]
    tail = [f"ensemble weights: gnn {w['gnn']:.2f}  lstm {w['lstm']:.2f}  autoencoder {w['autoencoder']:.2f}"
            + f"  ({report['weights_source']}: {report['weights_reason']})"
            + f"; ensemble of {', '.join(report['ensemble_parts'])}",
            f"{report['data'].get('never_ran', 0)} jobs that never ran left out; "
            f"threshold {THRESHOLD}; models written to {report['models_dir']}; "
            f"took {report['timings']['total_s']:.1f} s (graph {report['timings']['graph_s']:.1f} s)"]
    return "\n".join([line(head), line("-" * x for x in widths), *map(line, rows), "", *tail])


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def stderr_reporter() -> Reporter:
    """Progress on stderr: one line per model, redrawn in place each epoch."""
    state = {"model": None}

    def report(model: str, epoch: int, epochs: int, score: float) -> None:
        if state["model"] not in (None, model):
            sys.stderr.write("\n")
        state["model"] = model
        filled = int(20 * epoch / epochs)
        sys.stderr.write(f"\r{model:<12} [{'#' * filled}{'.' * (20 - filled)}] epoch {epoch:>3}/{epochs}"
                         f"  validation {score:.3f}")
        sys.stderr.flush()
    return report


# ------------------------------------------------------------------ synthetic data

STATES = np.array(["COMPLETED", "OUT_OF_MEMORY", "TIMEOUT", "FAILED", "CANCELLED"], dtype=object)


def synthetic_tables(n_jobs: int, seed: int = 0, samples_per_job: int = 12, span_days: float = 30.0,
                     t0: float = 1.7e9) -> tuple[features.JobTable, features.SampleTable]:
    """A cluster history with the structure of a real one, for benchmarks, tests and
    demos (``nomade train --prepare --synthetic N``): users with their own failure
    propensity; OOM jobs whose memory climbs to the limit, timeouts that run to the
    limit with falling CPU use, crashes with heavy NFS writes and I/O pressure,
    cancellations that look normal; up to ``samples_per_job`` samples per job."""
    rng = np.random.default_rng(seed)
    n = int(n_jobs)
    n_users = max(5, n // 40)
    user = rng.integers(n_users, size=n)
    propensity = rng.beta(1.2, 5.0, n_users)[user]
    cpus = 2.0 ** rng.integers(0, 7, n)
    gpus = np.where(rng.random(n) < 0.15, rng.integers(1, 5, n), 0).astype(float)
    mem = cpus * 2.0 ** rng.uniform(30, 33, n)
    limit = rng.choice([1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0], n)
    submit = t0 + np.sort(rng.uniform(0, span_days * 86400, n))
    start = submit + rng.exponential(600, n)
    kind = np.where(rng.random(n) < propensity, rng.choice([1, 2, 3, 4], n, p=[0.3, 0.25, 0.3, 0.15]), 0)
    frac = np.select([kind == 2, kind == 3], [np.ones(n), rng.uniform(0.02, 0.5, n)], rng.uniform(0.1, 0.9, n))
    run = frac * limit
    end = start + run
    jobs = features.JobTable(
        job_id=np.array([str(i + 1) for i in range(n)], dtype=object), user=user.astype(np.int64),
        req_cpus=cpus, req_mem_bytes=mem, req_gpus=gpus, time_limit_s=limit, submit_ts=submit,
        start_ts=start, end_ts=end, state=STATES[kind].copy(),
        label=np.array([features.label_of(s) for s in STATES[kind]]))
    return jobs, _synthetic_samples(rng, jobs, kind, samples_per_job)


def _synthetic_samples(rng: np.random.Generator, jobs: features.JobTable, kind: np.ndarray,
                       per_job: int) -> features.SampleTable:
    n = len(jobs)
    run = jobs.end_ts - jobs.start_ts
    m = np.clip((run // 30).astype(np.int64), 1, per_job)
    j = np.repeat(np.arange(n), m)
    pos = (np.arange(m.sum()) - np.repeat(np.cumsum(m) - m, m) + 1) / (np.repeat(m, m) + 1)
    k, elapsed = kind[j], pos * run[j]
    eff = np.select([kind == 2, kind == 3], [rng.beta(4, 3, n), rng.beta(2, 5, n)], rng.beta(6, 2, n))[j]
    eff = eff * np.where(k == 2, 1 - 0.6 * pos, 1.0)
    m0 = rng.uniform(0.1, 0.6, n)
    m_end = np.where(kind == 1, 1.0, np.clip(m0 + rng.normal(0, 0.05, n), 0.05, 0.95))
    mem_frac = m0[j] + (m_end[j] - m0[j]) * pos
    rate = np.exp(rng.normal(15, 1.5, n))[j]
    share = np.where(kind == 3, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.3, n))[j]
    cpu = jobs.req_cpus[j] * eff * elapsed
    mem = jobs.req_mem_bytes[j]
    cols = {"alloc_cpus": jobs.req_cpus[j], "cpu_user_s": 0.9 * cpu, "cpu_system_s": 0.1 * cpu,
            "mem_bytes": mem * mem_frac, "mem_peak_bytes": mem * np.maximum(m0[j], mem_frac),
            "mem_limit_bytes": mem, "mem_limit_hits": np.where(k == 1, np.floor(np.maximum(pos - 0.7, 0) * 100), 0.0),
            "oom_kills": np.zeros(len(j)), "page_faults": elapsed * 100.0,
            "major_faults": np.where(k == 1, pos * 2000.0, pos * rng.uniform(0, 20, len(j))),
            "swap_bytes": np.zeros(len(j)), "read_bytes": rate * elapsed * 0.5, "write_bytes": rate * elapsed,
            "nfs_write_bytes": share * rate * elapsed, "nprocs": jobs.req_cpus[j], "nthreads": jobs.req_cpus[j],
            "io_pressure": np.where(k == 3, rng.uniform(5, 40, len(j)), rng.uniform(0, 5, len(j))),
            "mem_pressure": np.where(k == 1, pos * 30.0, rng.uniform(0, 1, len(j)))}
    return features.SampleTable(j, jobs.start_ts[j] + elapsed, cols)
