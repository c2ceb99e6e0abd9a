"""The scoring tick: as-of features of every running job at once, the ensemble in one batch.

Pure planning, no I/O: ``tick_inputs(state, now, ...)`` turns the job state into the
arrays ``nomade.features`` computes (the same as-of functions training uses, on the same
``SampleTable``/``JobTable`` layout, so live scoring sees what the models were trained
on), and ``score(inputs, scorer, ...)`` runs ``nomade.ml.inference.Scorer`` once for all
jobs under ``torch.inference_mode`` and returns one ``prediction`` body per job. Without
a trained model there is no score: ``ModelWatch`` says, once per change, that the agent
publishes no risk.

Cost (budget: 10,000 jobs, all three models, <= 1 s on 2 cores): the sample table comes
from ``JobState.sample_rows``, which converts only the samples that arrived since the
last tick; the ended-job history is cached by ``JobState.history_columns``; the GNN's
graph neighbours are found once a job, as in training (``KeptNeighbours``); the scorer
runs the LSTM on worker threads beside the other models (``nomade.ml.inference``).

Explanations (occlusion, 19 variants of the GNN and autoencoder inputs and 13 of the
LSTM's sequence, then advice text from the job's values) cost about as much per job as
the rest of the tick, so they are bounded:

* only jobs with risk >= ``explain_min_risk`` (moderate and above) carry factors;
* at most ``max_explain`` jobs are explained a tick: first those whose level differs
  from the level of their last explanation (or that have none), riskiest first, then
  the others, longest-unexplained first. A job not explained this tick carries the
  factors of its last explanation at the same level (kept on its ``RunningJob``), or
  none. Under the cap every candidate is explained every tick; a level change (when
  a Comment is written) comes first, so only more than ``max_explain`` changes in one
  tick (e.g. the first tick after a restart) leave some without factors for a tick.
* the explanation pass (``Scorer.explain``) reuses the tick's score: its parts,
  its normalised sequences and its graph neighbours, so it costs the occlusion only, and the factors are exactly those
  of scoring with ``explain=rows`` (tests/test_agent_state.py checks this).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nomade import features
from nomade.agent import advice
from nomade.agent.jobstate import ROW_FIELDS, Explained, JobState, RunningJob, SampleRows
from nomade.ml.ensemble import PARTS

if TYPE_CHECKING:   # torch only when a tick scores (``nomade --help`` imports no torch)
    from nomade.ml.models import Neighbours

#: Risk from which a prediction carries its top contributing factors.
EXPLAIN_MIN_RISK = 0.3
#: Most jobs explained in one tick.
MAX_EXPLAIN = 300
#: Factors per prediction (before advice keeps the cited ones, runtime evidence first).
TOP_FACTORS = 6
_START_PART = features.START_PART
_REQUEST = ("req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts")


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
    start_X: np.ndarray | None = field(default=None)
    """The start-time features as of each job's start (0 where unknown; the runtime
    part 0): what training finds a job's graph neighbours by (its ``ref_start_X``).
    None: by ``X``'s start-time part, as of the tick."""
    step_s: float = features.GRID_STEP_S
    """The grid step of ``S`` (how long the CPU has been idle is read from it)."""


class ScoresLike(Protocol):
    """What ``score`` reads of ``nomade.ml.inference.Scores``."""

    risk: np.ndarray
    level: np.ndarray
    parts: np.ndarray

    def factors(self, i: int, top: int = 3) -> list[dict[str, Any]]: ...


class ScorerLike(Protocol):
    """What ``score`` needs of ``nomade.ml.inference.Scorer``."""

    models: Mapping[str, Any]

    @property
    def version(self) -> str | None: ...
    @property
    def grid(self) -> tuple[float, int]: ...
    def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool = True, neighbours: Neighbours | None = None) -> ScoresLike: ...
    def neighbours(self, X: np.ndarray, mask: np.ndarray, start_ts: np.ndarray | None) -> Neighbours: ...
    # ``scores``: what this scorer's ``score`` returned (its own type, hence Any here)
    def explain(self, scores: Any, rows: np.ndarray | None = None) -> ScoresLike: ...


# ---------------------------------------------------------------- tables

def _job_table(run: list[RunningJob], state: JobState) -> features.JobTable:
    """Running jobs first (rows 0..n-1), then the ended jobs of the history."""
    hist = state.history_columns()
    users = dict(hist.users)
    req = np.array([list(map(r.request.get, _REQUEST)) for r in run], dtype=np.float64)
    req = req.reshape(len(run), len(_REQUEST)).T
    user = np.array([-1 if (u := r.request.get("user")) is None else users.setdefault(u, len(users))
                     for r in run], np.int64)
    nan = np.full(len(hist.end_ts), np.nan)
    col = dict(zip(_REQUEST, req, strict=True))
    return features.JobTable(
        job_id=np.concatenate([np.array([r.job_id for r in run], dtype=object), hist.job_id]),
        user=np.concatenate([user, hist.user]),
        **{k: np.concatenate([col[k], nan]) for k in _REQUEST},
        end_ts=np.concatenate([np.full(len(run), np.nan), hist.end_ts]),
        state=np.concatenate([np.full(len(run), None, dtype=object), hist.state]),
        label=np.concatenate([np.full(len(run), np.nan), hist.label]))


def _sample_table(rows: SampleRows) -> features.SampleTable:
    """The rings as a ``SampleTable`` (job i = row i of the job table), multi-node jobs
    summed over nodes by ``features.job_totals`` as in training; each row keeps its own
    node's iowait (``iowait_pct``, joined as training joins it)."""
    job_index = np.repeat(np.arange(len(rows.counts)), rows.counts)
    ts = rows.cols[0]
    by_name = np.argsort(np.argsort(np.array(rows.node_names, dtype=object)))
    node = by_name[rows.cols[-1].astype(np.int64)] if len(by_name) else np.zeros(len(ts), np.int64)
    cols = {c: rows.cols[k] for k, c in enumerate(ROW_FIELDS) if k}
    if rows.iowait is not None:
        cols["iowait_pct"] = rows.iowait
    ok = np.isfinite(ts)
    if not ok.all():
        job_index, ts, node = job_index[ok], ts[ok], node[ok]
        cols = {c: v[ok] for c, v in cols.items()}
    return features.SampleTable(job_index, ts, features.job_totals(job_index, node, ts, cols))


def tick_inputs(state: JobState, now: float, sequence_length: int, interval_s: float) -> TickInputs:
    """The features and sequences of every scorable running job as of ``now``;
    sequences on the grid of ``sequence_length`` steps of ``interval_s`` (the loaded
    models' ``Scorer.grid``)."""
    run = state.scorable()
    jobs = _job_table(run, state)
    samples = _sample_table(state.sample_rows(run))
    rows = np.arange(len(run))
    t = np.full(len(run), float(now))
    X, mask = features.asof_features(jobs, samples, t, rows)
    S, lengths = features.sequences(jobs, samples, t, sequence_length, interval_s, rows)
    return TickInputs(run, now, X, mask, S, lengths, jobs.start_ts[rows], features.start_features(jobs, rows),
                      float(interval_s))


# ---------------------------------------------------------------- explanations

def explain_rows(jobs: list[RunningJob], risk: np.ndarray, level: np.ndarray, now: float,
                 min_risk: float = EXPLAIN_MIN_RISK, limit: int = MAX_EXPLAIN) -> np.ndarray:
    """The rows to explain this tick (module doc): risk >= ``min_risk``; a changed or
    first level first (riskiest first), then the longest unexplained; at most ``limit``."""
    cand = np.flatnonzero(np.asarray(risk) >= min_risk)
    if len(cand) <= limit:
        return cand
    memo = [jobs[i].explained for i in cand]
    changed = np.array([m is None or m.level != level[i] for m, i in zip(memo, cand, strict=True)], bool)
    age = np.array([math.inf if m is None else now - m.ts for m in memo])
    order = np.lexsort((np.where(changed, -np.asarray(risk)[cand], -age), ~changed))
    return np.sort(cand[order[:limit]])


def _explain(inputs: TickInputs, scorer: ScorerLike, scores: ScoresLike, rows: np.ndarray,
             level: np.ndarray, top: int) -> None:
    """Explain ``rows`` of this tick's ``scores`` (see the module doc); the wire factors
    go to each job's ``explained``."""
    if not len(rows):
        return
    ex = scorer.explain(scores, rows)
    idle = features.idle_minutes(inputs.S[rows], inputs.lengths[rows], inputs.step_s)
    for k, i in enumerate(rows.tolist()):
        inputs.jobs[i].explained = Explained(str(level[i]), inputs.now,
                                             advice.wire_factors(ex.factors(i, top), evidence(inputs, i, idle[k])))


def evidence(inputs: TickInputs, i: int, idle_min: float) -> dict[str, float]:
    """Job ``i``'s known raw feature values by name, and how long its CPU has been idle
    (``cpu_idle_min``): what advice phrases state beside the cited factors (the time
    left to the limit, MB/min of memory growth)."""
    known = {name: float(v) for name, v, m in zip(features.FEATURES, inputs.X[i], inputs.mask[i], strict=True) if m}
    known["cpu_idle_min"] = float(idle_min)
    return known


def _factors(job: RunningJob, level: str, risk: float, min_risk: float) -> list[dict[str, Any]]:
    """The job's factors this tick: its last explanation if at this level, else none."""
    memo = job.explained
    if risk < min_risk:
        job.explained = None
        return []
    return memo.factors if memo is not None and memo.level == level else []


# ---------------------------------------------------------------- graph neighbours

class KeptNeighbours:
    """Each running job's graph neighbours, kept from tick to tick.

    Training finds a job's neighbours once, by its start-time features as of its start
    (requests, and the user's history then), among the reference jobs that ended
    before it started: one neighbourhood for every tick of the job. ``neighbours``
    does the same live (``TickInputs.start_X``), searching only the jobs whose start
    time or start-time features differ from the last call (a new job, a completed
    request, a late final state of a job that ended before it started) and all of
    them after a model reload; the others keep theirs, so the result is what a search
    of every job would give. Jobs no longer passed are forgotten.
    """

    def __init__(self) -> None:
        self._scorer: object | None = None
        self._row: dict[str, int] = {}
        self._key = np.zeros((0, 1 + features.N_FEATURES))
        self._nbrs: Neighbours | None = None

    def neighbours(self, scorer: ScorerLike, inputs: TickInputs) -> Neighbours:
        """The neighbours of the jobs of ``inputs`` (row i: ``inputs.jobs[i]``)."""
        start_X = _start_features(inputs)
        key = np.column_stack([np.asarray(inputs.start_ts, np.float64), start_X])
        job_ids = [r.job_id for r in inputs.jobs]
        old = np.full(len(job_ids), -1, np.int64)
        last = self._nbrs
        if scorer is self._scorer and last is not None:
            old = np.fromiter(map(self._row.get, job_ids, [-1] * len(job_ids)), np.int64, len(job_ids))
        kept = old >= 0
        kept[kept] = (key[kept] == self._key[old[kept]]).all(axis=1)   # NaN start: searched again
        if last is None or not kept.any():
            nbrs = search_neighbours(scorer, start_X, inputs.start_ts)
        else:
            nbrs = type(last)(*(a[np.where(kept, old, 0)] for a in (last.idx, last.sim, last.valid)))
            new = np.flatnonzero(~kept)
            if len(new):
                found = search_neighbours(scorer, start_X[new], inputs.start_ts[new])
                nbrs.idx[new], nbrs.sim[new], nbrs.valid[new] = found.idx, found.sim, found.valid
        self._scorer, self._key, self._nbrs = scorer, key, nbrs
        self._row = dict(zip(job_ids, range(len(job_ids)), strict=True))
        return nbrs


def _start_features(inputs: TickInputs) -> np.ndarray:
    """``inputs.start_X``, or the start-time part of ``X`` where it is None."""
    if inputs.start_X is not None:
        return inputs.start_X
    return np.where(inputs.mask & _START_PART, inputs.X, 0.0).astype(np.float32)


def search_neighbours(scorer: ScorerLike, start_X: np.ndarray, start_ts: np.ndarray) -> Neighbours:
    """``scorer.neighbours`` of start-time features ``start_X`` compared over the whole
    start-time part (an unknown one counts as 0), as training compares them."""
    return scorer.neighbours(start_X, np.broadcast_to(_START_PART, start_X.shape), start_ts)


# ---------------------------------------------------------------- scoring

def score(inputs: TickInputs, scorer: ScorerLike, *, explain_min_risk: float = EXPLAIN_MIN_RISK,
          max_explain: int = MAX_EXPLAIN, top: int = TOP_FACTORS,
          kept: KeptNeighbours | None = None) -> list[dict[str, Any]]:
    """One ``prediction`` body per job of ``inputs`` (ts = the tick's time); a job that
    no loaded model can score (risk NaN) gets none. Records each explained job's factors
    on its ``RunningJob.explained`` (see the module doc). The GNN's graph neighbours are
    found as training finds them (``KeptNeighbours``); ``kept``: the caller's, kept from
    tick to tick (an agent keeps one for its life); None: searched for every job."""
    if not inputs.jobs:
        return []
    import torch

    with torch.inference_mode():
        nbrs = None
        if "gnn" in scorer.models:   # by the start-time features as of the start (KeptNeighbours)
            nbrs = (kept.neighbours(scorer, inputs) if kept is not None else
                    search_neighbours(scorer, _start_features(inputs), inputs.start_ts))
        scores = scorer.score(inputs.X, inputs.mask, inputs.S, inputs.lengths, inputs.start_ts,
                              explain=False, neighbours=nbrs)
        risk, level = np.asarray(scores.risk, np.float64), np.asarray(scores.level)
        _explain(inputs, scorer, scores, explain_rows(inputs.jobs, risk, level, inputs.now,
                                                      explain_min_risk, max_explain), level, top)
    return _bodies(inputs, scores, risk, level, scorer.version, explain_min_risk)


def _bodies(inputs: TickInputs, scores: ScoresLike, risk: np.ndarray, level: np.ndarray,
            version: str | None, min_risk: float) -> list[dict[str, Any]]:
    """The ``prediction`` bodies of the jobs with a finite risk (in job order)."""
    values = np.asarray(scores.parts, np.float64)
    parts = values.astype(object)
    parts[~np.isfinite(values)] = None
    scored = np.flatnonzero(np.isfinite(risk))   # the others: no model could score them
    risks, levels = np.clip(risk[scored], 0.0, 1.0).tolist(), level[scored].astype(str).tolist()
    now, jobs, out = inputs.now, inputs.jobs, []
    for i, r, lv, p in zip(scored.tolist(), risks, levels, parts[scored].tolist(), strict=True):
        run = jobs[i]
        request = run.request
        out.append({
            "job_id": run.job_id, "user": request.get("user"), "partition": request.get("partition"),
            "nodes": list(run.nodes), "risk": r, "level": lv, "parts": dict(zip(PARTS, p, strict=True)),
            "factors": _factors(run, lv, r, min_risk), "ts": now, "model_version": version})
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
