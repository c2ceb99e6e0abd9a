"""Store write and read speed on a real file (budget: ingest >= 100,000 job samples/s).

Writes are batches as collectors send them (one node, ``PER_BATCH`` running jobs, one
``job.sample`` each, plus one ``node.sample``), through ``Store.write_batch`` (one
transaction per batch, as when the agent acks each batch at once) and through
``Store.write_batches`` (the agent drains the socket and commits several batches at once).
The store is only part of the ingest path (decode, validate and ack come on top), so its
own figure has to stay well above the budget. The reads are the ones of a scoring tick
over ``RUNNING`` jobs. The file lives under /var/tmp: a real disk, as in production.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

from bench.result import Result
from nomade.store import JOB_SAMPLE_FIELDS, Store
from nomade.wire import Message, make

PER_BATCH = 50
GROUP = 20
RUNNING = 10_000
BUDGET = 100_000.0
_GET_ROW = itemgetter(*JOB_SAMPLE_FIELDS)


def _batch(node: int, seq: int, ts: float) -> list[Message]:
    """One collector batch: PER_BATCH job samples with every field set, one node sample."""
    sender = f"n{node:04d}"
    msgs = []
    for j in range(PER_BATCH):
        body: dict[str, Any] = {f: i + seq for i, f in enumerate(JOB_SAMPLE_FIELDS)}
        body.update(job_id=str(node * PER_BATCH + j), node=sender, ts=ts, cpu_user_s=ts / 2,
                    io_pressure=1.5, mem_pressure=None, fs_used_pct=float(seq % 100))   # percentages stay in [0, 100]
        msgs.append(make("job.sample", sender, seq, body, ts))
    msgs.append(make("node.sample", sender, seq, {"node": sender, "ts": ts, "cpu_pct": 50.0,
                                                  "mem_used_bytes": 1 << 30}, ts))
    return msgs


def _rate(store: Store, first_seq: int, n_batches: int, group: int,
          rows: bool = False) -> tuple[float, float]:
    """Job samples per second of wall and of CPU time, ``group`` batches per transaction;
    ``rows``: the job samples handed over as rows too, as ingest does (``decode_rows``)."""
    seqs = range(first_seq, first_seq + n_batches)
    batches: list[Any] = [(f"n{b % 200:04d}", b, _batch(b % 200, b, 1000.0 + b)) for b in seqs]
    if rows:
        batches = [(*b, [_GET_ROW(m.body) for m in b[2] if m.kind == "job.sample"])
                   for b in batches]
    t0, c0 = time.perf_counter(), time.process_time()
    fresh = []
    for i in range(0, n_batches, group):
        chunk = batches[i:i + group]
        fresh += [store.write_batch(*chunk[0])] if group == 1 else store.write_batches(chunk)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not all(fresh):
        raise RuntimeError("bench_store wrote a duplicate batch: the rate would be wrong")
    return n_batches * PER_BATCH / wall, n_batches * PER_BATCH / cpu


def _running(store: Store) -> None:
    """RUNNING started jobs with one prediction each, as the scoring tick finds them."""
    starts = [make("job.start", "ctld", 0,
                   {"job_id": _running_id(i), "user": f"u{i % 300}", "req_cpus": 4,
                    "nodes": [f"n{i % 200:04d}"], "start_ts": 1.0 + i,
                    "source": "prolog_slurmctld"}, 1.0) for i in range(RUNNING)]
    store.write_messages(starts)
    store.add_predictions({"job_id": _running_id(i), "ts": 2.0 + i, "risk": 0.3,
                           "level": "moderate", "parts": {"gnn": 0.3}, "factors": []}
                          for i in range(RUNNING))


def _running_id(i: int) -> str:
    """The job id of the i-th running job (apart from the sampled jobs' ids)."""
    return str(1_000_000 + i)


def _ms(fn: Any, repeat: int = 3) -> float:
    """Best wall time of ``fn()`` in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def run(quick: bool) -> list[Result]:
    """Write rates (per batch, grouped) and scoring-tick read times."""
    n_batches = 400 if quick else 4000
    tmp = Path(tempfile.mkdtemp(prefix="nomade-bench-store-", dir="/var/tmp"))
    try:
        with Store(tmp / "nomade.db") as store:
            _rate(store, 0, n_batches // 4, 1)  # warm up: grow the file and the indexes
            single = _rate(store, n_batches, n_batches, 1)
            grouped = _rate(store, 2 * n_batches, n_batches, GROUP)
            with_rows = _rate(store, 3 * n_batches, n_batches, GROUP, rows=True)
            _running(store)
            read_running = _ms(store.running_jobs)
            read_pred = _ms(store.latest_predictions)
            again = [make("job.start", "n0001", 0, {"job_id": _running_id(i), "start_ts": 0.5,
                                                    "nodes": ["n0001"]}, 1.0)
                     for i in range(RUNNING)]
            t0 = time.perf_counter()
            store.write_messages(again)
            merge_ms = (time.perf_counter() - t0) * 1e3
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = f"{n_batches} batches of {PER_BATCH} job samples + 1 node sample; per CPU second: "
    return [
        Result("store write_batch (1 batch/commit)", single[0], "job samples/s",
               f">= {BUDGET:,.0f}/s (whole ingest)", single[0] >= BUDGET,
               note + f"{single[1]:,.0f}/s"),
        Result(f"store write_batches ({GROUP} batches/commit)", grouped[0], "job samples/s",
               f">= {BUDGET:,.0f}/s (whole ingest)", grouped[0] >= BUDGET,
               note + f"{grouped[1]:,.0f}/s"),
        Result(f"store write_batches with rows ({GROUP} batches/commit, the ingest path)",
               with_rows[0], "job samples/s", f">= {BUDGET:,.0f}/s (whole ingest)",
               with_rows[0] >= BUDGET, note + f"{with_rows[1]:,.0f}/s"),
        Result(f"store running_jobs ({RUNNING:,} running)", read_running, "ms",
               "part of a 1 s scoring tick", None),
        Result(f"store latest_predictions ({RUNNING:,} jobs)", read_pred, "ms",
               "part of a 1 s scoring tick", None),
        Result(f"store merge {RUNNING:,} repeated job.start", merge_ms, "ms", "", None),
    ]
