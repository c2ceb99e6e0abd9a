"""``nomade predict [--job ID] [--json]``: score the running jobs in the store now.

Example::

    job      user   risk  level     gnn    lstm   ae     why
    4711     ada    0.83  critical  0.91   0.88   0.52   mem_growth_frac_h 0.41 (normal 0.00), mem_peak_frac ...
    4712     bob    0.12  low       0.10   -      0.20

Features come from the store exactly as the agent computes them (as of now, history
of jobs that ended before); ``-`` marks a model that cannot score the job yet (the
LSTM before its first sample). Uses the models of ``--models-dir``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nomade.config import Config
from nomade.errors import NomadeError

NAME = "predict"
HELP = "score the running jobs now with the trained models"
HISTORY_DAYS = 90
"""Ended jobs read for the users' failure-rate features."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nomade predict``."""
    parser.add_argument("--job", metavar="ID", help="only this job")
    parser.add_argument("--db", metavar="PATH", help="store (default: [storage] db_path)")
    parser.add_argument("--models-dir", metavar="DIR", help="models directory (default: [ml] models_dir)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per job)")


def predictions(cfg: Config, db: Path, models_dir: Path, job: str | None = None,
                now: float | None = None) -> list[dict[str, Any]]:
    """Score the running jobs of store ``db`` as of ``now``: one ``prediction``-like
    dict per job (job_id, user, risk, level, parts, factors, ts), riskiest first."""
    import numpy as np

    from nomade import features
    from nomade.ml.ensemble import Weights
    from nomade.ml.inference import Scorer
    from nomade.store import JOB_SAMPLE_FIELDS, Store
    now = time.time() if now is None else now
    e = cfg.ml.ensemble
    scorer = Scorer.load(models_dir, Weights(e.gnn_weight, e.lstm_weight, e.autoencoder_weight))
    if not db.exists():
        raise NomadeError(f"{db}: no store here; is the agent running with this config?")
    store = Store(db, readonly=True)
    try:
        running = [j for j in store.running_jobs() if job is None or j.job_id == job]
        if job is not None and not running:
            raise NomadeError(f"job {job} is not running according to the store")
        ended = store.ended_jobs(since_ts=now - HISTORY_DAYS * 86400)
        jobs = features.JobTable.from_records(asdict(j) for j in [*running, *ended])
        ids = [j.job_id for j in running]
        samples = features.SampleTable.from_records(jobs, store.job_samples(ids), fields=JOB_SAMPLE_FIELDS)
    finally:
        store.close()
    rows, t = np.arange(len(running)), np.full(len(running), now)
    X, mask = features.asof_features(jobs, samples, t, rows)
    S, lengths = features.sequences(jobs, samples, t, cfg.ml.sequence_length, cfg.collector.interval_s, rows)
    scores = scorer.score(X, mask, S, lengths, jobs.start_ts[rows])
    out = [{"job_id": j.job_id, "user": j.user, "partition": j.partition, "nodes": list(j.nodes),
            "risk": float(scores.risk[i]), "level": str(scores.level[i]), "parts": scores.parts_of(i),
            "factors": scores.factors(i), "ts": now, "model_version": scorer.version}
           for i, j in enumerate(running)]
    return sorted(out, key=lambda p: -p["risk"] if p["risk"] == p["risk"] else 1.0)


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(preds: list[dict[str, Any]]) -> str:
    """A table for people (see the module docstring)."""
    if not preds:
        return "no running jobs in the store"
    lines = [f"{'job':<12} {'user':<10} {'risk':>5}  {'level':<9} {'gnn':>5} {'lstm':>5} {'ae':>5}  why"]
    for p in preds:
        why = ", ".join(f"{f['name']} {f['value']:.2f} (normal {f['normal']:.2f})" for f in p["factors"])
        parts = p["parts"]
        lines.append(f"{p['job_id']:<12} {str(p['user'] or '-'):<10} {_cell(p['risk']):>5}  {p['level']:<9} "
                     f"{_cell(parts['gnn']):>5} {_cell(parts['lstm']):>5} {_cell(parts['autoencoder']):>5}  {why}")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print the predictions; 0."""
    from nomade.ml.persist import clean_json
    paths = cfg.paths()
    db = Path(args.db).expanduser() if args.db else paths.db_path
    models_dir = Path(args.models_dir).expanduser() if args.models_dir else paths.models_dir
    preds = predictions(cfg, db, models_dir, args.job)
    print(json.dumps(clean_json(preds), indent=2) if args.json else render(preds))
    return 0
