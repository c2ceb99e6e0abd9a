"""Synthetic job tables: jobs with failure modes, for tests and the quick start."""

from __future__ import annotations

import numpy as np

from nomade import features

STATES = np.array(["COMPLETED", "OUT_OF_MEMORY", "TIMEOUT", "FAILED", "CANCELLED"], dtype=object)


def synthetic_tables(n_jobs: int, seed: int = 0, samples_per_job: int = 12, span_days: float = 30.0,
                     t0: float = 1.7e9) -> tuple[features.JobTable, features.SampleTable]:
    """A cluster history with the structure of a real one, for benchmarks, tests and
    demos (``nomade train --prepare --synthetic N``): users with their own failure
    propensity; OOM jobs whose memory climbs to the limit, timeouts that run to the
    limit with falling CPU use, crashes with heavy NFS writes and I/O pressure,
    cancellations that look normal; up to ``samples_per_job`` samples per job."""
    rng = np.random.default_rng(seed)
    n = int(n_jobs)
    n_users = max(5, n // 40)
    user = rng.integers(n_users, size=n)
    propensity = rng.beta(1.2, 5.0, n_users)[user]
    cpus = 2.0 ** rng.integers(0, 7, n)
    gpus = np.where(rng.random(n) < 0.15, rng.integers(1, 5, n), 0).astype(float)
    mem = cpus * 2.0 ** rng.uniform(30, 33, n)
    limit = rng.choice([1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0], n)
    submit = t0 + np.sort(rng.uniform(0, span_days * 86400, n))
    start = submit + rng.exponential(600, n)
    kind = np.where(rng.random(n) < propensity, rng.choice([1, 2, 3, 4], n, p=[0.3, 0.25, 0.3, 0.15]), 0)
    frac = np.select([kind == 2, kind == 3], [np.ones(n), rng.uniform(0.02, 0.5, n)], rng.uniform(0.1, 0.9, n))
    run = frac * limit
    end = start + run
    jobs = features.JobTable(
        job_id=np.array([str(i + 1) for i in range(n)], dtype=object), user=user.astype(np.int64),
        req_cpus=cpus, req_mem_bytes=mem, req_gpus=gpus, time_limit_s=limit, submit_ts=submit,
        start_ts=start, end_ts=end, state=STATES[kind].copy(),
        label=np.array([features.label_of(s) for s in STATES[kind]]))
    return jobs, _synthetic_samples(rng, jobs, kind, samples_per_job)


def _synthetic_samples(rng: np.random.Generator, jobs: features.JobTable, kind: np.ndarray,
                       per_job: int) -> features.SampleTable:
    n = len(jobs)
    run = jobs.end_ts - jobs.start_ts
    m = np.clip((run // 30).astype(np.int64), 1, per_job)
    j = np.repeat(np.arange(n), m)
    pos = (np.arange(m.sum()) - np.repeat(np.cumsum(m) - m, m) + 1) / (np.repeat(m, m) + 1)
    k, elapsed = kind[j], pos * run[j]
    eff = np.select([kind == 2, kind == 3], [rng.beta(4, 3, n), rng.beta(2, 5, n)], rng.beta(6, 2, n))[j]
    eff = eff * np.where(k == 2, 1 - 0.6 * pos, 1.0)
    m0 = rng.uniform(0.1, 0.6, n)
    m_end = np.where(kind == 1, 1.0, np.clip(m0 + rng.normal(0, 0.05, n), 0.05, 0.95))
    mem_frac = m0[j] + (m_end[j] - m0[j]) * pos
    rate = np.exp(rng.normal(15, 1.5, n))[j]
    share = np.where(kind == 3, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.3, n))[j]
    cpu = jobs.req_cpus[j] * eff * elapsed
    mem = jobs.req_mem_bytes[j]
    cols = {"alloc_cpus": jobs.req_cpus[j], "cpu_user_s": 0.9 * cpu, "cpu_system_s": 0.1 * cpu,
            "mem_bytes": mem * mem_frac, "mem_peak_bytes": mem * np.maximum(m0[j], mem_frac),
            "mem_limit_bytes": mem, "mem_limit_hits": np.where(k == 1, np.floor(np.maximum(pos - 0.7, 0) * 100), 0.0),
            "oom_kills": np.zeros(len(j)), "page_faults": elapsed * 100.0,
            "major_faults": np.where(k == 1, pos * 2000.0, pos * rng.uniform(0, 20, len(j))),
            "swap_bytes": np.zeros(len(j)), "read_bytes": rate * elapsed * 0.5, "write_bytes": rate * elapsed,
            "nfs_write_bytes": share * rate * elapsed, "nprocs": jobs.req_cpus[j], "nthreads": jobs.req_cpus[j],
            "io_pressure": np.where(k == 3, rng.uniform(5, 40, len(j)), rng.uniform(0, 5, len(j))),
            "mem_pressure": np.where(k == 1, pos * 30.0, rng.uniform(0, 1, len(j)))}
    return features.SampleTable(j, jobs.start_ts[j] + elapsed, cols)
