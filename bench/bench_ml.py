"""Training 100,000 jobs (features, graph, three models) and scoring 10,000 running jobs.

The history is synthetic (``nomade.ml.train.synthetic_tables``: users with their own
failure rates, OOM/timeout/crash/cancel behaviour, up to 12 samples per job) because
no 100,000-job history with per-job samples ships with the repository; the arrays
have the shapes and sizes of a real one. Training uses the config defaults
(epochs 100 as the maximum, patience 10), as ``nomade train`` does: each model on one
thread, the LSTM in its own process beside the other two (``train.fit_models``); the
features and the graph search use the 2 threads set here. Scoring is one ``Scorer.score`` call on
10,000 jobs taken from the test split, after one warm-up call: once as if every job
were new (graph neighbour search included), once as an agent's steady tick where each
job's neighbours were kept from an earlier tick (they depend only on start-time
features), and once without explanations.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from bench.result import Result
from nomade import config
from nomade.ml import train
from nomade.ml.inference import Scorer


def run(quick: bool) -> list[Result]:
    """Figures against the DESIGN budgets (quick: 5,000 jobs, scoring 2,000)."""
    torch.set_num_threads(2)
    n_jobs, n_score = (5000, 2000) if quick else (100_000, 10_000)
    cfg = config.load(None)
    with tempfile.TemporaryDirectory() as models_dir:
        t0 = time.monotonic()
        jobs, samples = train.synthetic_tables(n_jobs, seed=0)
        prepared = train.prepare(jobs, samples, cfg.collector.interval_s, cfg.ml.sequence_length,
                                 source="synthetic")
        features_s = time.monotonic() - t0
        print(f"features of {n_jobs} jobs: {features_s:.0f} s", file=sys.stderr, flush=True)
        report = train.fit_and_save(prepared, cfg, models_dir, reporter=train.stderr_reporter())
        print(file=sys.stderr)
        total = features_s + report["timings"]["total_s"]
        t = report["timings"]
        auc = {k: m["test"]["auc_roc"] for k, m in report["models"].items()}
        note = (f"{n_jobs} synthetic jobs, {len(prepared.y)} examples: features {features_s:.0f} s, "
                f"graph {t['graph_s']:.0f} s, models {t['models_s']:.0f} s (gnn {t['gnn_s']:.0f} s, "
                f"autoencoder {t['autoencoder_s']:.0f} s, lstm {t['lstm_s']:.0f} s beside them); test AUC "
                + ", ".join(f"{k} {v:.3f}" for k, v in auc.items())
                + f", ensemble {report['ensemble']['test']['auc_roc']:.3f}")
        rows = [Result(f"ml train {n_jobs} jobs (features+graph+3 models)", total, "s", "<= 600 s on 2 cores",
                       total <= 600 if not quick else None, note),
                Result(f"ml graph build {n_jobs} jobs", t["graph_s"], "s", "<= 60 s",
                       t["graph_s"] <= 60 if not quick else None)]
        rows += _scoring(Scorer.load(models_dir), prepared, n_score, quick)
    return rows


def _scoring(scorer: Scorer, p: train.Prepared, n: int, quick: bool) -> list[Result]:
    rows = p.rows("test")
    rows = rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)]  # spread over the split
    X, mask, S, lengths, start = p.X[rows], p.mask[rows], p.S[rows], p.lengths[rows], p.start_ts[rows]
    kept = scorer.neighbours(X, mask, start)
    cases = [("new jobs (graph search), with explanations", True, None),
             ("steady tick (neighbours kept per job), with explanations", True, kept),
             ("steady tick, risk only", False, kept)]
    out = []
    for label, explain, nbrs in cases:
        scorer.score(X, mask, S, lengths, start, explain=explain, neighbours=nbrs)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            scorer.score(X, mask, S, lengths, start, explain=explain, neighbours=nbrs)
            times.append(time.perf_counter() - t0)
        value = statistics.median(times)
        out.append(Result(f"ml scoring {len(rows)} jobs, 3 models: {label}", value, "s", "<= 1 s",
                          value <= 1.0 if not quick else None,
                          f"median of 5 (min {min(times):.3f} s); reference set "
                          f"{len(scorer.models['gnn'].reference_.x)} jobs"))
    return out
