"""Agent scoring tick for 10,000 running jobs with all three models (budget: <= 1 s).

Models are trained first on synthetic data through ``nomade.ml.train`` (small epochs:
the model size, not its quality, sets the cost). The running jobs come from the same
synthetic generator, fed to a real ``JobState`` as wire messages (20 samples each), and
the tick is ``scoring.tick_inputs`` + ``scoring.score`` (explanations for moderate and
above), as ``Agent.tick`` runs it; publishing is not included.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.result import Result
from nomade import config, features, wire
from nomade.agent import scoring
from nomade.agent.state import JobState

BUDGET_S = 1.0


def _state(n_jobs: int, per_job: int) -> tuple[JobState, float]:
    from nomade.ml import train

    jobs, samples = train.synthetic_tables(n_jobs, seed=11, samples_per_job=per_job, span_days=0.02)
    now = float(np.nanmax(jobs.end_ts))
    msgs = []
    for i in range(n_jobs):
        msgs.append(wire.make("job.start", "ctld", 0, {
            "job_id": str(jobs.job_id[i]), "user": f"u{jobs.user[i]}", "partition": "cpu",
            "nodes": [f"cn{i % 500:04d}"], "req_cpus": int(jobs.req_cpus[i]),
            "req_mem_bytes": int(jobs.req_mem_bytes[i]), "req_gpus": int(jobs.req_gpus[i]),
            "time_limit_s": float(jobs.time_limit_s[i]), "start_ts": float(jobs.start_ts[i])}, now))
    cols = [c for c in features.SAMPLE_COLUMNS if c != "iowait_pct"]
    for k in range(len(samples)):
        i = int(samples.job_index[k])
        body = {c: (None if not np.isfinite(v := samples.cols[c][k]) else
                    (float(v) if c in ("cpu_user_s", "cpu_system_s", "io_pressure", "mem_pressure")
                     else int(v))) for c in cols}
        body.update(job_id=str(jobs.job_id[i]), node=f"cn{i % 500:04d}", ts=float(samples.ts[k]))
        msgs.append(wire.make("job.sample", body["node"], 0, body, body["ts"]))
    state = JobState(horizon_s=1e9)
    state.apply(msgs)
    return state, now


def run(quick: bool) -> list[Result]:
    import torch

    from nomade.ml import train
    from nomade.ml.inference import Scorer

    torch.set_num_threads(1)
    n_jobs = 1000 if quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="nomade-bench-tick-"))
    try:
        cfg = config.Config()
        cfg = dataclasses.replace(cfg, ml=dataclasses.replace(cfg.ml, training=dataclasses.replace(
            cfg.ml.training, epochs=2, patience=1, batch_size=256)))
        jobs, samples = train.synthetic_tables(2000 if quick else 5000, seed=1)
        train.fit_and_save(train.prepare(jobs, samples, 30.0, cfg.ml.sequence_length), cfg, tmp)
        scorer = Scorer.load(tmp)
        state, now = _state(n_jobs, 20)
        scoring.score(scoring.tick_inputs(state, now, 20, 30.0), scorer)   # warm-up
        times, n_pred, hot = [], 0, 0
        for _ in range(3):
            t0 = time.perf_counter()
            preds = scoring.score(scoring.tick_inputs(state, now, 20, 30.0), scorer)
            times.append(time.perf_counter() - t0)
            n_pred, hot = len(preds), sum(1 for p in preds if p["factors"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = min(times)
    return [Result(f"agent scoring tick, {n_jobs} jobs", best, "s", f"<= {BUDGET_S:g}",
                   best <= BUDGET_S if not quick else None,
                   f"gnn+lstm+autoencoder, 1 torch thread; {n_pred} predictions, {hot} explained "
                   f"(risk >= {scoring.EXPLAIN_MIN_RISK}); best of 3 (median {sorted(times)[1]:.3f} s)")]
