"""Wire encode and decode+validate speed, in job samples per second on one core.

Batches are what a collector sends: ``job.sample`` items of realistic size (byte counters
in the gigabytes, CPU seconds as floats, one pressure unknown), one ``node.sample``, sizes
50 (one interval of a node with 50 running jobs) and 500 (an outbox replayed after an
agent restart). Decode+validate is the wire's share of the agent's ingest budget (decode,
validate, store and ack >= 100,000 job samples/s on one core), so DESIGN sets it no budget
of its own; at 100,000/s the whole path has 10 µs a sample, and this share should stay
well under half of it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from bench.result import Result
from nomade import wire

INGEST_BUDGET = 100_000.0


def _batch(n_samples: int, seq: int, rng: random.Random) -> wire.Message:
    """A collector batch of ``n_samples`` job samples (50 jobs, several intervals) + 1 node sample."""
    node, ts = "cn0042", 1_790_000_000.0 + 30 * seq
    items = []
    for i in range(n_samples):
        t = ts + 30 * (i // 50)
        body: dict[str, Any] = {
            "job_id": str(4_000_000 + i % 50), "node": node, "ts": t, "alloc_cpus": 16,
            "cpu_user_s": rng.uniform(0, 1e6), "cpu_system_s": rng.uniform(0, 1e4),
            "mem_bytes": rng.randrange(2**34), "mem_peak_bytes": rng.randrange(2**34, 2**35),
            "mem_limit_bytes": 2**36, "mem_limit_hits": rng.randrange(3), "oom_kills": 0,
            "page_faults": rng.randrange(10**9), "major_faults": rng.randrange(10**4),
            "swap_bytes": 0, "read_bytes": rng.randrange(2**42), "write_bytes": rng.randrange(2**40),
            "nfs_write_bytes": rng.randrange(2**38), "nprocs": rng.randrange(1, 64),
            "nthreads": rng.randrange(1, 512), "io_pressure": rng.uniform(0, 20),
            "mem_pressure": None}
        items.append(wire.make("job.sample", node, i, body, ts=t))
    items.append(wire.make("node.sample", node, n_samples, {
        "node": node, "ts": ts, "cpu_pct": 73.5, "iowait_pct": 1.5, "mem_used_bytes": 2**37,
        "mem_total_bytes": 2**38, "load1": 15.2, "disk_read_Bps": 1.2e6,
        "disk_write_Bps": 3.4e7}, ts=ts))
    return wire.make_batch(node, seq, items, ts=ts)


def _best_seconds(fn: Callable[[], Any], repeat: int, number: int) -> float:
    """Best time of one call of ``fn`` over ``repeat`` rounds of ``number`` calls (CPU time:
    the machine is shared, and one core is what the budget speaks of)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - t0) / number)
    return best


def run(quick: bool) -> list[Result]:
    """Encode and decode+validate rates for batches of 50 and 500 job samples."""
    rng = random.Random(0)
    repeat, samples_per_round = (3, 5_000) if quick else (7, 50_000)
    rows = []
    for size in (50, 500):
        batch = _batch(size, 1, rng)
        frame = wire.encode(batch)
        if wire.decode(frame) != batch:
            raise RuntimeError("bench_wire: the batch does not round-trip")
        number = max(1, samples_per_round // size)
        dec = _best_seconds(lambda frame=frame: wire.decode(frame), repeat, number)
        with_rows = _best_seconds(lambda frame=frame: wire.decode_rows(frame), repeat, number)
        only = _best_seconds(lambda frame=frame: wire.decode_rows(frame, sample_items=False), repeat, number)
        enc = _best_seconds(lambda batch=batch: wire.encode(batch), repeat, number)
        per_sample = len(frame) / size
        rows += [
            Result(f"wire decode+validate, batch of {size}", size / dec, "samples/s",
                   note=f"{dec / size * 1e6:.2f} µs/sample of the {1e6 / INGEST_BUDGET:.0f} µs "
                        f"that ingest (decode+validate+store+ack) has at 100,000/s; "
                        f"{per_sample:.0f} B/sample on the wire"),
            Result(f"wire decode_rows (ingest), batch of {size}", size / with_rows,
                   "samples/s", note=f"{with_rows / size * 1e6:.2f} µs/sample: decode, and the "
                                     "samples as store rows too"),
            Result(f"wire decode_rows, samples only as rows, batch of {size}", size / only,
                   "samples/s",
                   note=f"{only / size * 1e6:.2f} µs/sample: no dict and no Message a sample "
                        "(for a job state that keeps rows)"),
            Result(f"wire encode, batch of {size}", size / enc, "samples/s",
                   note=f"{enc / size * 1e6:.2f} µs/sample (validates again: collector side)"),
        ]
    rows.append(_predictions(repeat, samples_per_round // 10))
    return rows


def _predictions(repeat: int, number: int) -> Result:
    """make + encode of one prediction with three factors, as the agent publishes them."""
    body = {"job_id": "4000001", "user": "alice", "partition": "gpu", "nodes": ["cn0042"],
            "risk": 0.83, "level": "critical",
            "parts": {"gnn": 0.9, "lstm": 0.8, "autoencoder": 0.7},
            "factors": [{"name": f"factor{i}", "value": 3.5e9, "normal": 1e9, "ratio": 3.5,
                         "text": "memory grows 3.5x faster than in your completed jobs"}
                        for i in range(3)],
            "ts": 1_790_000_000.0, "model_version": "1"}
    sec = _best_seconds(lambda: wire.encode(wire.make("prediction", "agent", 1, body),
                                            validate=False), repeat, number)
    return Result("wire make+encode, one prediction", 1 / sec, "predictions/s",
                  note=f"{sec * 1e6:.1f} µs each: {sec * 1e4 * 1e3:.0f} ms of a scoring tick "
                       "that publishes 10,000")
