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
from pathlib import Path
from typing import Any

from nomade.config import Config
from nomade.errors import NomadeError

NAME = "predict"
HELP = "score the running jobs now with the trained models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nomade predict``."""
    parser.add_argument("--job", metavar="ID", help="only this job")
    parser.add_argument("--db", metavar="PATH", help="store (default: [storage] db_path)")
    parser.add_argument("--models-dir", metavar="DIR",
                        help="score with the models in DIR (default: the set the agent would use: [ml] "
                             "models_dir, or the starter model until the site's own beat it)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per job)")


def predictions(cfg: Config, db: Path, models_dir: Path, job: str | None = None,
                now: float | None = None, choose: bool = True) -> list[dict[str, Any]]:
    """Score the running jobs of store ``db`` as of ``now`` exactly as the agent's tick
    would after a restart (its job state rebuilt from the store: recent samples, node
    iowait, user history; the same feature functions): one ``prediction``-like dict per
    job (job_id, user, risk, level, parts, factors, ts), riskiest first. ``choose``:
    the set the agent would load (``nomade.ml.starter.choose``), else ``models_dir``'s."""
    import numpy as np

    from nomade.agent import scoring
    from nomade.agent.jobstate import JobState, options_for
    from nomade.ml.ensemble import Weights
    from nomade.ml.inference import Scorer
    from nomade.store import JOB_SAMPLE_FIELDS, Store
    now = time.time() if now is None else now
    from nomade.ml.starter import choose as pick
    from nomade.ml.starter import starter_dir_of
    e = cfg.ml.ensemble
    if choose:
        models_dir = pick(models_dir, starter_dir_of(cfg)).models_dir
    scorer = Scorer.load(models_dir, Weights(e.gnn_weight, e.lstm_weight, e.autoencoder_weight))
    if not db.exists():
        raise NomadeError(f"{db}: no store here; is the agent running with this config?")
    step_s, length = scorer.grid
    with Store(db, readonly=True) as store:
        state = JobState.rebuild(store, now, JOB_SAMPLE_FIELDS,
                                 **options_for(length, cfg.collector.interval_s))
    inputs = scoring.tick_inputs(state, now, length, step_s)
    rows = np.arange(len(inputs.jobs))
    if job is not None:
        rows = np.flatnonzero([r.job_id == job for r in inputs.jobs])
        if not len(rows):
            raise NomadeError(f"job {job} is not running according to the store")
    scores = scorer.score(inputs.X[rows], inputs.mask[rows], inputs.S[rows], inputs.lengths[rows],
                          inputs.start_ts[rows])
    out = [{"job_id": r.job_id, "user": r.request.get("user"), "partition": r.request.get("partition"),
            "nodes": list(r.nodes), "risk": float(scores.risk[i]), "level": str(scores.level[i]),
            "parts": scores.parts_of(i), "factors": scores.factors(i), "ts": now,
            "model_version": scorer.version}
           for i, r in enumerate(inputs.jobs[k] for k in rows)]
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
    preds = predictions(cfg, db, models_dir, args.job, choose=not args.models_dir)
    print(json.dumps(clean_json(preds), indent=2) if args.json else render(preds))
    return 0
