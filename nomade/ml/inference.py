"""Live scoring: load the model files once, score a batch of running jobs at once.

``Scorer.load(models_dir)`` then ``scorer.score(X, mask, S, lengths, start_ts)`` with
raw (unnormalised) ``features.asof_features`` / ``features.sequences`` output. Returns
:class:`Scores`: risk, level, the per-model parts (NaN where a model is missing or
cannot score the job: the LSTM before a job's first sample) and explanations.

Explanations are occlusion against "normal": feature f's contribution is
``risk(x) - risk(x with f set to the median of COMPLETED training jobs of the same
shape)``, positive where the feature raises the risk, 0 where it is not known yet.
The GNN neighbourhood is held fixed (which neighbours a job has is not re-searched).
A runtime feature is also the LSTM's channel of the same name: its whole sequence is
set to that median too, so a contribution says how much the risk falls, whichever
model raised it, if that one signal had been normal all along. The per-feature
``reference`` (median and inter-quartile spread of completed jobs of that shape, in
the raw feature units) is what advice text compares a value with ("3x normal").

The risk is the weighted ensemble of the parts, raised by the calibrated runtime
evidence stored with the models (``nomade.ml.evidence``), and occlusion covers the
evidence too: setting a job's memory to normal also removes a memory condition.

Shape = requested-CPU quartile (of the training jobs) × GPU or not.

Graph neighbours are found by the start-time features only (requests and user
history), as in training: a job's neighbourhood is the same at every tick of its
run, so training needs one neighbour search per job, not per as-of example (4-16x
fewer; 100,000 jobs in under a minute), and an agent may keep it while the job's
start-time features stay the same (the user-history part changes when another job
of the user ends).
The runtime features still reach the GNN through the job's own node and the
neighbours' full feature vectors, and the LSTM reads the runtime sequence.

Threads: :meth:`Scorer.score` and :meth:`Scorer.explain` run every torch op on one
intra-op thread (the caller's setting is restored after). The ops are small (a 1,024-row LSTM batch, a
GNN/autoencoder layer), so a second intra-op thread only adds a barrier to each op;
beside a busy process 2 threads made a 10,000-job tick 3x slower than 1. Instead the
LSTM, the largest part, runs its batches on worker threads (as many as the caller's
``torch.get_num_threads()``, one at least) while the calling thread computes the
graph neighbours, the GNN and the autoencoder: on 2 cores the LSTM overlaps the rest.
The batches are those of ``LSTMClassifier.predict_proba``, so the parts are the same
whatever the thread count.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nomade import features
from nomade.ml import graph, persist
from nomade.ml.ensemble import PARTS, Weights, combine, levels
from nomade.ml.evidence import EVIDENCE_KEY, Evidence, raise_risk
from nomade.ml.models import AutoencoderScorer, GNNClassifier, LSTMClassifier, Neighbours

MIN_GROUP = 50
"""Completed examples a shape group needs for its own reference; else the overall one."""
CPU, GPU = features.FEATURES.index("log_req_cpus"), features.FEATURES.index("log_req_gpus")
START_PART = features.START_PART
"""The features known at start, by which a job's graph neighbours are found."""
LSTM_BATCH = 1024
"""LSTM rows a forward pass (``LSTMClassifier.predict_proba``'s default: each step's
activations stay in cache; 10,000 jobs cost less CPU than in one batch of 10,000)."""


# ------------------------------------------------------------------ reference statistics

def _groups(X: np.ndarray, cpu_edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(cpu_edges), X[:, CPU], side="right") * 2 + (X[:, GPU] > 0)


def reference_stats(X: np.ndarray, mask: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Median and inter-quartile spread of each raw feature over COMPLETED examples,
    overall and per shape group; JSON-safe (stored in the metadata)."""
    ok = np.asarray(y) == 0
    X, mask = np.asarray(X, np.float64)[ok], np.asarray(mask, bool)[ok]
    edges = np.quantile(X[:, CPU], [0.25, 0.5, 0.75]).tolist() if len(X) else [0.0, 0.0, 0.0]

    def stats(rows: np.ndarray) -> dict[str, Any]:
        known = np.where(mask[rows], X[rows], np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": never known
            q = np.nanpercentile(known, [25, 50, 75], axis=0) if len(rows) else np.full((3, X.shape[1]), np.nan)
        return {"n": int(len(rows)), "median": np.nan_to_num(q[1]).tolist(),
                "spread": np.nan_to_num(q[2] - q[0]).tolist()}

    g = _groups(X, edges)
    groups = {str(k): stats(np.flatnonzero(g == k)) for k in np.unique(g) if (g == k).sum() >= MIN_GROUP}
    return {"cpu_edges": edges, "all": stats(np.arange(len(X))), "groups": groups}


def reference_for(ref: Mapping[str, Any], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-job reference median and spread float32[n, 19] for raw features ``X``."""
    g = _groups(np.asarray(X, np.float64), ref["cpu_edges"])
    table = [ref["groups"].get(str(k), ref["all"]) for k in range(8)]
    med = np.array([t["median"] for t in table], np.float32)
    spread = np.array([t["spread"] for t in table], np.float32)
    return med[g], spread[g]


# ------------------------------------------------------------------ scores

@dataclass
class Scores:
    """Scores of a batch (row i = job i of the input)."""

    risk: np.ndarray
    level: np.ndarray
    parts: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    reference_median: np.ndarray
    reference_spread: np.ndarray
    contributions: np.ndarray | None
    neighbours: Neighbours | None = None
    """The graph neighbours the GNN part used (None without a GNN): what
    :meth:`Scorer.explain` holds fixed."""
    sequences: tuple[np.ndarray, np.ndarray] | None = None
    """The LSTM's normalised sequences and lengths (None without an LSTM part): what
    :meth:`Scorer.explain` occludes channel by channel."""

    def parts_of(self, i: int) -> dict[str, float | None]:
        """``{"gnn": p, "lstm": p, "autoencoder": s}`` of job i, None where unavailable."""
        return {k: (float(v) if np.isfinite(v) else None) for k, v in zip(PARTS, self.parts[i], strict=True)}

    def factors(self, i: int, top: int = 3) -> list[dict[str, Any]]:
        """The ``top`` known features that raise job i's risk most: name, raw value,
        normal (reference median), spread, contribution (risk points); [] when job i
        was not explained or nothing raises its risk."""
        if self.contributions is None or not np.isfinite(self.contributions[i]).all():
            return []
        c = np.where(self.mask[i], self.contributions[i], 0.0)
        order = [j for j in np.argsort(-c, kind="stable")[:top] if c[j] > 0]
        return [{"name": features.FEATURES[j], "value": float(self.values[i, j]),
                 "normal": float(self.reference_median[i, j]), "spread": float(self.reference_spread[i, j]),
                 "contribution": float(c[j])} for j in order]


def _check_inputs(models_dir: str | Path, models: Mapping[str, Any]) -> None:
    """``ModelError`` unless every model reads the inputs this nomade computes."""
    widths = {"gnn": lambda m: m.reference_.x.shape[1], "autoencoder": lambda m: len(m.lo_),
              "lstm": lambda m: m.net_.lstm1.input_size - 1}  # + the padding flag
    expected = {"gnn": features.N_FEATURES, "autoencoder": features.N_FEATURES, "lstm": len(features.CHANNELS)}
    for kind, model in models.items():
        if widths[kind](model) != expected[kind]:
            raise persist.ModelError(f"{models_dir}: the {kind} model reads {widths[kind](model)} inputs, this "
                                     f"nomade gives {expected[kind]}; retrain with `nomade train`")


class Scorer:
    """The loaded models of one models directory. Build with :meth:`load`."""

    def __init__(self, models: Mapping[str, Any], normalizers: Mapping[str, features.Normalizer],
                 weights: Weights, metadata: Mapping[str, Any], weights_source: str = "config") -> None:
        self.models, self.normalizers = dict(models), dict(normalizers)
        self.weights, self.weights_source, self.metadata = weights, weights_source, dict(metadata)
        self.reference = self.metadata.get("reference") or reference_stats(
            np.zeros((0, features.N_FEATURES)), np.zeros((0, features.N_FEATURES), bool), np.zeros(0))
        graph_cfg = self.metadata.get("models", {}).get("gnn", {}).get("graph", {})
        self.threshold = float(graph_cfg.get("threshold", 0.7))
        self.k = int(graph_cfg.get("k", 10))
        self.evidence = Evidence.from_dict(self.metadata.get(EVIDENCE_KEY))

    @classmethod
    def load(cls, models_dir: str | Path, default_weights: Weights | None = None) -> Scorer:
        """Every model in ``models_dir`` (``ModelError`` if there is none, or one is
        broken); learned weights if stored, else ``default_weights`` ([ml.ensemble])."""
        meta = persist.read_metadata(models_dir)
        kinds = [k for k in PARTS if k in meta.get("models", {})]
        if not kinds:
            raise persist.ModelError(f"{models_dir}: no trained models; run `nomade train` first")
        models, norms = {}, {}
        for kind in kinds:
            models[kind], norm = persist.load_model(models_dir, kind, meta)
            try:
                norms[kind] = features.Normalizer.from_dict(norm)
            except (ValueError, KeyError, TypeError) as e:
                raise persist.ModelError(f"{models_dir}: {kind} model: {e}; retrain with `nomade train`") from e
        _check_inputs(models_dir, models)
        weights, source = persist.load_weights(models_dir, default_weights or Weights())
        return cls(models, norms, weights, meta, source)

    @property
    def grid(self) -> tuple[float, int]:
        """``(step_s, length)`` of the LSTM's time grid, as the models were trained on
        (``features.sequences``); models of before the fixed grid read the sampling
        interval they were trained on."""
        data = self.metadata.get("training_data", {})
        grid = data.get("grid") or {"step_s": data.get("interval_s", features.GRID_STEP_S),
                                    "length": data.get("sequence_length", 20)}
        return float(grid["step_s"]), int(grid["length"])

    @property
    def version(self) -> str | None:
        """Identifies the loaded model set (``persist.model_version``)."""
        return persist.model_version(self.metadata)

    def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool | np.ndarray = True, neighbours: Neighbours | None = None) -> Scores:
        """Score n jobs at once from raw ``X`` float[n,19], ``mask`` bool[n,19], ``S``
        float[n,T,13] and ``lengths`` int[n] (None: no sequences, no LSTM part) and
        ``start_ts`` float[n] (needed with a GNN: neighbours must have ended before).

        ``explain``: True explains every job, False none, or the row indices (or a
        bool mask) of the jobs to explain, e.g. those whose level changed; the others'
        contributions are NaN and their ``factors`` empty. Explaining costs about as
        much again as scoring, for the GNN and autoencoder parts.

        ``neighbours``: the jobs' graph neighbours from :meth:`neighbours`, if the
        caller kept them (they depend only on the start time, the start-time features
        and the loaded reference set: ``nomade.agent.scoring.KeptNeighbours`` keeps
        them while those stay the same); else searched."""
        X, mask = np.asarray(X, np.float32), np.asarray(mask, bool)
        if X.ndim != 2 or X.shape[1] != features.N_FEATURES or mask.shape != X.shape:
            raise ValueError(f"X and mask must be [n, {features.N_FEATURES}], got {X.shape}, {mask.shape}")
        workers = max(1, torch.get_num_threads())
        parts = np.full((len(X), len(PARTS)), np.nan, np.float32)
        seq = None
        if "lstm" in self.models and S is not None and lengths is not None:
            seq = (self.normalizers["lstm"].transform_sequences(S),
                   np.minimum(np.asarray(lengths, np.int64), np.shape(S)[1]))
        with _one_thread(), ThreadPoolExecutor(workers, thread_name_prefix="nomade-lstm") as pool:
            lstm = self._lstm_part(pool, len(X), seq)   # on the workers, while this thread goes on
            nbrs = neighbours if neighbours is not None or "gnn" not in self.models else self.neighbours(
                X, mask, start_ts)
            parts[:, 0], parts[:, 2] = self._static_parts([X], mask, nbrs)[0]
            parts[:, 1] = lstm()
        models_risk = combine(parts, self.weights)
        risk = raise_risk(models_risk, self.evidence.risk(X, mask)).astype(models_risk.dtype)
        med, spread = reference_for(self.reference, X)
        scores = Scores(risk, levels(risk), parts, X, mask, med, spread, None, nbrs, seq)
        return scores if explain is False else self.explain(scores, None if explain is True else explain)

    def explain(self, scores: Scores, rows: np.ndarray | None = None) -> Scores:
        """``scores`` (from :meth:`score` of this scorer) with the contributions of
        ``rows`` (indices or a bool mask; None: every job), NaN for the others: the
        same as scoring again with ``explain=rows``, at the cost of the occlusion only:
        the parts (the LSTM's included), risk, reference and graph neighbours of
        ``scores`` are reused, not computed again."""
        n = len(scores.values)
        rows = np.arange(n) if rows is None else np.arange(n)[np.asarray(rows)]
        contrib = np.full(scores.values.shape, np.nan, np.float32)
        nbrs = scores.neighbours
        sub = None if nbrs is None else Neighbours(nbrs.idx[rows], nbrs.sim[rows], nbrs.valid[rows])
        seq = None if scores.sequences is None else tuple(a[rows] for a in scores.sequences)
        with _one_thread():
            contrib[rows] = self._occlusion(scores.values[rows], scores.mask[rows], sub, scores.parts[rows],
                                            scores.risk[rows], scores.reference_median[rows], seq)
        return replace(scores, contributions=contrib)

    def neighbours(self, X: np.ndarray, mask: np.ndarray, start_ts: np.ndarray | None) -> Neighbours:
        """Each job's ≤ k most similar reference jobs that ended before it started,
        by start-time features (raw ``X``, ``mask``); needs a GNN model."""
        if "gnn" not in self.models:
            raise ValueError("no GNN model is loaded, so jobs have no graph neighbours")
        if start_ts is None or len(start_ts) != len(X):
            raise ValueError("start_ts (one per job) is needed to attach jobs to the graph")
        gnn: GNNClassifier = self.models["gnn"]
        start_mask = mask & START_PART
        xn = self.normalizers["gnn"].transform(X, start_mask)
        ref = gnn.reference_
        return Neighbours(*graph.neighbours(ref.x, ref.end_ts, xn, np.asarray(start_ts, np.float64),
                                            start_mask, self.threshold, self.k))

    def _lstm_part(self, pool: ThreadPoolExecutor, n: int,
                   seq: tuple[np.ndarray, np.ndarray] | None) -> Callable[[], np.ndarray]:
        """Start the LSTM part of the normalised sequences ``seq`` on ``pool``, one task
        per batch of ``LSTM_BATCH`` rows (those ``predict_proba`` would make); returns
        the wait for it (NaN without an LSTM, without sequences, and for jobs without a
        sample) of ``n`` jobs."""
        out = np.full(n, np.nan, np.float32)
        if seq is None:
            return lambda: out
        model: LSTMClassifier = self.models["lstm"]
        S, lengths = seq
        rows = np.flatnonzero(lengths > 0)
        batches = [b for b in np.array_split(rows, max(1, -(-len(rows) // LSTM_BATCH))) if len(b)]
        futures = [pool.submit(model.predict_proba, S[b], lengths[b], len(b)) for b in batches]

        def wait() -> np.ndarray:
            for b, f in zip(batches, futures, strict=True):
                out[b] = f.result()
            return out
        return wait

    def _static_parts(self, variants: list[np.ndarray], mask: np.ndarray,
                      nbrs: Neighbours | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(gnn, autoencoder) parts of each variant of the raw features (NaN if absent)."""
        nan = np.full(len(mask), np.nan, np.float32)
        gnn = [nan] * len(variants)
        if nbrs is not None:
            norm = self.normalizers["gnn"]
            gnn = self.models["gnn"].predict_proba_variants([norm.transform(v, mask) for v in variants], nbrs)
        ae = [nan] * len(variants)
        if "autoencoder" in self.models:
            model: AutoencoderScorer = self.models["autoencoder"]
            norm = self.normalizers["autoencoder"]
            stacked = np.concatenate([norm.transform(v, mask) for v in variants])
            ae = np.split(model.score(stacked, np.tile(mask, (len(variants), 1))), len(variants))
        return list(zip(gnn, ae, strict=True))

    def _occlusion(self, X: np.ndarray, mask: np.ndarray, nbrs: Neighbours | None,
                   parts: np.ndarray, risk: np.ndarray, med: np.ndarray,
                   seq: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """risk − risk with one feature at a time set to its reference median (for a
        runtime feature, in the LSTM's sequence too)."""
        variants = []
        for f in range(X.shape[1]):
            v = X.copy()
            v[:, f] = np.where(mask[:, f], med[:, f], X[:, f])
            variants.append(v)
        lstm = self._lstm_occluded(seq, med)
        out = np.zeros(X.shape, np.float32)
        for f, (g, a) in enumerate(self._static_parts(variants, mask, nbrs)):
            occluded = parts.copy()
            occluded[:, 0], occluded[:, 2] = g, a
            if lstm is not None and f >= features.N_START:
                occluded[:, 1] = np.where(np.isfinite(parts[:, 1]), lstm[f - features.N_START], parts[:, 1])
            without = raise_risk(combine(occluded, self.weights), self.evidence.risk(variants[f], mask))
            out[:, f] = np.where(mask[:, f], risk - without, 0.0)
        return out

    def _lstm_occluded(self, seq: tuple[np.ndarray, np.ndarray] | None,
                       med: np.ndarray) -> np.ndarray | None:
        """float32[13, n]: the LSTM part with each channel's whole sequence set to the
        job's reference median of that feature (None without an LSTM part)."""
        if seq is None or not len(med):
            return None
        S, lengths = seq
        normal = self.normalizers["lstm"].transform(med, np.ones(med.shape, bool))[:, features.N_START:]
        n, channels = len(S), S.shape[2]
        batch = np.repeat(S[None], channels, axis=0)
        for c in range(channels):
            batch[c, :, :, c] = normal[:, c, None]
        model: LSTMClassifier = self.models["lstm"]
        flat = model.predict_proba(batch.reshape(channels * n, *S.shape[1:]), np.tile(lengths, channels))
        return flat.reshape(channels, n)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op thread count is 1 inside (module doc), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
