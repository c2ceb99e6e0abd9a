"""Judge the alerts where issue #10 judges them: on the failures that show in behaviour,
and on each failure shape left out of training.

**Behaviour-visible failures** (:data:`BEHAVIOUR_VISIBLE`, the one place the rule
lives): a job whose behaviour (the corpus metadata's ``variant``: a plain job's shape,
an array task's or a multinode job's inner behaviour) and final state are one of
memory growth (a leak, or growth that levels off) or a process/thread storm that ran
out of memory (OUT_OF_MEMORY; a multinode ``mem_grow`` whose ``srun`` step the kernel
killed ends FAILED), a stall or a CPU-starved job that outlived its time limit
(TIMEOUT), or a job that filled its scratch filesystem (FAILED on ENOSPC). Crashes
after a random amount of work, user cancels and every other failure are left out of
this subset (neither failed nor healthy). The shape and variant choose which jobs are
judged; no model reads them.

Every figure is per job, from the replayed ticks (``replay.Ticks``) of each scorer (the
models as the agent loads them, each baseline, each rule):

* **AUC ticks**: every tick a case, scored by its risk, each job weighing one in all;
* **AUC jobs**: each job's *alert score*, the highest risk it held for ``confirm``
  consecutive ticks (whether the agent would ever have alerted, and at which bound);
* **coverage** / **false alarms** at a threshold: failed / completed jobs whose alert
  score reached it; **lead share**: the job's end minus its first confirmed crossing,
  as a share of its run time (start to end), median over the covered failed jobs;
* the **operating point at most** ``MAX_FALSE_ALARMS`` **false alarms**: the lowest
  alert score of a validation job at which no more than that share of the validation
  part's completed jobs would have been alerted (:func:`bounded_threshold`), applied
  unchanged to the judged jobs: the judged jobs never choose their own threshold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nomade import features
from nomade.ml import metrics, replay

BEHAVIOUR_VISIBLE: dict[str, frozenset[str]] = {
    "mem_grow": frozenset({"OUT_OF_MEMORY", "FAILED"}),
    "leak": frozenset({"OUT_OF_MEMORY"}),
    "procs": frozenset({"OUT_OF_MEMORY"}),
    "threads": frozenset({"OUT_OF_MEMORY"}),
    "stall": frozenset({"TIMEOUT"}),
    "starve": frozenset({"TIMEOUT"}),
    "scratch_fill": frozenset({"FAILED"}),
}
"""Behaviour (corpus ``variant``) -> the final states in which it is a behaviour-visible failure."""
RULE_TEXT = ("memory growth or a process/thread storm that ran out of memory, a stall or a CPU-starved job "
             "that hit its time limit, a job that filled its scratch filesystem")
MAX_FALSE_ALARMS = 0.05
"""Largest share of completed validation jobs alerted at the bounded operating point."""
NEVER = -1.0
"""Alert score of a job that never held a risk for the confirming ticks (below any risk)."""
MIN_FAILED = 5
"""Fewest failed jobs (user cancels aside) that make a shape a failure shape to leave out."""


def behaviour_visible(variants: Sequence[Any], states: Sequence[Any]) -> np.ndarray:
    """bool[n]: job ``k`` (behaviour ``variants[k]``, final state ``states[k]``) is a
    behaviour-visible failure (:data:`BEHAVIOUR_VISIBLE`)."""
    return np.array([str(s) in BEHAVIOUR_VISIBLE.get(str(v), ()) for v, s in zip(variants, states, strict=True)], bool)


def failure_shapes(shapes: Sequence[Any], states: Sequence[Any], min_failed: int = MIN_FAILED) -> list[str]:
    """The shapes (sorted) with at least ``min_failed`` failed jobs, cancels aside: a
    user's cancel says nothing of the job's behaviour."""
    failed = Counter(str(sh) for sh, st in zip(shapes, states, strict=True)
                     if sh is not None and features.label_of(st) == 1 and str(st) != "CANCELLED")
    return sorted(s for s, n in failed.items() if n >= min_failed)


def alert_scores(ticks: replay.Ticks, name: str, confirm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of scorer ``name``: each job's alert score (float[n], :data:`NEVER` where it never
    held a risk for ``confirm`` ticks), whether any model scored it (bool[n]), and each
    tick's confirmed risk (``replay.confirmed``)."""
    risk = ticks.risk[name]
    held = replay.confirmed(ticks.job, risk, confirm)
    score = np.full(len(ticks.rows), NEVER)
    np.fmax.at(score, ticks.job, held)
    scored = np.zeros(len(ticks.rows), bool)
    scored[ticks.job[np.isfinite(risk)]] = True
    return score, scored, held


def bounded_threshold(label: np.ndarray, score: np.ndarray, max_fa: float = MAX_FALSE_ALARMS) -> float | None:
    """The lowest of the jobs' alert scores (:data:`NEVER` aside) at which at most
    ``max_fa`` of the completed jobs (``label`` 0) score at or above it; None when
    there is no completed job or even the highest score alerts too many of them."""
    label, score = np.asarray(label, np.float64), np.asarray(score, np.float64)
    neg = np.sort(score[label == 0])
    candidates = np.unique(score[np.isfinite(label) & (score > NEVER)])
    if not len(neg) or not len(candidates):
        return None
    fa = (len(neg) - np.searchsorted(neg, candidates, side="left")) / len(neg)
    ok = np.flatnonzero(fa <= max_fa)
    return float(candidates[ok[0]]) if len(ok) else None


def thresholds(jobs: features.JobTable, ticks: replay.Ticks, names: Sequence[str], validation: np.ndarray,
               confirm: int, max_fa: float = MAX_FALSE_ALARMS) -> dict[str, dict[str, Any]]:
    """Per scorer, the bounded operating point chosen on the ``validation`` jobs (bool[n]
    over ``ticks.rows``) and the share of completed validation jobs it alerts."""
    out = {}
    label = jobs.label[ticks.rows]
    for name in names:
        score, scored, _ = alert_scores(ticks, name, confirm)
        v = validation & scored & np.isfinite(label)
        threshold = bounded_threshold(label[v], score[v], max_fa)
        neg = v & (label == 0)
        alerted = int((neg & (score >= threshold)).sum()) if threshold is not None else 0
        out[name] = {"threshold": threshold, "max_false_alarms": max_fa,
                     "validation": {"jobs": int(v.sum()), "completed": int(neg.sum()), "alerted": alerted}}
    return out


def _rate(n: int, of: int) -> float | None:
    return n / of if of else None


def point(jobs: features.JobTable, ticks: replay.Ticks, held: np.ndarray, score: np.ndarray,
          positive: np.ndarray, negative: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """Coverage of the ``positive`` jobs, false alarms among the ``negative`` ones (bool[n]
    over ``ticks.rows``) and lead shares of the covered, at ``threshold`` (None: the
    operating point does not exist, nothing is alerted)."""
    alerted = score >= threshold if threshold is not None else np.zeros(len(score), bool)
    caught, false = alerted & positive, alerted & negative
    shares: list[float] = []
    lead_min = None
    if caught.any() and threshold is not None:
        first = replay.first_crossings(len(score), ticks.job, ticks.t, held, [threshold])[0][:, 0]
        end, start = jobs.end_ts[ticks.rows], jobs.start_ts[ticks.rows]
        lead = (end - first)[caught]
        run = (end - start)[caught]
        shares = (lead / np.where(run > 0, run, np.nan)).tolist()
        lead_min = float(np.median(lead)) / 60.0
    finite = [s for s in shares if np.isfinite(s)]
    return {"threshold": threshold,
            "coverage": {"caught": int(caught.sum()), "failed": int(positive.sum()),
                         "rate": _rate(int(caught.sum()), int(positive.sum()))},
            "false_alarms": {"alerted": int(false.sum()), "completed": int(negative.sum()),
                             "rate": _rate(int(false.sum()), int(negative.sum()))},
            "lead_share_median": float(np.median(finite)) if finite else None,
            "lead_time_min_median": lead_min, "lead_shares": finite}


def judge(jobs: features.JobTable, ticks: replay.Ticks, name: str, positive: np.ndarray, negative: np.ndarray,
          confirm: int, shipped: float, bounded: float | None) -> dict[str, Any]:
    """Scorer ``name``'s figures (module doc) on failed jobs ``positive`` against healthy
    jobs ``negative`` (bool[n] over ``ticks.rows``; jobs no model scored left out and
    counted): the AUCs, its job-level ROC curve, and the figures at the ``shipped``
    threshold and at the ``bounded`` operating point."""
    score, scored, held = alert_scores(ticks, name, confirm)
    pos, neg = positive & scored, negative & scored
    keep = pos | neg
    risk = ticks.risk[name]
    tick = keep[ticks.job] & np.isfinite(risk)
    per_job = np.bincount(ticks.job[tick], minlength=len(keep)).astype(np.float64)
    y_tick = pos[ticks.job[tick]].astype(np.float64)
    w_tick = 1.0 / per_job[ticks.job[tick]]
    fpr, tpr = metrics.roc_curve(pos[keep].astype(np.float64), score[keep])
    return {"failed": int(pos.sum()), "completed": int(neg.sum()),
            "unscored": int(((positive | negative) & ~scored).sum()),
            "auc_ticks": metrics.auc_roc(y_tick, risk[tick], w_tick),
            "auc_jobs": metrics.auc_roc(pos[keep].astype(np.float64), score[keep]),
            "roc": {"fpr": fpr, "tpr": tpr},
            "shipped": point(jobs, ticks, held, score, pos, neg, shipped),
            "bounded": point(jobs, ticks, held, score, pos, neg, bounded)}


def behaviour(jobs: features.JobTable, ticks: replay.Ticks, variants: np.ndarray, test: np.ndarray,
              bounds: Mapping[str, dict[str, Any]], confirm: int, shipped: float) -> dict[str, Any]:
    """Each scorer of ``bounds`` on the behaviour-visible failures of the ``test`` jobs
    (bool[n] over ``ticks.rows``) against its completed jobs; ``variants``: the
    behaviour of each job of ``jobs`` (None unknown)."""
    rows = ticks.rows
    visible = behaviour_visible(np.asarray(variants, dtype=object)[rows], jobs.state[rows]) & test
    healthy = test & (jobs.label[rows] == 0)
    return {"rule": RULE_TEXT, "shipped_threshold": shipped, "confirm": confirm,
            "states": dict(Counter(str(s) for s in jobs.state[rows][visible]).most_common()),
            "scorers": {name: {**judge(jobs, ticks, name, visible, healthy, confirm, shipped, b["threshold"]),
                               "validation": b["validation"]} for name, b in bounds.items()}}


def left_out(jobs: features.JobTable, ticks: replay.Ticks, shapes: np.ndarray, shape: str, test: np.ndarray,
             bounds: Mapping[str, dict[str, Any]], confirm: int, shipped: float) -> dict[str, Any]:
    """Each scorer of ``bounds`` on the jobs of ``shape`` (``shapes``: of each job of
    ``jobs``), every one of them (none was trained or validated on): its failures
    against its own completed jobs (``own``), and against the completed ``test`` jobs
    (bool[n] over ``ticks.rows``; ``test``)."""
    rows = ticks.rows
    label = jobs.label[rows]
    mine = np.asarray(shapes, dtype=object)[rows] == shape
    failed, own = mine & (label == 1), mine & (label == 0)
    healthy_test = test & (label == 0)
    out: dict[str, Any] = {"shape": shape, "jobs": int(mine.sum()), "failed": int(failed.sum()),
                           "completed": int(own.sum()), "test_completed": int(healthy_test.sum()),
                           "states": dict(Counter(str(s) for s in jobs.state[rows][failed]).most_common()),
                           "shipped_threshold": shipped, "confirm": confirm, "scorers": {}}
    for name, b in bounds.items():
        vs = {k: judge(jobs, ticks, name, failed, neg, confirm, shipped, b["threshold"])
              for k, neg in (("own", own), ("test", healthy_test))}
        for v in vs.values():
            del v["roc"]
        out["scorers"][name] = {**vs, "validation": b["validation"]}
    return out


# ------------------------------------------------------------------ tables

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _count(c: dict[str, Any], key: str) -> str:
    of = c["failed"] if key == "caught" else c["completed"]
    return f"{c[key]}/{of} {_pct(c['rate'])}"


def _threshold(p: dict[str, Any], val: dict[str, Any]) -> str:
    if p["threshold"] is None:
        return "none"
    return f"{p['threshold']:.2f} ({val['alerted']}/{val['completed']})"


def format_behaviour(b: dict[str, Any], labels: Mapping[str, str]) -> str:
    """The behaviour-visible subset's table: one row per scorer."""
    if "skipped" in b:
        return f"behaviour-visible failures: skipped ({b['skipped']})"
    first = next(iter(b["scorers"].values()))
    shipped = f"{b['shipped_threshold']:.2f}"
    head = ("alert by", "AUC ticks", "AUC jobs", f"coverage@{shipped}", f"false al.@{shipped}", f"lead@{shipped}",
            "threshold (val FA)", "coverage@thr", "false al.@thr", "lead@thr")
    rows: list[tuple[str, ...]] = []
    for name, s in b["scorers"].items():
        sp, bp = s["shipped"], s["bounded"]
        rows.append((labels.get(name, name).strip(), _num(s["auc_ticks"]), _num(s["auc_jobs"]),
                     _count(sp["coverage"], "caught"), _count(sp["false_alarms"], "alerted"),
                     _pct(sp["lead_share_median"]), _threshold(bp, s["validation"]),
                     _count(bp["coverage"], "caught"), _count(bp["false_alarms"], "alerted"),
                     _pct(bp["lead_share_median"])))
    states = ", ".join(f"{k} {v}" for k, v in b["states"].items()) or "none"
    return "\n".join([
        f"behaviour-visible failures of the test part ({b['rule']}): {first['failed']} failed ({states}) "
        f"against its {first['completed']} completed jobs; an alert needs {b['confirm']} consecutive ticks",
        *replay._aligned(head, rows), _LEGEND])


_LEGEND = ("AUC ticks: each replayed tick a case, each job weighing one; AUC jobs: each job's highest risk held "
           "for the confirming ticks; lead: median of (end - first alert) / run time over the covered failed jobs; "
           "thr: the lowest threshold that alerts at most 5% of the validation part's completed jobs "
           "(how many it alerted there), applied unchanged here")


def _shape_rows(s: dict[str, Any], labels: Mapping[str, str], shape: str = "") -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for k, (name, v) in enumerate(s["scorers"].items()):
        own, test = v["own"], v["test"]
        rows.append(((shape if k == 0 else ""), labels.get(name, name).strip(), _num(own["auc_jobs"]),
                     _num(test["auc_jobs"]), _count(own["shipped"]["coverage"], "caught"),
                     _count(own["shipped"]["false_alarms"], "alerted"),
                     _count(test["shipped"]["false_alarms"], "alerted"), _pct(own["shipped"]["lead_share_median"]),
                     _threshold(own["bounded"], v["validation"]), _count(own["bounded"]["coverage"], "caught"),
                     _count(own["bounded"]["false_alarms"], "alerted"),
                     _count(test["bounded"]["false_alarms"], "alerted"), _pct(own["bounded"]["lead_share_median"])))
    return rows


def _shape_head(shipped: float) -> tuple[str, ...]:
    t = f"{shipped:.2f}"
    return ("shape", "alert by", "AUC own", "AUC test", f"coverage@{t}", f"FA own@{t}", f"FA test@{t}", f"lead@{t}",
            "threshold (val FA)", "coverage@thr", "FA own@thr", "FA test@thr", "lead@thr")


_SHAPE_LEGEND = ("own: the shape's failures against its own completed jobs; test: its failures against the test "
                 "part's completed jobs (every shape); every job of the left-out shape is judged, none was "
                 "trained or validated on; AUC: each job's highest risk held for the confirming ticks")


def format_left_out(s: dict[str, Any], labels: Mapping[str, str]) -> str:
    """The left-out shape's own table: one row per scorer."""
    states = ", ".join(f"{k} {v}" for k, v in s["states"].items()) or "none"
    return "\n".join([
        f"the left-out shape {s['shape']} alone: its {s['jobs']} jobs, {s['failed']} failed ({states}), "
        f"{s['completed']} completed; {s['test_completed']} completed jobs in the test part",
        *replay._aligned(_shape_head(s["shipped_threshold"]), _shape_rows(s, labels, s["shape"])), _SHAPE_LEGEND])


def format_each(each: dict[str, Any], labels: Mapping[str, str]) -> str:
    """Leave-one-shape-out for each failure shape: one row per shape and scorer."""
    shapes = each["shapes"]
    if not shapes:
        return "leave-one-shape-out: no shape to leave out"
    rows = [r for name, s in shapes.items() for r in _shape_rows(s["left_out"], labels, name)]
    first = next(iter(shapes.values()))["left_out"]
    counts = ", ".join(f"{k} {v['left_out']['failed']}/{v['left_out']['jobs']}" for k, v in shapes.items())
    return "\n".join([
        f"leave-one-shape-out, one training per shape ({each['took_s'] / 60:.1f} min in all); failed/jobs: {counts}",
        *replay._aligned(_shape_head(first["shipped_threshold"]), rows), _SHAPE_LEGEND])


# ------------------------------------------------------------------ rolling windows

WINDOW_FIGURES: dict[str, str] = {
    "auc_ensemble": "AUC ens.", "auc_gradient_boosting": "AUC GB", "coverage": "coverage", "false_alarms": "FA",
    "lead_share": "lead", "visible_auc_jobs": "vis. AUC jobs", "visible_coverage": "vis. coverage",
    "visible_false_alarms": "vis. FA", "visible_coverage_at_5pct": "vis. cov.@thr",
    "visible_false_alarms_at_5pct": "vis. FA@thr"}
"""The headline figures of one test window (:func:`window_figures`) and their column names."""


def window_figures(w: Mapping[str, Any]) -> dict[str, float | None]:
    """One window's headline figures: test AUC-ROC of the ensemble and of gradient
    boosting; the models' replayed coverage, false alarms and median lead share at the
    alert threshold; with job behaviours, the models' AUC jobs, coverage and false alarms
    on the behaviour-visible failures at that threshold and at the 5 % point."""
    rep = w["replay"]
    out: dict[str, float | None] = {
        "auc_ensemble": w["auc_roc"].get("ensemble"), "auc_gradient_boosting": w["auc_roc"].get("gradient_boosting"),
        "coverage": rep["coverage"]["rate"], "false_alarms": rep["false_alarms"]["rate"],
        "lead_share": rep["lead_share_median"]}
    b = (w.get("behaviour") or {}).get("scorers", {}).get("models")
    if b:
        out.update({"visible_auc_jobs": b["auc_jobs"], "visible_coverage": b["shipped"]["coverage"]["rate"],
                    "visible_false_alarms": b["shipped"]["false_alarms"]["rate"],
                    "visible_coverage_at_5pct": b["bounded"]["coverage"]["rate"],
                    "visible_false_alarms_at_5pct": b["bounded"]["false_alarms"]["rate"]})
    return out


def spread(windows: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float] | None]:
    """Per headline figure (:func:`window_figures`), its min, mean and max over the
    windows that have it (None where none has)."""
    rows = [window_figures(w) for w in windows.values()]
    out: dict[str, dict[str, float] | None] = {}
    for key in WINDOW_FIGURES:
        vals = [float(v) for r in rows if (v := r.get(key)) is not None and np.isfinite(v)]
        out[key] = {"min": min(vals), "mean": float(np.mean(vals)), "max": max(vals)} if vals else None
    return out


def _figure(key: str, value: float | None) -> str:
    return _num(value) if "auc" in key else _pct(value)


def format_windows(report: Mapping[str, Any]) -> str:
    """One row per test window (0: the newest) and the min / mean / max of each figure."""
    keys = [k for k in WINDOW_FIGURES if report["spread"].get(k) is not None]
    rows: list[tuple[str, ...]] = []
    for name, w in report["windows"].items():
        f = window_figures(w)
        rows.append((name, str(w["window"]["test_jobs"]), *(_figure(k, f.get(k)) for k in keys)))
    for stat in ("min", "mean", "max"):
        rows.append((stat, "", *(_figure(k, report["spread"][k][stat]) for k in keys)))
    first = next(iter(report["windows"].values()))
    return "\n".join([
        f"rolling origin: {len(report['windows'])} test windows, each a tenth of the jobs by start, the newest "
        f"first; validation the tenth before each, training every earlier job ({report['took_s'] / 60:.1f} min)",
        *replay._aligned(("window", "test jobs", *(WINDOW_FIGURES[k] for k in keys)), rows),
        f"coverage, FA, lead: every failed / completed test job at risk >= {first['replay']['threshold']:.2f} "
        "(lead: median share of the failed job's run); vis.: the behaviour-visible failures (thr: the 5 % point "
        "chosen on each window's validation part)"])
