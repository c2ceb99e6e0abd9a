"""Agent scoring tick for 10,000 running jobs with all three models (budget: <= 1 s).

Models are trained first on synthetic data through ``nomade.ml.train`` (small epochs:
the model size, not its quality, sets the cost). The running jobs come from the same
synthetic generator, fed to a real ``JobState`` as wire messages (20 samples each),
beside 20,000 ended jobs of history. Before each tick every job gets one new sample
(as between two real ticks, 30 s apart; not timed: that is ingest). A tick is what
``Agent.tick`` does: ``scoring.tick_inputs`` + ``scoring.score`` (explanations within
their per-tick cap) + ``Publisher.publish`` (every prediction sent on a real PUB socket
on 127.0.0.1 and stored in a real store), measured with 1 and with 2 torch threads (the
scorer runs every op on one intra-op thread and its LSTM batches on that many worker
threads, ``nomade.ml.inference``). GNN neighbours are kept from tick to tick as the agent
keeps them (``scoring.KeptNeighbours``): the first tick, untimed, searches them all.
As the agent does, the heap is frozen (``gc.freeze``) once the state is built and after
each tick, untimed: full GC passes do not walk the job state inside the tick.
Wall time depends on what else runs on the machine: the note gives the load average
and the tick's CPU seconds.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.result import Result
from nomade import config, features, wire
from nomade.agent import scoring
from nomade.agent.jobstate import JobState
from nomade.store import JOB_SAMPLE_FIELDS

BUDGET_S = 1.0
INTERVAL_S = 30.0
_FLOAT_FIELDS = ("cpu_user_s", "cpu_system_s", "io_pressure", "mem_pressure")


def _start(jobs: features.JobTable, i: int, job_id: str, now: float) -> wire.Message:
    return wire.make("job.start", "ctld", 0, {
        "job_id": job_id, "user": f"u{jobs.user[i]}", "partition": "cpu",
        "nodes": [f"cn{i % 500:04d}"], "req_cpus": int(jobs.req_cpus[i]),
        "req_mem_bytes": int(jobs.req_mem_bytes[i]), "req_gpus": int(jobs.req_gpus[i]),
        "time_limit_s": float(jobs.time_limit_s[i]), "start_ts": float(jobs.start_ts[i])}, now)


def _state(n_jobs: int, per_job: int, n_ended: int) -> tuple[JobState, float]:
    from nomade.ml import train

    jobs, samples = train.synthetic_tables(n_jobs, seed=11, samples_per_job=per_job, span_days=0.02)
    now = float(np.nanmax(jobs.end_ts))
    msgs = [_start(jobs, i, str(jobs.job_id[i]), now) for i in range(n_jobs)]
    cols = [c for c in features.SAMPLE_COLUMNS if c != "iowait_pct"]
    for k in range(len(samples)):
        i = int(samples.job_index[k])
        body = {c: (None if not np.isfinite(v := samples.cols[c][k]) else
                    (float(v) if c in _FLOAT_FIELDS else int(v))) for c in cols}
        body.update(job_id=str(jobs.job_id[i]), node=f"cn{i % 500:04d}", ts=float(samples.ts[k]))
        msgs.append(wire.make("job.sample", body["node"], 0, body, body["ts"]))
    ended, _ = train.synthetic_tables(n_ended, seed=12, span_days=30.0, t0=now - 31 * 86400)
    for i in range(n_ended):
        job_id = str(10**7 + i)
        msgs.append(_start(ended, i, job_id, now))
        msgs.append(wire.make("job.end", "ctld", 0, {
            "job_id": job_id, "end_ts": float(ended.end_ts[i]), "exit_code": 0,
            "state": str(ended.state[i])}, now))
    state = JobState(horizon_s=1e9, history_s=1e9)
    state.apply(msgs)
    return state, now


def _next_samples(state: JobState, ts: float) -> None:
    """One more sample for every running job, ``INTERVAL_S`` after the last tick."""
    msgs = []
    for run in state.running.values():
        last = dict(zip(JOB_SAMPLE_FIELDS, run.samples[-1], strict=True))
        cpus = last.get("alloc_cpus") or 1
        last.update(ts=ts, cpu_user_s=(last.get("cpu_user_s") or 0.0) + 0.7 * cpus * INTERVAL_S,
                    read_bytes=(last.get("read_bytes") or 0) + 10**6,
                    write_bytes=(last.get("write_bytes") or 0) + 2 * 10**6)
        msgs.append(wire.Message(wire.PROTOCOL_VERSION, "job.sample", last["node"], 0, ts, last))
    state.apply(msgs)


def _ticks(state: JobState, now: float, tick: Callable[[float], Any], n: int) -> list[tuple[float, float]]:
    """(wall s, CPU s) of ``n`` ticks, each after one new sample per job."""
    out = []
    for _ in range(n):
        now += INTERVAL_S
        _next_samples(state, now)
        w0, c0 = time.perf_counter(), time.process_time()
        tick(now)
        out.append((time.perf_counter() - w0, time.process_time() - c0))
        gc.freeze()   # as Agent.tick does after each tick
    return out


def run(quick: bool) -> list[Result]:
    import torch
    import zmq

    from nomade.agent.publisher import Publisher
    from nomade.ml import train
    from nomade.ml.inference import Scorer
    from nomade.store import Store

    n_jobs = 1000 if quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="nomade-bench-tick-", dir="/var/tmp"))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    results: list[Result] = []
    try:
        torch.set_num_threads(1)
        cfg = config.Config()
        cfg = dataclasses.replace(cfg, ml=dataclasses.replace(cfg.ml, training=dataclasses.replace(
            cfg.ml.training, epochs=2, patience=1, batch_size=256)))
        jobs, samples = train.synthetic_tables(2000 if quick else 5000, seed=1)
        train.fit_and_save(train.prepare(jobs, samples, 30.0, cfg.ml.sequence_length), cfg, tmp / "models")
        scorer = Scorer.load(tmp / "models")
        state, now = _state(n_jobs, 20, 2000 if quick else 20_000)
        gc.freeze()   # as Agent does after rebuilding its state
        with Store(tmp / "agent.db") as store:
            publisher = Publisher(pub, store, "bench")
            last: dict[str, Any] = {}
            kept = scoring.KeptNeighbours()

            def tick(t: float) -> None:
                c0 = time.perf_counter()
                inputs = scoring.tick_inputs(state, t, 20, INTERVAL_S)
                c1 = time.perf_counter()
                preds = scoring.score(inputs, scorer, kept=kept)
                c2 = time.perf_counter()
                last.update(n=len(publisher.publish(preds)), explained=len(
                    [p for p in preds if p["factors"]]))
                for name, dt in (("inputs", c1 - c0), ("models", c2 - c1), ("publish", time.perf_counter() - c2)):
                    last.setdefault(name, []).append(dt)

            for threads in (1, 2):
                torch.set_num_threads(threads)
                _ticks(state, now, tick, 1)   # warm-up
                now += INTERVAL_S
                last.clear()
                times = _ticks(state, now, tick, 5)
                now += 5 * INTERVAL_S
                results.append(_result(n_jobs, threads, times, last, quick))
    finally:
        gc.unfreeze()
        pub.close()
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _result(n_jobs: int, threads: int, times: list[tuple[float, float]], last: dict[str, Any],
            quick: bool) -> Result:
    walls = [w for w, _ in times]
    best, median = min(walls), statistics.median(walls)
    load = os.getloadavg()[0]
    return Result(
        f"agent scoring tick, {n_jobs} jobs, {threads} torch thread{'s' * (threads > 1)}",
        median, "s", f"<= {BUDGET_S:g}", median <= BUDGET_S if not quick else None,
        f"features + gnn/lstm/autoencoder + explanations + publish and store {last.get('n')} "
        f"predictions ({last.get('explained')} with factors, at most {scoring.MAX_EXPLAIN} "
        f"explained a tick); median of {len(walls)} ticks (best {best:.3f} s, worst "
        f"{max(walls):.3f} s): features {statistics.median(last['inputs']):.3f} s + models and "
        f"explanations {statistics.median(last['models']):.3f} s (LSTM batches on {threads} worker"
        f"{'s' * (threads > 1)}, each op on one thread) + publish and store "
        f"{statistics.median(last['publish']):.3f} s; CPU {statistics.median(c for _, c in times):.3f} s "
        f"a tick; load average {load:.1f} on {os.cpu_count()} CPUs")
