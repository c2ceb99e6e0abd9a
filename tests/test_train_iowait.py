"""Training's join of the node's iowait onto job samples (feature 16 on cgroup v1 hosts)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nomade import features, wire
from nomade.ml import train
from nomade.store import Store

T0 = 1.7e9
IO = features.FEATURES.index("io_pressure")


def start(job: str, nodes: tuple[str, ...]) -> wire.Message:
    return wire.make("job.start", "ctld", 0, {
        "job_id": job, "user": "alice", "nodes": list(nodes), "num_nodes": len(nodes),
        "req_cpus": 4, "req_mem_bytes": 8 << 30, "time_limit_s": 3600.0, "submit_ts": T0 - 60,
        "start_ts": T0}, T0)


def end(job: str, ts: float, state: str) -> wire.Message:
    return wire.make("job.end", "ctld", 0, {"job_id": job, "end_ts": ts, "exit_code": 0,
                                            "state": state}, ts)


def sample(job: str, ts: float, node: str, io_pressure: float | None = None) -> wire.Message:
    return wire.make("job.sample", node, 0, {
        "job_id": job, "node": node, "ts": ts, "alloc_cpus": 4, "cpu_user_s": ts - T0,
        "mem_bytes": 1 << 30, "mem_limit_bytes": 8 << 30, "io_pressure": io_pressure}, ts)


def node(name: str, ts: float, iowait: float | None) -> wire.Message:
    return wire.make("node.sample", name, 0, {"node": name, "ts": ts, "iowait_pct": iowait}, ts)


def iowait_of(samples: features.SampleTable, row: int) -> list[float]:
    return samples.iowait_pct[samples.job_index == row].tolist()


def test_each_job_sample_gets_its_own_nodes_iowait_as_of_its_time(tmp_path: Path) -> None:
    """The latest node sample of the sample's own node at or before it (a later one,
    even by a second, is never taken), unknown ones skipped, none older than the bound."""
    msgs = [start("1", ("n1",)), start("2", ("n1", "n2")), start("3", ("n3",)),
            node("n1", T0 + 25, 4.0), node("n1", T0 + 60, 6.0), node("n1", T0 + 61, 50.0),
            node("n1", T0 + 95, None), node("n2", T0 + 40, 3.0), node("n2", T0 + 92, 7.0),
            node("n3", T0 + 500, 9.0),
            sample("1", T0 + 30, "n1"), sample("1", T0 + 60, "n1"), sample("1", T0 + 90, "n1"),
            sample("1", T0 + 121, "n1"), sample("1", T0 + 200, "n1", io_pressure=1.5),
            sample("2", T0 + 90.5, "n1"), sample("2", T0 + 91, "n2"), sample("3", T0 + 30, "n3"),
            end("1", T0 + 300, "FAILED"), end("2", T0 + 300, "COMPLETED"),
            end("3", T0 + 600, "COMPLETED")]
    with Store(tmp_path / "s.db") as store:
        store.write_batch("n1", 1, msgs)
    jobs, samples = train.tables_from_store(tmp_path / "s.db")
    row = {j: i for i, j in enumerate(jobs.job_id)}
    got = iowait_of(samples, row["1"])
    assert got[:4] == [4.0, 6.0, 50.0, 50.0]      # at 121: n1's 95 s one is unknown, 61 is 60 s old
    assert math.isnan(got[4])                     # at 200 the last known one is 139 s old
    assert iowait_of(samples, row["2"]) == [50.0, 3.0]   # n1, then n2 (not n2's later 7.0)
    assert all(math.isnan(v) for v in iowait_of(samples, row["3"]))   # only a later one
    # feature 16: the job's PSI where the kernel gives it, else the node's iowait
    X, mask = features.asof_features(jobs, samples, np.array([T0 + 95, T0 + 150, T0 + 250]),
                                     np.array([row["1"]] * 3))
    assert mask[:, IO].tolist() == [True, True, True]
    assert X[:, IO].tolist() == pytest.approx([0.5, 0.5, 0.015])


def test_a_store_without_node_samples_or_job_samples_leaves_iowait_unknown(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.write_batch("n1", 1, [start("1", ("n1",)), end("1", T0 + 90, "COMPLETED"),
                                    start("2", ("n1",)), end("2", T0 + 90, "FAILED")])
        assert len(train.tables_from_store(tmp_path / "s.db")[1]) == 0
        store.write_batch("n1", 2, [sample("1", T0 + 30, "n1")])
    jobs, samples = train.tables_from_store(tmp_path / "s.db")
    assert len(jobs) == 2 and len(samples) == 1 and math.isnan(samples.iowait_pct[0])
