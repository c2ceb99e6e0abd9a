"""``fit_and_save``: fit, score every split, weigh the ensemble, evaluate, write the
model files."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nomade import features
from nomade.config import Config
from nomade.errors import NomadeError
from nomade.ml import persist
from nomade.ml.ensemble import PARTS, Weights, choose_weights, combine
from nomade.ml.evidence import EVIDENCE_KEY, Evidence, raise_risk
from nomade.ml.inference import reference_stats
from nomade.ml.train.fit import _Data, _evaluate, _predict, build_data, fit_models
from nomade.ml.train.prepare import REFERENCE_SIZE, SPLITS, Prepared, Reporter


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


