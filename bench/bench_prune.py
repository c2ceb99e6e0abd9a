"""Retention: time to thin 1 M job samples with ``Store.prune`` (no budget in DESIGN.md).

2,000 jobs that ended 30 days ago, 500 samples each (every field set, interleaved as
collectors send them), thinned to 240 a job, in transactions of 50,000 rows; also the
bytes a job sample takes on disk (``dbstat``), the figure the ``[storage]`` docs use.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.result import Result
from nomade.store import DAY_S, JOB_SAMPLE_FIELDS, RetentionPolicy, Store
from nomade.wire import make

NOW = 1000 * DAY_S


def _fill(store: Store, jobs: int, per_job: int) -> None:
    start = NOW - 31 * DAY_S
    store.write_messages([m for j in range(jobs) for m in (
        make("job.start", "b", 0, {"job_id": str(j), "source": "prolog", "start_ts": start}, start),
        make("job.end", "b", 0, {"job_id": str(j), "source": "epilog", "state": "COMPLETED",
                                 "end_ts": start + per_job * 30.0}, start))])
    for k in range(per_job):
        ts = start + 30.0 * k
        rows = [tuple({"job_id": str(j), "node": "n1", "ts": ts}.get(f, i + k)
                      for i, f in enumerate(JOB_SAMPLE_FIELDS)) for j in range(jobs)]
        store.write_batches([("b", k, [], rows)])


def run(quick: bool) -> list[Result]:
    jobs, per_job = (200, 500) if quick else (2000, 500)
    tmp = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        with Store(tmp / "bench.db") as store:
            _fill(store, jobs, per_job)
            stats = store.storage_stats()
            per_row = stats["bytes"]["job_samples"] / stats["counts"]["job_samples"]
            t0 = time.perf_counter()
            counts = store.prune(NOW, RetentionPolicy(), batch_rows=50_000)
            dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp)
    n = jobs * per_job
    return [Result("prune: thin job samples", dt * 1e6 / n, "µs/sample",
                   note=f"{n} samples, {counts.job_samples_thinned} removed, {dt:.2f} s"),
            Result("store: bytes a job sample", per_row, "B/row")]
