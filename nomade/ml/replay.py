"""Operational figures: replay test jobs tick by tick through the live scorer.

``replay(jobs, samples, rows, scorer, ...)`` takes ended jobs (``rows`` of a
:class:`features.JobTable`, usually the test split) and scores each of them at the
scoring ticks it would have seen while running: ``start, start + step, ... < end``
(``step`` = ``[agent] interval_s`` or coarser; at most ``max_ticks`` per job, spread
evenly over the run, as :func:`features.snapshots` spreads training examples). Each
tick's inputs are built by the functions the agent's tick uses
(:func:`features.asof_features`, :func:`features.sequences` on the models' time
grid, ``Scorer.grid``, as in training and the agent), as of the tick: samples stamped at
or before it, history of jobs that ended before it. They are scored by a loaded :class:`nomade.ml.inference.Scorer`
(the model files the agent would load), many jobs' ticks in one call.

Per job: the first tick whose risk reached the alert threshold (``[ml.alerts]
high_risk_threshold``) and each level's lower bound, and the highest risk. Then
(:func:`figures`, pure):

* **coverage**: failed jobs (label 1) that crossed the threshold before they ended;
* **false-alarm rate**: completed jobs (label 0) that ever crossed it;
* **precision**: failed jobs among the ended jobs that crossed it;
* **lead time** of a covered failed job: its end minus its first crossing; median,
  p10 and p90 in minutes over covered failed jobs;
* the same coverage (or false-alarm rate, for COMPLETED) per final state, and per
  level bound.

A tick is an instant at which the agent would have published a prediction, so a
crossing is always before the end; a job scored by no model (risk NaN at every
tick) counts as "unscored" and in no rate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nomade import features
from nomade.ml.ensemble import LEVELS
from nomade.ml.inference import START_PART
from nomade.ml.models import Neighbours

DEFAULT_MAX_TICKS = 64
"""Ticks replayed per job at most (spread evenly over the run)."""
CHUNK = 16384
"""Ticks scored per ``Scorer.score`` call (sequences need ~200 B x length each)."""
LEVEL_BOUNDS: tuple[tuple[str, float], ...] = tuple(
    zip([name for _, name in LEVELS[1:]] + ["critical"], [bound for bound, _ in LEVELS]))
"""Lower bound of each level above low: moderate 0.3, high 0.6, critical 0.8."""


class ScorerLike(Protocol):
    """What the replay needs of :class:`nomade.ml.inference.Scorer`."""

    models: dict[str, Any]

    def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool = True, neighbours: Neighbours | None = None) -> Any: ...

    def neighbours(self, X: np.ndarray, mask: np.ndarray, start_ts: np.ndarray | None) -> Neighbours: ...


# ------------------------------------------------------------------ ticks

def tick_times(jobs: features.JobTable, rows: np.ndarray, step_s: float,
               max_ticks: int = DEFAULT_MAX_TICKS) -> tuple[np.ndarray, np.ndarray]:
    """The scoring ticks of each ended, labelled job of ``rows``: ``(job int64[m] =
    position in rows, t float64[m])``, sorted by (job, t); every tick is before the
    job's end (a job shorter than ``step_s`` gets one tick, at its start)."""
    rows = np.asarray(rows, np.int64)
    local, t, _ = features.snapshots(jobs.take(rows), features.SampleTable.empty(), step_s, max_ticks)
    return local.astype(np.int64), t


def score_ticks(scorer: ScorerLike, jobs: features.JobTable, samples: features.SampleTable,
                job_rows: np.ndarray, t: np.ndarray, sequence_length: int, interval_s: float,
                chunk: int = CHUNK) -> np.ndarray:
    """Risk float64[m] of job row ``job_rows[i]`` as of ``t[i]``, as the agent's tick
    computes it (NaN where no model could score); ``chunk`` ticks per scorer call."""
    return score_ticks_many({"": scorer}, jobs, samples, job_rows, t, sequence_length, interval_s, chunk)[""]


def score_ticks_many(scorers: Mapping[str, ScorerLike], jobs: features.JobTable, samples: features.SampleTable,
                     job_rows: np.ndarray, t: np.ndarray, sequence_length: int, interval_s: float,
                     chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """:func:`score_ticks` for several scorers at once: each tick's inputs are built
    once and given to every scorer. Sequences are built only when a scorer has an
    LSTM (nothing else reads them)."""
    import torch

    job_rows, t = np.asarray(job_rows, np.int64), np.asarray(t, np.float64)
    risk = {name: np.full(len(t), np.nan) for name in scorers}
    lstm = any("lstm" in s.models for s in scorers.values())
    with torch.inference_mode():
        own = {name: start_neighbours(s, jobs, job_rows) for name, s in scorers.items()}
        for lo in range(0, len(t), chunk):
            r, tt = job_rows[lo:lo + chunk], t[lo:lo + chunk]
            X, mask = features.asof_features(jobs, samples, tt, r)
            S = lengths = None
            if lstm:
                S, lengths = features.sequences(jobs, samples, tt, sequence_length, interval_s, r)
            for name, scorer in scorers.items():
                nb = own[name]
                nbrs = None if nb is None else Neighbours(*(a[lo:lo + chunk] for a in (nb.idx, nb.sim, nb.valid)))
                scores = scorer.score(X, mask, S, lengths, jobs.start_ts[r], explain=False, neighbours=nbrs)
                risk[name][lo:lo + chunk] = np.asarray(scores.risk, np.float64)
    return risk


def start_neighbours(scorer: ScorerLike, jobs: features.JobTable, job_rows: np.ndarray) -> Neighbours | None:
    """The graph neighbours of each row's job, found as training and the agent find them:
    once per job, by its start-time features as of its start (None without a GNN)."""
    if "gnn" not in scorer.models or not len(job_rows):
        return None
    u, inverse = np.unique(job_rows, return_inverse=True)
    X = features.start_features(jobs, u)
    nb = scorer.neighbours(X, np.broadcast_to(START_PART, X.shape), jobs.start_ts[u])
    return Neighbours(nb.idx[inverse], nb.sim[inverse], nb.valid[inverse])


def confirmed(job: np.ndarray, risk: np.ndarray, confirm: int) -> np.ndarray:
    """Each tick's lowest risk over it and the job's ``confirm - 1`` ticks before it
    (NaN until the job has had that many; ticks sorted by job, then time): it reaches
    a bound exactly where ``confirm`` consecutive ticks did."""
    if confirm < 1:
        raise ValueError(f"confirm must be >= 1, got {confirm}")
    out = np.asarray(risk, np.float64).copy()
    job = np.asarray(job)
    for k in range(1, confirm):
        prev = np.full(len(out), np.nan)
        prev[k:] = np.where(job[k:] == job[:-k], risk[:-k], np.nan)
        out = np.where(np.isnan(prev), np.nan, np.fmin(out, prev))
    return out


def first_crossings(n_jobs: int, job: np.ndarray, t: np.ndarray, risk: np.ndarray,
                    thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per job (0..n_jobs-1), the first tick time with ``risk >= threshold`` for each
    threshold (float64[n_jobs, k], NaN: never), and the highest risk (NaN: never scored)."""
    job, t, risk = np.asarray(job, np.int64), np.asarray(t, np.float64), np.asarray(risk, np.float64)
    first = np.full((n_jobs, len(thresholds)), np.nan)
    for k, threshold in enumerate(thresholds):
        hit = np.flatnonzero(risk >= threshold)
        np.fmin.at(first[:, k], job[hit], t[hit])
    top = np.full(n_jobs, np.nan)
    np.fmax.at(top, job, risk)
    return first, top


# ------------------------------------------------------------------ figures (pure)

def _rate(n: int, of: int) -> float | None:
    return n / of if of else None


def _lead_minutes(lead_s: np.ndarray) -> dict[str, float] | None:
    if not len(lead_s):
        return None
    p10, median, p90 = np.percentile(lead_s / 60.0, [10, 50, 90])
    return {"n": int(len(lead_s)), "median": float(median), "p10": float(p10), "p90": float(p90)}


def figures(end_ts: np.ndarray, label: np.ndarray, state: np.ndarray, first: np.ndarray,
            max_risk: np.ndarray, threshold: float,
            levels: Sequence[tuple[str, float]] = LEVEL_BOUNDS) -> dict[str, Any]:
    """The operational figures (module doc) of n ended jobs from their first crossing
    times ``first`` float[n, 1 + len(levels)] (column 0: ``threshold``, then each
    level's bound; NaN: never) and highest risk ``max_risk`` (NaN: never scored).
    Jobs with an unknown label count only in ``jobs``/``unscored``. JSON-safe."""
    end_ts, label = np.asarray(end_ts, np.float64), np.asarray(label, np.float64)
    state, first = np.asarray(state, dtype=object), np.asarray(first, np.float64)
    if first.shape != (len(end_ts), 1 + len(levels)):
        raise ValueError(f"first must be [{len(end_ts)}, {1 + len(levels)}], got {first.shape}")
    scored = np.isfinite(np.asarray(max_risk, np.float64))
    crossed = (first <= end_ts[:, None]) & scored[:, None]          # NaN compares False
    failed, completed = scored & (label == 1), scored & (label == 0)

    def at(col: int) -> dict[str, Any]:
        c = crossed[:, col]
        caught, false = int((c & failed).sum()), int((c & completed).sum())
        lead = (end_ts - first[:, col])[c & failed]
        return {"coverage": {"caught": caught, "failed": int(failed.sum()), "rate": _rate(caught, int(failed.sum()))},
                "false_alarms": {"alerted": false, "completed": int(completed.sum()),
                                 "rate": _rate(false, int(completed.sum()))},
                "precision": {"failed": caught, "alerted": caught + false, "rate": _rate(caught, caught + false)},
                "lead_time_min": _lead_minutes(lead)}

    main = at(0)
    covered = crossed[:, 0] & failed
    by_state = {}
    for s in sorted({str(x) for x in state[scored & np.isfinite(label)]},
                    key=lambda s: (-int((state == s).sum()), s)):
        mine = scored & (state == s)
        n, hit = int(mine.sum()), int((mine & crossed[:, 0]).sum())
        by_state[s] = {"jobs": n, "crossed": hit, "rate": _rate(hit, n),
                       "failure": bool(np.nanmax(label[mine]) == 1),
                       "lead_time_min": _lead_minutes((end_ts - first[:, 0])[mine & covered])}
    return {"threshold": float(threshold), "jobs": int(len(end_ts)), "unscored": int((~scored).sum()),
            **main, "by_state": by_state,
            "levels": {name: {"bound": float(bound), **at(1 + i)}
                       for i, (name, bound) in enumerate(levels)},
            "lead_times_s": (end_ts - first[:, 0])[covered].tolist(),
            "lead_states": [str(s) for s in state[covered]]}


# ------------------------------------------------------------------ the replay

@dataclass
class Ticks:
    """Ended, labelled jobs replayed tick by tick through one or more scorers: ``rows``
    the job rows replayed (int64[n]), ``job`` each tick's position in ``rows`` (ticks
    sorted by job, then time), ``t`` its time, ``risk`` each scorer's risk of each
    tick (NaN: no model scored it); ``requested`` the rows asked for (some may not be
    replayable: no start, end or label)."""

    rows: np.ndarray
    job: np.ndarray
    t: np.ndarray
    risk: dict[str, np.ndarray]
    requested: int
    step_s: float
    max_ticks: int
    took_s: float = 0.0

    def subset(self, keep: np.ndarray, requested: int | None = None) -> Ticks:
        """The ticks of the jobs ``keep`` (bool[n] over ``rows``) only; ``requested``:
        how many rows were asked for (default: those kept)."""
        keep = np.asarray(keep, bool)
        at = np.cumsum(keep) - 1
        tick = keep[self.job]
        return Ticks(self.rows[keep], at[self.job[tick]], self.t[tick], {k: v[tick] for k, v in self.risk.items()},
                     int(keep.sum()) if requested is None else requested, self.step_s, self.max_ticks, self.took_s)


def replay_ticks(jobs: features.JobTable, samples: features.SampleTable, rows: np.ndarray,
                 scorers: Mapping[str, ScorerLike], *, step_s: float, interval_s: float, sequence_length: int,
                 max_ticks: int = DEFAULT_MAX_TICKS, chunk: int = CHUNK) -> Ticks:
    """The ticks of the ended, labelled jobs ``rows`` and every scorer's risk at each
    (each tick's inputs built once, :func:`score_ticks_many`)."""
    if not step_s > 0 or max_ticks < 1:
        raise ValueError(f"step_s must be > 0 and max_ticks >= 1, got {step_s}, {max_ticks}")
    t0 = time.monotonic()
    rows = np.asarray(rows, np.int64)
    ok = rows[np.isfinite(jobs.start_ts[rows]) & np.isfinite(jobs.end_ts[rows]) & np.isfinite(jobs.label[rows])]
    job, t = tick_times(jobs, ok, step_s, max_ticks)
    risk = score_ticks_many(scorers, jobs, samples, ok[job], t, sequence_length, interval_s, chunk)
    return Ticks(ok, job, t, risk, len(rows), float(step_s), int(max_ticks), time.monotonic() - t0)


def replay(jobs: features.JobTable, samples: features.SampleTable, rows: np.ndarray, scorer: ScorerLike, *,
           threshold: float, step_s: float, interval_s: float, sequence_length: int,
           max_ticks: int = DEFAULT_MAX_TICKS, chunk: int = CHUNK,
           groups: np.ndarray | None = None, confirm: int = 1) -> dict[str, Any]:
    """Replay the ended, labelled jobs ``rows`` of ``jobs``/``samples`` through
    ``scorer`` (module doc); ``step_s`` between ticks, ``interval_s`` and
    ``sequence_length`` as the agent's tick. Returns :func:`summarise`."""
    ticks = replay_ticks(jobs, samples, rows, {"": scorer}, step_s=step_s, interval_s=interval_s,
                         sequence_length=sequence_length, max_ticks=max_ticks, chunk=chunk)
    return summarise(jobs, ticks, "", threshold=threshold, groups=groups, confirm=confirm)


def summarise(jobs: features.JobTable, ticks: Ticks, name: str, *, threshold: float,
              groups: np.ndarray | None = None, confirm: int = 1) -> dict[str, Any]:
    """:func:`figures` of scorer ``name``'s replayed ``ticks``, plus the replay's
    settings, tick count and wall time (JSON-safe). ``groups``: a label per job of
    ``jobs`` (e.g. its shape; None unknown): then ``by_group`` holds each label's
    coverage, false alarms and lead times. ``confirm``: a job crosses a bound at the
    tick that makes ``confirm`` consecutive ticks at or above it (``[ml.alerts]
    confirm_predictions``, as the agent writes a Comment)."""
    ok, job, t, risk = ticks.rows, ticks.job, ticks.t, ticks.risk[name]
    thresholds = [threshold, *(bound for _, bound in LEVEL_BOUNDS)]
    first, _ = first_crossings(len(ok), job, t, confirmed(job, risk, confirm), thresholds)
    top = first_crossings(len(ok), job, t, risk, [])[1]   # scored: by the plain risk
    out = figures(jobs.end_ts[ok], jobs.label[ok], jobs.state[ok], first, top, threshold)
    out["lead_share_median"] = _group(jobs, ok, first, top, threshold)["lead_share_median"]
    if groups is not None:
        g = np.asarray(groups, dtype=object)[ok]
        out["by_group"] = {str(k): _group(jobs, ok[g == k], first[g == k], top[g == k], threshold)
                           for k in sorted({x for x in g if x is not None})}
    out.update({"step_s": ticks.step_s, "max_ticks_per_job": ticks.max_ticks, "ticks": int(len(t)),
                "confirm": int(confirm), "skipped_jobs": int(ticks.requested - len(ok)), "took_s": ticks.took_s})
    return out


def _group(jobs: features.JobTable, rows: np.ndarray, first: np.ndarray, top: np.ndarray,
           threshold: float) -> dict[str, Any]:
    """Coverage, false alarms and lead times (also as a share of the job's run) of one group."""
    f = figures(jobs.end_ts[rows], jobs.label[rows], jobs.state[rows], first, top, threshold)
    covered = (first[:, 0] <= jobs.end_ts[rows]) & (jobs.label[rows] == 1) & np.isfinite(top)
    run = (jobs.end_ts - jobs.start_ts)[rows][covered]
    share = (jobs.end_ts[rows] - first[:, 0])[covered] / np.where(run > 0, run, np.nan)
    return {"jobs": f["jobs"], "coverage": f["coverage"], "false_alarms": f["false_alarms"],
            "lead_time_min": f["lead_time_min"],
            "lead_share_median": float(np.nanmedian(share)) if np.isfinite(share).any() else None,
            "states": {s: v["jobs"] for s, v in f["by_state"].items()}}


# ------------------------------------------------------------------ table

def format_table(r: dict[str, Any]) -> str:
    """The replay figures as text: the alert threshold, each level, each final state."""
    lines = [f"replay of {r['jobs']} test jobs through the live scorer: {r['ticks']} ticks "
             f"every {r['step_s']:g} s (at most {r['max_ticks_per_job']} a job); an alert needs "
             f"{r.get('confirm', 1)} consecutive ticks at the bound; took {r['took_s']:.1f} s"]
    head = ("alert at", "coverage", "false alarms", "precision", "lead median", "p10", "p90")
    rows = [_row(f"risk >= {r['threshold']:.2f}", r)]
    rows += [_row(f"{name} ({v['bound']:.1f})", v) for name, v in r["levels"].items()]
    lines += _aligned(head, rows)
    if r.get("lead_share_median") is not None:
        lines.append(f"median lead time as a share of the failed job's run: {_pct(r['lead_share_median'])}")
    lines.append("")
    head = ("final state", "jobs", f"crossed {r['threshold']:.2f}", "share", "lead median")
    lines += _aligned(head, [(s, str(v["jobs"]), str(v["crossed"]),
                              ("" if v["failure"] else "false alarms ") + _pct(v["rate"]),
                              _minutes(v["lead_time_min"], "median")) for s, v in r["by_state"].items()])
    if r.get("by_group"):
        head = ("shape", "jobs", "coverage", "false alarms", "lead median", "lead share")
        lines += ["", *_aligned(head, [(name, str(v["jobs"]), f"{v['coverage']['caught']}/{v['coverage']['failed']}",
                                        f"{v['false_alarms']['alerted']}/{v['false_alarms']['completed']}",
                                        _minutes(v["lead_time_min"], "median"),
                                        _pct(v["lead_share_median"]))
                                       for name, v in r["by_group"].items()])]
    lines.append("coverage: failed jobs that crossed before they ended; false alarms: completed jobs that "
                 "ever crossed; lead time: end minus first crossing (minutes, covered failed jobs)"
                 + (f"; {r['unscored']} jobs no model could score" if r["unscored"] else ""))
    return "\n".join(lines)


def _row(name: str, v: dict[str, Any]) -> tuple[str, ...]:
    cov, fa, pr, lead = v["coverage"], v["false_alarms"], v["precision"], v["lead_time_min"]
    return (name, f"{cov['caught']}/{cov['failed']} {_pct(cov['rate'])}",
            f"{fa['alerted']}/{fa['completed']} {_pct(fa['rate'])}", _pct(pr["rate"]),
            _minutes(lead, "median"), _minutes(lead, "p10"), _minutes(lead, "p90"))


def _aligned(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(head), line(tuple("-" * w for w in widths)), *map(line, rows)]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _minutes(lead: dict[str, float] | None, key: str) -> str:
    return "-" if lead is None else f"{lead[key]:.1f} min"
