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
model saw the same split.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nomade import features
from nomade.config import Config
from nomade.errors import NomadeError
from nomade.ml import metrics, persist
from nomade.ml.baselines import BASELINES
from nomade.ml.ensemble import PARTS, Weights, combine, learn_weights
from nomade.ml.train import SPLITS, Prepared, Reporter, build_data, estimators, fit_one, save_models, score_splits

Say = Callable[[str], None]
"""``say(line)``: one progress line (stderr in the command)."""
ORDER = ("gnn", "lstm", "autoencoder", "ensemble", "logistic_regression", "gradient_boosting")
"""Rows of the table, in print order."""
LABELS = {"gnn": "GNN", "lstm": "LSTM", "autoencoder": "autoencoder", "ensemble": "ensemble",
          "logistic_regression": "logistic regression", "gradient_boosting": "gradient boosting"}


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
               ) -> dict[str, dict[str, Any]]:
    """Each baseline fitted on the training rows of the same normalised features."""
    Z = np.concatenate([Xn, p.mask.astype(np.float32)], axis=1)
    tr = rows["train"]
    out = {}
    for name, cls in BASELINES.items():
        say(f"fitting {LABELS[name]} on {len(tr)} training examples")
        t0 = time.monotonic()
        try:
            model = cls(seed).fit(Z[tr], p.y[tr], p.w[tr])
        except ValueError as e:
            raise NomadeError(f"cannot fit {LABELS[name]}: {e}") from e
        except ImportError as e:
            raise NomadeError(f"the baselines need scikit-learn (pip install 'nomade[eval]'): {e}") from e
        out[name] = _judge(p, rows, model.predict_proba(Z[rows["validation"]]),
                           model.predict_proba(Z[rows["test"]]))
        out[name]["fit_s"] = time.monotonic() - t0
    return out


def compare(p: Prepared, cfg: Config, models_dir: str | None = None, learn: bool = False,
            reporter: Reporter | None = None, say: Say | None = None) -> dict[str, Any]:
    """Train the models, the ensemble and the baselines on ``p``'s split and judge them
    all on its test split (see the module docstring). ``models_dir``: also write the
    trained models there (as ``nomade train`` would). ``learn``: ensemble weights
    learned on validation, else ``[ml.ensemble]``. Returns a JSON-safe report."""
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
    fitted = {}
    for kind in kinds:
        say(f"training the {LABELS[kind]} on {len(tr)} training examples")
        progress = None if reporter is None else (lambda e, n, s, k=kind: reporter(k, e, n, s))
        try:
            fitted[kind] = fit_one(kind, estimators(cfg)[kind], d, progress, cfg.ml.seed)
        except ValueError as e:
            raise NomadeError(f"cannot train the {kind} model: {e}") from e
    scores, train_report = score_splits(fitted, d)
    weights = _weights(cfg, scores["validation"], p, rows["validation"], learn)
    report: dict[str, Any] = {"data": p.summary, "models": {}, "weights": weights.as_dict(),
                              "weights_source": "learned on validation" if learn else "config",
                              "ensemble_parts": list(fitted), "split_sha256": split_digest(p, rows),
                              "absent": {} if with_samples else {
                                  "lstm": "no per-job samples in the data (an SWF trace has none)"}}
    for kind in fitted:
        col = PARTS.index(kind)
        report["models"][kind] = _judge(p, rows, scores["validation"][:, col], scores["test"][:, col])
    report["models"]["ensemble"] = _judge(p, rows, combine(scores["validation"], weights),
                                          combine(scores["test"], weights))
    report["models"].update(_baselines(p, d.Xn, rows, cfg.ml.seed, say))
    if models_dir is not None:
        say(f"writing the trained models to {models_dir}")
        save_models(models_dir, fitted, norm, train_report, weights if learn else None, cfg, p)
        report["models_dir"] = str(models_dir)
    report["took_s"] = time.monotonic() - t0
    return persist.clean_json(report)


def _weights(cfg: Config, val_parts: np.ndarray, p: Prepared, va: np.ndarray, learn: bool) -> Weights:
    e = cfg.ml.ensemble
    if not learn:
        return Weights(e.gnn_weight, e.lstm_weight, e.autoencoder_weight)
    try:
        return learn_weights(val_parts, p.y[va], p.w[va], seed=cfg.ml.seed)[0]
    except ValueError as err:
        raise NomadeError(f"cannot learn ensemble weights: {err}") from err


# ------------------------------------------------------------------ table

def format_table(report: dict[str, Any]) -> str:
    """One row per model on the test split, thresholds chosen on validation."""
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
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    data, w = report["data"], report["weights"]
    sp = data["splits"]
    parts = " + ".join(f"{w[k]:.2f} {k}" for k in report["ensemble_parts"])
    return "\n".join([
        f"{data['source']}: {data['jobs']} jobs, {data['examples']} as-of examples; split by start time "
        f"train {sp['train']['jobs']} / validation {sp['validation']['jobs']} / test {sp['test']['jobs']} jobs "
        f"(test failure rate {_pct(sp['test']['failure_rate'])})",
        line(head), line(tuple("-" * x for x in widths)), *map(line, rows), "",
        f"ensemble = {parts} (weights {report['weights_source']}, renormalised over the parts present)",
        "threshold: the one with the best F1 on validation, per model; every model trained on the same "
        f"split (sha256 {report['split_sha256'][:16]}); took {report['took_s']:.0f} s"])


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
