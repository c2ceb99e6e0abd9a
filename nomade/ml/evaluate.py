"""Judge the failure models beside two plain baselines on one identical split.

``compare(prepared, cfg)`` trains the models the data supports (GNN, autoencoder, and
the LSTM where there are samples) exactly as ``nomade train`` does, forms the
ensemble, and fits logistic regression and gradient boosting (``baselines``) on the
*same* training examples, with the *same* normalised features (plus the mask of which
are known) and the *same* example weights. Every model then gets one decision
threshold, the one that maximises F1 on the validation split, and is scored once on
the test split: AUC-ROC, AUC-PR, precision, recall, F1.

Honesty by construction: the split is the ``Prepared`` one (80/10/10 by job start
time); test examples touch neither training, early stopping, ensemble weights nor
thresholds. Each entry of the report carries the SHA-256 of the example rows it was
trained, validated and tested on, so a reader (and the tests) can check that every
model saw the same split. ``roc`` holds each model's test ROC curve (thinned), for plots.

Given the job tables the data was prepared from (:class:`ReplaySource`), ``compare``
also replays the test jobs tick by tick through the live scorer (``replay``): the
trained models are written to ``models_dir`` (or a temporary directory), loaded with
``Scorer.load`` as the agent loads them, and every test job is scored at its scoring
ticks; the report's ``replay`` holds coverage, false-alarm rate and lead times. The
validation jobs, and every job of a left-out shape, are replayed with them, through the
baselines and the rules too, for ``judging``'s tables (``behaviour``, ``left_out``);
:func:`leave_out_each` runs one leave-one-shape-out per shape, :func:`rolling_windows` one
judgement per test window moved back in time (rolling origin).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nomade import features
from nomade.config import Config
from nomade.errors import NomadeError
from nomade.ml import judging, metrics, persist, replay, rules
from nomade.ml.baselines import BASELINES, BaselineScorer, inputs, time_split
from nomade.ml.ensemble import PARTS, Choice, Weights, choose_weights, combine
from nomade.ml.evidence import EVIDENCE_KEY
from nomade.ml.inference import Scorer
from nomade.ml.train import (
    SPLITS,
    Prepared,
    Reporter,
    build_data,
    ensemble_risk,
    fit_evidence,
    fit_models,
    save_models,
    score_splits,
)

Say = Callable[[str], None]
"""``say(line)``: one progress line (stderr in the command)."""
ORDER = ("gnn", "lstm", "autoencoder", "ensemble", "ensemble_config", "ensemble_learned", "models_only", "evidence",
         "logistic_regression", "gradient_boosting", *rules.RULES)
"""Rows of the table, in print order."""
CANDIDATES = ("ensemble_config", "ensemble_learned")
"""Rows of the ensemble with each candidate weighting: in the table, not in the ROC plot."""
LABELS = {"models": "models (live scorer)", "gnn": "GNN",
          "lstm": "LSTM", "autoencoder": "autoencoder", "ensemble": "ensemble",
          "ensemble_config": "  with config weights", "ensemble_learned": "  with learned weights",
          "models_only": "  without the evidence", "evidence": "runtime evidence alone",
          "logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting",
          "rule_memory": "rule: memory >= 90% of limit", "rule_idle": "rule: idle, late in the limit",
          "rules": "rules: either"}


def best_threshold(y: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> float:
    """The score threshold (predict "fails" when ``score >= threshold``) with the
    highest weighted F1 on ``(y, score, w)``; 0.5 when there is no positive or no score."""
    y, score = np.asarray(y, np.float64), np.asarray(score, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    ok = np.isfinite(score)
    y, score, w = y[ok], score[ok], w[ok]
    pos = (w * y).sum()
    if pos <= 0:
        return 0.5
    order = np.argsort(-score, kind="mergesort")
    s, yy, ww = score[order], y[order], w[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(ww * yy)[ends]
    predicted = np.cumsum(ww)[ends]
    f1 = 2 * tp / (predicted + pos)
    return float(s[ends[int(np.argmax(f1))]])


def split_digest(p: Prepared, rows: dict[str, np.ndarray]) -> str:
    """SHA-256 over the (job, as-of time) of the example rows of each split, in order:
    equal digests mean the same examples in the same parts."""
    h = hashlib.sha256()
    for s in SPLITS:
        r = np.asarray(rows[s], np.int64)
        h.update(s.encode())
        h.update(np.ascontiguousarray(p.job[r], np.int64).tobytes())
        h.update(np.ascontiguousarray(p.t[r], np.float64).tobytes())
    return h.hexdigest()


UNUSED = len(SPLITS)
"""Split code of examples left out of every split (:func:`leave_out_shape`)."""


def leave_out_shape(p: Prepared, job_shapes: np.ndarray, shape: str) -> dict[str, int]:
    """Leave-one-shape-out, in place: examples of jobs of ``shape`` (``job_shapes``: the
    shape of each job row, None unknown) are taken out of the training and validation
    splits, so the models never learn that shape; the test split keeps every job, so
    the figures per shape show how the unseen shape fares. The held-out jobs stay in the
    graph's reference set, as a site's ended jobs would. The counts of examples and jobs
    taken out; ``NomadeError`` if no job has that shape."""
    of_shape = np.asarray([s == shape for s in job_shapes], bool)
    if not of_shape.any():
        known = sorted({str(s) for s in job_shapes if s is not None})
        raise NomadeError(f"no job has the shape {shape!r}; the shapes are {', '.join(known) or 'unknown'}")
    out = of_shape[p.job] & (p.split < SPLITS.index("test"))
    p.split[out] = UNUSED
    left_test = of_shape[p.job] & (p.split == SPLITS.index("test"))
    p.summary["left_out_shape"] = {"shape": shape, "examples": int(out.sum()),
                                   "jobs": int(len(np.unique(p.job[out]))),
                                   "test_jobs": int(len(np.unique(p.job[left_test])))}
    return p.summary["left_out_shape"]


def _judge(p: Prepared, rows: dict[str, np.ndarray], val: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Threshold from validation scores ``val``, metrics on validation and test."""
    va, te = rows["validation"], rows["test"]
    threshold = best_threshold(p.y[va], val, p.w[va])
    out: dict[str, Any] = {"threshold": threshold, "split_sha256": split_digest(p, rows)}
    for name, r, score in (("validation", va, val), ("test", te, test)):
        ok = np.isfinite(score)
        m = metrics.summary(p.y[r][ok], score[ok], threshold, p.w[r][ok]) if ok.any() else {"n": 0}
        m["coverage"] = float(ok.mean()) if len(ok) else 0.0
        out[name] = m
    return out


def _baselines(p: Prepared, Xn: np.ndarray, rows: dict[str, np.ndarray], seed: int, say: Say
               ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], dict[str, Any]]:
    """Each baseline fitted on the training rows of the same normalised features:
    its report entry, its test scores, and the fitted baseline."""
    Z = inputs(Xn, p.mask)
    tr = rows["train"]
    out, test, fitted = {}, {}, {}
    for name, cls in BASELINES.items():
        say(f"fitting {LABELS[name]} on {len(tr)} training examples")
        t0 = time.monotonic()
        try:
            model = cls(seed).fit(Z[tr], p.y[tr], p.w[tr])
        except ValueError as e:
            raise NomadeError(f"cannot fit {LABELS[name]}: {e}") from e
        except ImportError as e:
            raise NomadeError(f"the baselines need scikit-learn (pip install 'nomade[eval]'): {e}") from e
        fitted[name] = model
        test[name] = model.predict_proba(Z[rows["test"]])
        out[name] = _judge(p, rows, model.predict_proba(Z[rows["validation"]]), test[name])
        out[name]["fit_s"] = time.monotonic() - t0
    return out, test, fitted


@dataclass
class ReplaySource:
    """The job tables a ``Prepared`` dataset was built from, and how to replay its test
    jobs: ``step_s`` between ticks, at most ``max_ticks`` a job (``replay``)."""

    jobs: features.JobTable
    samples: features.SampleTable
    step_s: float
    max_ticks: int = replay.DEFAULT_MAX_TICKS
    shapes: np.ndarray | None = None
    """Per job of ``jobs``, its shape (None unknown): the replay's figures per shape too."""
    variants: np.ndarray | None = None
    """Per job of ``jobs``, its behaviour (a corpus's ``variant``; None unknown): the
    behaviour-visible failures are judged on their own (``judging``)."""


def compare(p: Prepared, cfg: Config, models_dir: str | None = None, weights_mode: str = "auto",
            reporter: Reporter | None = None, say: Say | None = None,
            source: ReplaySource | None = None) -> dict[str, Any]:
    """Train the models, the ensemble and the baselines on ``p``'s split and judge them
    all on its test split (see the module docstring). ``models_dir``: also write the
    trained models there (as ``nomade train`` would). ``source``: the tables ``p`` was
    prepared from; then the test jobs are also replayed through the live scorer
    (report key ``replay``). ``weights_mode``: see ``ensemble.choose_weights``; the
    report judges the ensemble with the chosen weights (``ensemble``) and with each
    candidate (``ensemble_config``, ``ensemble_learned`` where learned).
    Returns a JSON-safe report."""
    say = say or (lambda line: None)
    rows = {s: p.rows(s) for s in SPLITS}
    if len(rows["train"]) == 0 or len(rows["validation"]) == 0 or len(rows["test"]) == 0:
        raise NomadeError(f"every split needs examples, got {', '.join(f'{s} {len(r)}' for s, r in rows.items())}")
    if len(np.unique(p.y[rows["train"]])) < 2:
        raise NomadeError("the training split holds only one class (all failed or all completed)")
    t0 = time.monotonic()
    with_samples = bool((p.lengths[rows["train"]] > 0).any())
    kinds = [k for k in PARTS if with_samples or k != "lstm"]
    tr = rows["train"]
    norm = features.Normalizer().fit(p.X[tr], p.mask[tr], p.w[tr])
    say(f"building the similarity graph over {len(p.ref_y)} jobs")
    d = build_data(p, norm, cfg.ml.similarity_threshold, cfg.ml.max_neighbors)
    say(f"training the {', '.join(LABELS[k] for k in kinds)} on {len(tr)} training examples")
    fitted, _ = fit_models(kinds, cfg, d, reporter)   # as `nomade train` does (NomadeError if one cannot)
    scores, train_report = score_splits(fitted, d)
    choice = _weights(cfg, scores["validation"], p, rows["validation"], weights_mode)
    weights, learn = choice.weights, choice.source == "learned"
    report: dict[str, Any] = {"data": p.summary, "models": {}, "weights": weights.as_dict(),
                              "weights_source": "learned on validation" if learn else "config",
                              "weights_reason": choice.reason, "weights_check": choice.detail,
                              "ensemble_parts": list(fitted), "split_sha256": split_digest(p, rows),
                              "absent": {} if with_samples else {
                                  "lstm": "no per-job samples in the data (an SWF trace has none)"}}
    ev = fit_evidence(p)
    report[EVIDENCE_KEY] = ev.to_dict()
    test = {kind: scores["test"][:, PARTS.index(kind)] for kind in fitted}
    for kind in fitted:
        report["models"][kind] = _judge(p, rows, scores["validation"][:, PARTS.index(kind)], test[kind])
    candidates = {"ensemble": weights, "ensemble_config": choice.config, "ensemble_learned": choice.learned}
    for name, cand in candidates.items():
        if cand is not None:
            val = ensemble_risk(scores["validation"], cand, ev, p, rows["validation"])
            test[name] = ensemble_risk(scores["test"], cand, ev, p, rows["test"])
            report["models"][name] = _judge(p, rows, val, test[name])
            report["models"][name]["weights"] = cand.as_dict()
    test["models_only"] = combine(scores["test"], weights)
    report["models"]["models_only"] = _judge(p, rows, combine(scores["validation"], weights), test["models_only"])
    test["evidence"] = np.nan_to_num(ev.risk(p.X[rows["test"]], p.mask[rows["test"]]))
    report["models"]["evidence"] = _judge(
        p, rows, np.nan_to_num(ev.risk(p.X[rows["validation"]], p.mask[rows["validation"]])), test["evidence"])
    baselines, baseline_test, baseline_fits = _baselines(p, d.Xn, rows, cfg.ml.seed, say)
    report["models"].update(baselines)
    rule_test = {name: rules.fire(name, p.X[rows["test"]], p.mask[rows["test"]]) for name in rules.RULES}
    for name in rules.RULES:
        report["models"][name] = _judge(p, rows, rules.fire(name, p.X[rows["validation"]], p.mask[rows["validation"]]),
                                        rule_test[name])
    baseline_test.update(rule_test)
    te = rows["test"]
    report["roc"] = {name: dict(zip(("fpr", "tpr"), metrics.roc_curve(p.y[te], sc, p.w[te]), strict=True))
                     for name, sc in {**test, **baseline_test}.items() if name not in CANDIDATES}
    if models_dir is not None or source is not None:
        saved = (fitted, norm, train_report, weights, learn, ev, baseline_fits)
        report.update(_save_and_replay(p, cfg, saved, models_dir, source, say))
    report["took_s"] = time.monotonic() - t0
    return persist.clean_json(report)


def _save_and_replay(p: Prepared, cfg: Config, saved: tuple[Any, ...], models_dir: str | None,
                     source: ReplaySource | None, say: Say) -> dict[str, Any]:
    """Write the models (to ``models_dir``, else a temporary directory) and, with a
    ``source``, load them as the agent does and replay the jobs through them, the
    baselines and the rules (:func:`_replay`)."""
    fitted, norm, train_report, weights, learn, ev, baseline_fits = saved
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nomade-evaluate-") as tmp:
        target = tmp if models_dir is None else models_dir
        say(f"writing the trained models to {target}")
        save_models(target, fitted, norm, train_report, weights if learn else None, cfg, p, forget_weights=True,
                    extra={EVIDENCE_KEY: ev.to_dict()})
        if models_dir is not None:
            out["models_dir"] = str(models_dir)
        if source is not None:
            scorers: dict[str, replay.ScorerLike] = {"models": Scorer.load(target, weights)}
            scorers.update({name: BaselineScorer(name, model, norm) for name, model in baseline_fits.items()})
            scorers.update({name: rules.RuleScorer(name) for name in rules.RULES})
            out.update(_replay(p, cfg, scorers, source, say))
    return out


def _replay(p: Prepared, cfg: Config, scorers: dict[str, Any], source: ReplaySource, say: Say) -> dict[str, Any]:
    """The validation and test jobs of ``p`` (and every job of a left-out shape) replayed
    tick by tick through every scorer at once (``replay.replay_ticks``; the rules and
    baselines on the models' ``grid``): the test jobs' replay figures of the models
    (``replay``) and rules (``replay_rules``), and the judgements of ``judging``:
    ``behaviour`` (with ``source.variants``) and ``left_out`` (with a left-out shape)."""
    grid = scorers["models"].grid
    jobs = source.jobs
    if len(jobs) <= int(p.job.max()) or not np.array_equal(jobs.start_ts[p.job], p.start_ts):
        raise NomadeError("cannot replay: the job tables are not the ones the dataset was prepared from")
    val_jobs, test_jobs = (np.unique(p.job[p.rows(s)]) for s in ("validation", "test"))
    left = (p.summary.get("left_out_shape") or {}).get("shape") if source.shapes is not None else None
    shape_jobs = np.flatnonzero(np.asarray(source.shapes, dtype=object) == left) if left else np.zeros(0, np.int64)
    rows = np.union1d(np.union1d(val_jobs, test_jobs), shape_jobs)
    say(f"replaying {len(rows)} jobs ({len(test_jobs)} test, {len(val_jobs)} validation"
        + (f", {len(shape_jobs)} of the left-out shape" if left else "")
        + f") through {', '.join(scorers)} (a tick every {source.step_s:g} s, at most {source.max_ticks} a job)")
    try:
        ticks = replay.replay_ticks(jobs, source.samples, rows, scorers, step_s=source.step_s, interval_s=grid[0],
                                    sequence_length=grid[1], max_ticks=source.max_ticks)
    except ValueError as e:
        raise NomadeError(f"cannot replay the jobs: {e}") from e
    alerts = cfg.ml.alerts
    in_test = np.isin(ticks.rows, test_jobs)
    test = ticks.subset(in_test, requested=len(test_jobs))
    out: dict[str, Any] = {
        "replay": replay.summarise(jobs, test, "models", threshold=alerts.high_risk_threshold, groups=source.shapes,
                                   confirm=alerts.confirm_predictions),
        "replay_rules": {name: replay.summarise(jobs, test, name, threshold=alerts.high_risk_threshold,
                                                confirm=alerts.confirm_predictions) for name in rules.RULES}}
    bounds = judging.thresholds(jobs, ticks, list(scorers), np.isin(ticks.rows, val_jobs),
                                alerts.confirm_predictions)
    args = (bounds, alerts.confirm_predictions, alerts.high_risk_threshold)
    out["behaviour"] = ({"skipped": "no job behaviours: use --corpus, or --shapes"} if source.variants is None
                        else judging.behaviour(jobs, ticks, source.variants, in_test, *args))
    if left:
        out["left_out"] = judging.left_out(jobs, ticks, np.asarray(source.shapes, dtype=object), left, in_test, *args)
    return out


Progress = Callable[[int, int, str, float], None]
"""``progress(done, total, shape, elapsed_s)``: after each shape of :func:`leave_out_each`."""


def leave_out_each(p: Prepared, cfg: Config, source: ReplaySource, shapes: list[str], weights_mode: str = "auto",
                   progress: Progress | None = None) -> dict[str, Any]:
    """Leave-one-shape-out for each of ``shapes`` in turn (one training each, on a copy
    of ``p``'s split: :func:`leave_out_shape`, then :func:`compare` with its replay):
    per shape, the left-out shape's judgement (``judging.left_out``), what was left out,
    the test AUC of every model and how long it took. ``source.shapes`` is required."""
    if source.shapes is None:
        raise NomadeError("leave-one-shape-out needs the jobs' shapes")
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    for k, shape in enumerate(shapes):
        q = dataclasses.replace(p, split=p.split.copy(), summary=copy.deepcopy(p.summary))
        leave_out_shape(q, source.shapes, shape)
        r = compare(q, cfg, weights_mode=weights_mode, source=source)
        out[shape] = {"left_out": r["left_out"], "data": r["data"]["left_out_shape"], "took_s": r["took_s"],
                      "auc_roc": {name: m["test"]["auc_roc"] for name, m in r["models"].items()}}
        if progress is not None:
            progress(k + 1, len(shapes), shape, time.monotonic() - t0)
    return persist.clean_json({"shapes": out, "took_s": time.monotonic() - t0, "data": p.summary})


MAX_WINDOWS = 5
"""Most test windows of :func:`rolling_windows`: the earliest then trains on 40 % of the jobs."""


def time_window(p: Prepared, back: int) -> Prepared:
    """A copy of ``p`` with its time split moved ``back`` test parts earlier (rolling
    origin): of the jobs ranked by start, the test part is those in
    ``[0.9 - 0.1·back, 1.0 - 0.1·back)``, validation the tenth before, training every
    earlier job; later jobs are left out (``UNUSED``: the future of the window), and so
    are the examples that ``prepare`` computed from thinned samples of the jobs now tested
    (test examples are the samples as recorded). ``back = 0`` is ``p``'s own split."""
    if not 0 <= back < MAX_WINDOWS:
        raise NomadeError(f"a test window goes back 0 to {MAX_WINDOWS - 1} test parts, got {back}")
    train, val, later = time_split(p.ref_start_ts, (0.8 - 0.1 * back, 0.1, 0.1 + 0.1 * back))
    test = later[:len(later) - int(round(0.1 * back * len(p.ref_start_ts)))]   # the window's future: unused
    code = np.full(len(p.ref_job), UNUSED, np.int8)
    for part, jobs in enumerate((train, val, test)):
        code[jobs] = part
    split = code[np.searchsorted(p.ref_job, p.job)]
    split[(split == SPLITS.index("test")) & _thinned_copies(p)] = UNUSED
    tested = p.ref_start_ts[test]
    summary = copy.deepcopy(p.summary)
    summary["window"] = {"back": back, "train_jobs": len(train), "validation_jobs": len(val), "test_jobs": len(test),
                         "test_start_ts": [float(tested.min()), float(tested.max())] if len(tested) else None}
    return dataclasses.replace(p, split=split, summary=summary)


def _thinned_copies(p: Prepared) -> np.ndarray:
    """bool[examples]: rows that repeat an earlier row's (job, as-of time): the copies
    ``prepare`` adds from thinned samples, after the examples as recorded."""
    idx = np.lexsort((np.arange(len(p.job)), p.t, p.job))
    same = (p.job[idx][1:] == p.job[idx][:-1]) & (p.t[idx][1:] == p.t[idx][:-1])
    out = np.zeros(len(p.job), bool)
    out[idx[1:][same]] = True
    return out


def rolling_windows(p: Prepared, cfg: Config, source: ReplaySource, windows: int, weights_mode: str = "auto",
                    progress: Progress | None = None) -> dict[str, Any]:
    """The test part moved back 0, 1, ... ``windows - 1`` test parts (:func:`time_window`),
    one training and replay each (:func:`compare`): per window its test AUC-ROC of every
    model, the replay's figures at the alert threshold and, with job behaviours, the
    behaviour-visible judgement; then how much each headline figure moved between windows
    (``spread``: min, mean, max). One window's figures are one sample of a site's weeks."""
    if not 1 <= windows <= MAX_WINDOWS:
        raise NomadeError(f"--windows must be 1 to {MAX_WINDOWS}, got {windows}")
    t0 = time.monotonic()
    out: dict[str, Any] = {}
    for k in range(windows):
        q = time_window(p, k)
        r = compare(q, cfg, weights_mode=weights_mode, source=source)
        rep = r["replay"]
        out[str(k)] = {"window": q.summary["window"], "took_s": r["took_s"],
                       "auc_roc": {name: m["test"].get("auc_roc") for name, m in r["models"].items()},
                       "replay": {"threshold": rep["threshold"], "coverage": rep["coverage"],
                                  "false_alarms": rep["false_alarms"], "lead_share_median": rep["lead_share_median"]},
                       "behaviour": r["behaviour"]}
        if progress is not None:
            progress(k + 1, windows, f"window {k}", time.monotonic() - t0)
    return persist.clean_json({"windows": out, "spread": judging.spread(out), "took_s": time.monotonic() - t0,
                               "data": p.summary})


def _weights(cfg: Config, val_parts: np.ndarray, p: Prepared, va: np.ndarray, mode: str) -> Choice:
    e = cfg.ml.ensemble
    config = Weights(e.gnn_weight, e.lstm_weight, e.autoencoder_weight)
    try:
        return choose_weights(val_parts, p.y[va], p.w[va], config, mode, seed=cfg.ml.seed)
    except ValueError as err:
        raise NomadeError(f"cannot learn ensemble weights: {err}") from err


# ------------------------------------------------------------------ table

def format_table(report: dict[str, Any]) -> str:
    """One row per model on the test split, thresholds chosen on validation; then the
    replay's operational figures (or why there are none), when the report has them."""
    text = _auc_table(report)
    out = (report.get("data") or {}).get("left_out_shape")
    if out:
        text = (f"leave-one-shape-out: the {out['jobs']} jobs of shape {out['shape']} were left out of training "
                f"and validation; {out['test_jobs']} of them are among the test jobs\n\n") + text
    rep = report.get("replay")
    if rep is None:
        return text
    if "skipped" in rep:
        return text + f"\n\nreplay: skipped ({rep['skipped']})"
    text += "\n\n" + replay.format_table(rep) + _rules_table(report.get("replay_rules", {}), rep)
    if "behaviour" in report:
        text += "\n\n" + judging.format_behaviour(report["behaviour"], LABELS)
    if "left_out" in report:
        text += "\n\n" + judging.format_left_out(report["left_out"], LABELS)
    return text


def _rules_table(by_rule: dict[str, Any], models: dict[str, Any]) -> str:
    """The runtime rules replayed as the models are, beside the models' own row."""
    if not by_rule:
        return ""
    rows = [replay._row(f"models, risk >= {models['threshold']:.2f}", models)]
    rows += [replay._row(LABELS[name], r) for name, r in by_rule.items()]
    head = ("alert by", "coverage", "false alarms", "precision", "lead median", "p10", "p90")
    return "\n\nthe same test jobs replayed through the runtime rules (nomade.ml.rules):\n" + "\n".join(
        replay._aligned(head, rows))


def _auc_table(report: dict[str, Any]) -> str:
    head = ("model", "AUC-ROC", "AUC-PR", "precision", "recall", "F1", "threshold", "test n")
    rows = []
    for name in ORDER:
        if name in report["models"]:
            m = report["models"][name]
            t = m["test"]
            rows.append((LABELS[name], *(_num(t.get(c)) for c in ("auc_roc", "auc_pr", "precision", "recall", "f1")),
                         _num(m["threshold"]), str(t.get("n", 0))))
        elif name in report["absent"]:
            rows.append((LABELS[name], "absent: " + report["absent"][name]))
    widths = [max(len(r[i]) for r in (head, *rows) if len(r) == len(head)) for i in range(len(head))]
    # an absent model's row has two cells
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
    data, w = report["data"], report["weights"]
    sp = data["splits"]
    parts = " + ".join(f"{w[k]:.2f} {k}" for k in report["ensemble_parts"])
    return "\n".join([
        (f"{data['source']}: {data['jobs']} jobs, {data['examples']} as-of examples; split by start time "
         f"train {sp['train']['jobs']} / validation {sp['validation']['jobs']} / test {sp['test']['jobs']} jobs "
         f"(test failure rate {_pct(sp['test']['failure_rate'])}); "
         f"{data.get('never_ran', 0)} jobs that never ran left out"),
        line(head), line(tuple("-" * x for x in widths)), *map(line, rows), "",
        (f"ensemble = {parts} (weights {report['weights_source']}: {report['weights_reason']}; "
         "renormalised over the parts present)"),
        ("threshold: the one with the best F1 on validation, per model; every model trained on the same "
         f"split (sha256 {report['split_sha256'][:16]}); took {report['took_s']:.0f} s")])


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
