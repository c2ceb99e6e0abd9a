"""Agent ingest over loopback (budget: >= 100,000 job samples/s on one core).

A load-generator process plays many collectors: DEALER sockets on 127.0.0.1, each
sending pre-encoded batches like real collectors (50-500 job samples plus a node
sample), keeping a window of unacknowledged batches. The agent side is the real
``Agent.receive`` path (decode + validate + store + ack + state) in this process on a
store under /var/tmp; its wall rate and its own CPU seconds per sample are reported.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from bench.result import Result
from nomade import config, wire
from nomade.store import JOB_SAMPLE_FIELDS

BUDGET = 100_000.0


def _frames(sender: str, n_batches: int, rng: random.Random) -> list[tuple[int, bytes, int]]:
    out = []
    for seq in range(1, n_batches + 1):
        per = rng.randrange(50, 501)
        ts = 1.7e9 + seq * 30.0
        items = []
        for j in range(per):
            body: dict[str, Any] = {f: 1000 + j for f in JOB_SAMPLE_FIELDS}
            body.update(job_id=str(j + 1), node=sender, ts=ts, cpu_user_s=ts / 1e6,
                        io_pressure=1.5, mem_pressure=None)
            items.append(wire.make("job.sample", sender, seq, body, ts))
        items.append(wire.make("node.sample", sender, seq, {"node": sender, "ts": ts, "cpu_pct": 50.0}, ts))
        out.append((seq, wire.encode(wire.make_batch(sender, seq, items)), per))
    return out


def _generator(endpoint: str, senders: int, batches: int, window: int, ready: Any, go: Any) -> None:
    """Child process: ``senders`` DEALERs send their batches, at most ``window`` unacked each."""
    rng = random.Random(1)
    work = {f"cn{i:04d}": _frames(f"cn{i:04d}", batches, rng) for i in range(senders)}
    ctx = zmq.Context()
    socks = {}
    for name in work:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks[name] = s
    ready.set()
    go.wait()
    poller = zmq.Poller()
    for s in socks.values():
        poller.register(s, zmq.POLLIN)
    pending = {n: 0 for n in work}
    nxt = {n: 0 for n in work}
    left = senders * batches
    while left:
        for name, s in socks.items():
            while pending[name] < window and nxt[name] < batches:
                s.send(work[name][nxt[name]][1])
                nxt[name] += 1
                pending[name] += 1
        for s, _ in poller.poll(1000):
            while True:
                try:
                    s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                name = next(n for n, x in socks.items() if x is s)
                pending[name] -= 1
                left -= 1
    for s in socks.values():
        s.close()
    ctx.term()


def _measure(senders: int, batches: int, window: int) -> tuple[float, float, int]:
    from nomade.agent.daemon import Agent

    tmp = Path(tempfile.mkdtemp(prefix="nomade-bench-ingest-", dir="/var/tmp"))
    cfg = config.Config()
    cfg = dataclasses.replace(
        cfg, agent=dataclasses.replace(cfg.agent, ingest_endpoint="tcp://127.0.0.1:*",
                                       publish_endpoint="tcp://127.0.0.1:*", metrics_address="",
                                       interval_s=3600.0),
        ml=dataclasses.replace(cfg.ml, enabled=False),
        storage=dataclasses.replace(cfg.storage, db_path=str(tmp / "agent.db")))
    agent = Agent(cfg, name="bench")
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_generator, args=(agent.ingest_endpoint, senders, batches, window, ready, go))
    proc.start()
    try:
        ready.wait(300)
        total = None
        poller = zmq.Poller()
        poller.register(agent.router, zmq.POLLIN)
        go.set()
        t0, c0 = time.perf_counter(), time.process_time()
        while agent.metrics.batches_total < senders * batches:
            if poller.poll(5000):
                agent.receive()
            elif not proc.is_alive():
                break
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        total = agent.metrics.samples_total
    finally:
        proc.join(60)
        agent.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return total / wall, cpu / max(total, 1), total


def run(quick: bool) -> list[Result]:
    senders, batches = (20, 10) if quick else (100, 20)
    rate, cpu_per_sample, total = _measure(senders, batches, window=4)
    note = (f"{senders} DEALER senders x {batches} batches of 50-500 job samples ({total} samples) "
            "over loopback from a separate process; agent: decode+validate+store+ack+state")
    return [Result("agent ingest", rate, "job samples/s", f">= {BUDGET:,.0f}", rate >= BUDGET, note),
            Result("agent ingest CPU per sample", cpu_per_sample * 1e6, "µs CPU/sample",
                   f"<= {1e6 / BUDGET:.0f} (one core)", cpu_per_sample * BUDGET <= 1.0,
                   "CPU seconds of the agent process only")]
