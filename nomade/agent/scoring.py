"""The scoring tick: as-of features of every running job at once, the ensemble in one batch.

Pure planning, no I/O: ``tick_inputs(state, now, ...)`` turns the job state into the
arrays ``nomade.features`` computes (the same as-of functions training uses, so live
scoring sees what the models were trained on), and ``score(inputs, scorer, ...)`` runs
``nomade.ml.inference.Scorer`` once for all jobs under ``torch.inference_mode`` and
returns one ``prediction`` body per job. Without a trained model there is no score:
``ModelWatch`` says, once per change, that the agent publishes no risk.

Explanations (occlusion, 17 extra passes) are computed only for jobs whose risk is at
least ``explain_min_risk`` (moderate and above by default): a low-risk job's message
carries no factors. This keeps a 10,000-job tick within its budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from nomade import advice, features
from nomade.agent.state import JobState, RunningJob

#: Risk from which a prediction carries its top contributing factors.
EXPLAIN_MIN_RISK = 0.3
#: Factors per prediction.
TOP_FACTORS = 3
_SAMPLE_GET = itemgetter("ts", *features.SAMPLE_COLUMNS[:-1])   # iowait_pct is not in job.sample


@dataclass
class TickInputs:
    """The model inputs of one tick: row i is ``jobs[i]``."""

    jobs: list[RunningJob]
    now: float
    X: np.ndarray
    mask: np.ndarray
    S: np.ndarray
    lengths: np.ndarray
    start_ts: np.ndarray


class ScoresLike(Protocol):
    """What ``score`` reads of ``nomade.ml.inference.Scores``."""

    risk: np.ndarray
    level: np.ndarray

    def parts_of(self, i: int) -> dict[str, float | None]: ...
    def factors(self, i: int, top: int = 3) -> list[dict[str, Any]]: ...


class ScorerLike(Protocol):
    """What ``score`` needs of ``nomade.ml.inference.Scorer``."""

    @property
    def version(self) -> str: ...
    def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool = True) -> ScoresLike: ...


# ---------------------------------------------------------------- tables

def _job_table(run: list[RunningJob], state: JobState) -> features.JobTable:
    """Running jobs first (rows 0..n-1), then the ended jobs of the history."""
    users: dict[str, int] = {}
    hist = list(state.history.values())

    def col(key: str) -> np.ndarray:
        return np.array([r.request.get(key) for r in run], dtype=np.float64)

    nan = np.full(len(hist), np.nan)
    user_names = [r.request.get("user") for r in run] + [h.user for h in hist]
    hstate = np.array([h.state for h in hist], dtype=object)
    return features.JobTable(
        job_id=np.array([r.job_id for r in run] + [f"ended-{i}" for i in range(len(hist))], dtype=object),
        user=np.array([-1 if u is None else users.setdefault(u, len(users)) for u in user_names], np.int64),
        req_cpus=np.concatenate([col("req_cpus"), nan]),
        req_mem_bytes=np.concatenate([col("req_mem_bytes"), nan]),
        req_gpus=np.concatenate([col("req_gpus"), nan]),
        time_limit_s=np.concatenate([col("time_limit_s"), nan]),
        submit_ts=np.concatenate([col("submit_ts"), nan]),
        start_ts=np.concatenate([col("start_ts"), nan]),
        end_ts=np.concatenate([np.full(len(run), np.nan), [h.end_ts for h in hist]]),
        state=np.concatenate([np.full(len(run), None, dtype=object), hstate]),
        label=np.concatenate([np.full(len(run), np.nan), [features.label_of(s) for s in hstate]]))


def _sample_table(run: list[RunningJob], jobs: features.JobTable) -> features.SampleTable:
    """The rings of the running jobs; multi-node jobs summed over nodes by ``features``."""
    single: list[tuple[Any, ...]] = []
    index: list[int] = []
    multi: list[Mapping[str, Any]] = []
    for i, r in enumerate(run):
        if len({s["node"] for s in r.samples}) > 1:
            multi.extend(r.samples)
            continue
        single.extend(map(_SAMPLE_GET, r.samples))
        index.extend([i] * len(r.samples))
    names = features.SAMPLE_COLUMNS[:-1]
    arr = np.array(single, dtype=np.float64).reshape(len(single), 1 + len(names))
    job_index, ts = np.array(index, np.int64), arr[:, 0]
    cols = {c: arr[:, k + 1] for k, c in enumerate(names)}
    if multi:
        combined = features.SampleTable.from_records(jobs, multi)
        job_index = np.concatenate([job_index, combined.job_index])
        ts = np.concatenate([ts, combined.ts])
        cols = {c: np.concatenate([cols[c], combined.cols[c]]) for c in names}
    return features.SampleTable(job_index, ts, cols)


def tick_inputs(state: JobState, now: float, sequence_length: int, interval_s: float) -> TickInputs:
    """The features and sequences of every scorable running job as of ``now``."""
    run = state.scorable()
    jobs = _job_table(run, state)
    samples = _sample_table(run, jobs)
    rows = np.arange(len(run))
    t = np.full(len(run), float(now))
    X, mask = features.asof_features(jobs, samples, t, rows)
    S, lengths = features.sequences(jobs, samples, t, sequence_length, interval_s, rows)
    return TickInputs(run, now, X, mask, S, lengths, jobs.start_ts[rows])


# ---------------------------------------------------------------- scoring

def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool = True) -> ScoresLike: ...


# ---------------------------------------------------------------- tables

def _job_table(run: list[RunningJob], state: JobState) -> features.JobTable:
    """Running jobs first (rows 0..n-1), then the ended jobs of the history."""
    users: dict[str, int] = {}
    hist = list(state.history.values())

    def col(key: str) -> np.ndarray:
        return np.array([r.request.get(key) for r in run], dtype=np.float64)

    nan = np.full(len(hist), np.nan)
    user_names = [r.request.get("user") for r in run] + [h.user for h in hist]
    hstate = np.array([h.state for h in hist], dtype=object)
    return features.JobTable(
        job_id=np.array([r.job_id for r in run] + [f"ended-{i}" for i in range(len(hist))], dtype=object),
        user=np.array([-1 if u is None else users.setdefault(u, len(users)) for u in user_names], np.int64),
        req_cpus=np.concatenate([col("req_cpus"), nan]),
        req_mem_bytes=np.concatenate([col("req_mem_bytes"), nan]),
        req_gpus=np.concatenate([col("req_gpus"), nan]),
        time_limit_s=np.concatenate([col("time_limit_s"), nan]),
        submit_ts=np.concatenate([col("submit_ts"), nan]),
        start_ts=np.concatenate([col("start_ts"), nan]),
        end_ts=np.concatenate([np.full(len(run), np.nan), [h.end_ts for h in hist]]),
        state=np.concatenate([np.full(len(run), None, dtype=object), hstate]),
        label=np.concatenate([np.full(len(run), np.nan), [features.label_of(s) for s in hstate]]))


def _sample_table(run: list[RunningJob], jobs: features.JobTable) -> features.SampleTable:
    """The rings of the running jobs; multi-node jobs summed over nodes by ``features``."""
    single: list[tuple[Any, ...]] = []
    index: list[int] = []
    multi: list[Mapping[str, Any]] = []
    for i, r in enumerate(run):
        if len({s["node"] for s in r.samples}) > 1:
            multi.extend(r.samples)
            continue
        single.extend(map(_SAMPLE_GET, r.samples))
        index.extend([i] * len(r.samples))
    names = features.SAMPLE_COLUMNS[:-1]
    arr = np.array(single, dtype=np.float64).reshape(len(single), 1 + len(names))
    job_index, ts = np.array(index, np.int64), arr[:, 0]
    cols = {c: arr[:, k + 1] for k, c in enumerate(names)}
    if multi:
        combined = features.SampleTable.from_records(jobs, multi)
        job_index = np.concatenate([job_index, combined.job_index])
        ts = np.concatenate([ts, combined.ts])
        cols = {c: np.concatenate([cols[c], combined.cols[c]]) for c in names}
    return features.SampleTable(job_index, ts, cols)


def tick_inputs(state: JobState, now: float, sequence_length: int, interval_s: float) -> TickInputs:
    """The features and sequences of every scorable running job as of ``now``."""
    run = state.scorable()
    jobs = _job_table(run, state)
    samples = _sample_table(run, jobs)
    rows = np.arange(len(run))
    t = np.full(len(run), float(now))
    X, mask = features.asof_features(jobs, samples, t, rows)
    S, lengths = features.sequences(jobs, samples, t, sequence_length, interval_s, rows)
    return TickInputs(run, now, X, mask, S, lengths, jobs.start_ts[rows])


# ---------------------------------------------------------------- scoring

def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def wire_factor(f: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Scores.factors`` entry as a wire factor: name, value, normal, ratio (value /
    normal, None where normal is 0), and a short text that states them."""
    value, normal = _finite(f.get("value")), _finite(f.get("normal"))
    ratio = value / normal if value is not None and normal else None
    text = f"{f['name']} = {value:.3g}" if value is not None else str(f["name"])
    if normal is not None:
        text += f" (normal {normal:.3g}" + (f", {ratio:.1f}x)" if ratio is not None else ")")
    return {"name": str(f["name"]), "value": value, "normal": normal, "ratio": _finite(ratio),
            "text": text}


def score(inputs: TickInputs, scorer: ScorerLike, *, explain_min_risk: float = EXPLAIN_MIN_RISK,
          top: int = TOP_FACTORS) -> list[dict[str, Any]]:
    """One ``prediction`` body per job of ``inputs`` (ts = the tick's time); a job that
    no loaded model can score (risk NaN) gets none."""
    if not inputs.jobs:
        return []
    import torch

    with torch.inference_mode():
        scores = scorer.score(inputs.X, inputs.mask, inputs.S, inputs.lengths, inputs.start_ts,
                              explain=False)
        hot = np.flatnonzero(np.asarray(scores.risk) >= explain_min_risk)
        explained = None
        if len(hot):
            explained = scorer.score(inputs.X[hot], inputs.mask[hot], inputs.S[hot],
                                     inputs.lengths[hot], inputs.start_ts[hot], explain=True)
    factors: dict[int, list[dict[str, Any]]] = {}
    if explained is not None:
        factors = {int(i): advice.wire_factors(explained.factors(k, top))
                   for k, i in enumerate(hot)}
    out = []
    for i, run in enumerate(inputs.jobs):
        if not math.isfinite(scores.risk[i]):   # no model could score it: no placeholder
            continue
        out.append({
            "job_id": run.job_id, "user": run.request.get("user"),
            "partition": run.request.get("partition"), "nodes": list(run.nodes),
            "risk": float(np.clip(scores.risk[i], 0.0, 1.0)), "level": str(scores.level[i]),
            "parts": scores.parts_of(i), "factors": factors.get(i, []), "ts": inputs.now,
            "model_version": scorer.version})
    return out


# ---------------------------------------------------------------- model availability

class ModelWatch:
    """Whether a model is usable, and a log line only when that changes.

    ``update(reason)`` takes None (a model is loaded) or why there is none; it returns
    the line to log when the status differs from the last one, else None.
    """

    def __init__(self) -> None:
        self.reason: str | None = "not checked yet"

    def update(self, reason: str | None) -> str | None:
        """Record the current status; the line to log if it changed."""
        if reason == self.reason:
            return None
        self.reason = reason
        if reason is None:
            return "a trained model is loaded: scoring every running job each tick"
        return f"no trained model ({reason}): publishing no risk until one is trained"
