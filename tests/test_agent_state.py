"""The agent's pure parts: job state, rebuild from a real store, tick inputs, factors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nomade import features, wire
from nomade.agent import scoring
from nomade.agent.state import JobState
from nomade.store import JOB_SAMPLE_FIELDS, Store

T0 = 1.7e9


def start(job: str, ts: float = T0, user: str = "alice", nodes: tuple[str, ...] = ("n1",),
          **extra: object) -> wire.Message:
    body = {"job_id": job, "user": user, "partition": "cpu", "nodes": list(nodes),
            "num_nodes": len(nodes), "req_cpus": 4, "req_mem_bytes": 8 << 30, "req_gpus": 0,
            "time_limit_s": 3600.0, "submit_ts": ts - 60, "start_ts": ts, **extra}
    return wire.make("job.start", "ctld", 0, body, ts)


def sample(job: str, ts: float, node: str = "n1", mem: int = 1 << 30) -> wire.Message:
    return wire.make("job.sample", node, 0, {
        "job_id": job, "node": node, "ts": ts, "alloc_cpus": 4, "cpu_user_s": (ts - T0) * 3.0,
        "mem_bytes": mem, "mem_limit_bytes": 8 << 30, "write_bytes": 1000, "nfs_write_bytes": 10}, ts)


def end(job: str, ts: float, state: str | None = None) -> wire.Message:
    return wire.make("job.end", "ctld", 0, {"job_id": job, "end_ts": ts, "exit_code": 0,
                                            "state": state}, ts)


def test_start_samples_end_and_changes() -> None:
    st = JobState(horizon_s=100.0)
    ch = st.apply([start("1"), sample("1", T0 + 30), sample("1", T0 + 60)])
    assert ch.started == ["1"] and ch.samples == 2 and not ch.ended
    assert [r.job_id for r in st.scorable()] == ["1"]
    ch = st.apply([end("1", T0 + 90)])
    assert [(e.job_id, e.state) for e in ch.ended] == [("1", None)]
    assert "1" not in st.running and st.history["1"].user == "alice"
    # late start, sample or duplicate end of an ended job change nothing
    ch = st.apply([start("1"), sample("1", T0 + 95), end("1", T0 + 99, "COMPLETED")])
    assert not ch.started and not ch.ended and "1" not in st.running
    assert st.history["1"].state == "COMPLETED"   # but a state learnt late is kept


def test_ring_keeps_the_horizon_and_the_bound() -> None:
    st = JobState(horizon_s=100.0, max_samples=5)
    st.apply([start("1")] + [sample("1", T0 + 10 * k) for k in range(30)])
    ts = [s["ts"] for s in st.running["1"].samples]
    assert len(ts) == 5 and ts[-1] == T0 + 290
    st = JobState(horizon_s=45.0, max_samples=100)
    st.apply([start("1")] + [sample("1", T0 + 10 * k) for k in range(30)])
    assert [s["ts"] - T0 for s in st.running["1"].samples] == [250, 260, 270, 280, 290]


def test_samples_before_start_join_the_job_and_orphans_expire() -> None:
    st = JobState(orphan_ttl_s=100.0)
    st.apply([sample("2", T0 + 30), sample("3", T0 + 30)])
    assert st.scorable() == []                       # no start yet: nothing to score
    ch = st.apply([start("2", nodes=("n1", "n2")), start("2", ts=T0 - 5, nodes=("n2", "n3"))])
    assert ch.started == ["2"]
    job = st.running["2"]
    assert job.request["start_ts"] == T0 - 5 and job.nodes == ["n1", "n2", "n3"]
    assert len(job.samples) == 1
    assert st.expire(T0 + 200) == 1 and set(st.running) == {"2"}


def test_rebuild_from_the_store_matches_the_live_state(tmp_path: Path) -> None:
    msgs = [start("1"), start("2", user="bob"), end("2", T0 + 50, "FAILED")]
    msgs += [sample("1", T0 + 30 * k) for k in range(1, 6)]
    live = JobState(horizon_s=1000.0)
    live.apply(msgs)
    with Store(tmp_path / "s.db") as store:
        store.write_batch("n1", 1, msgs)
        rebuilt = JobState.rebuild(store, T0 + 200, JOB_SAMPLE_FIELDS, horizon_s=1000.0)
    assert set(rebuilt.running) == set(live.running) == {"1"}
    assert rebuilt.running["1"].request == {k: v for k, v in live.running["1"].request.items()}
    assert [s["ts"] for s in rebuilt.running["1"].samples] == [s["ts"] for s in live.running["1"].samples]
    assert rebuilt.history["2"].state == "FAILED" and rebuilt.history["2"].user == "bob"


def test_tick_inputs_equal_the_feature_functions_on_the_same_data() -> None:
    st = JobState(horizon_s=10_000.0)
    msgs = [start("1"), start("2", user="bob", nodes=("n1", "n2")), start("9", user="bob"),
            end("9", T0 + 10, "FAILED")]
    for k in range(1, 8):
        msgs += [sample("1", T0 + 30 * k, mem=k << 28),
                 sample("2", T0 + 30 * k, "n1"), sample("2", T0 + 30 * k + 1, "n2")]
    st.apply(msgs)
    now = T0 + 240
    got = scoring.tick_inputs(st, now, sequence_length=5, interval_s=30.0)
    assert [j.job_id for j in got.jobs] == ["1", "2"]
    # reference: the same data through the public record constructors
    records = [{**m.body, "end_ts": None, "state": None} for m in msgs if m.kind == "job.start"]
    records[2].update(end_ts=T0 + 10, state="FAILED")
    jobs = features.JobTable.from_records(records)
    samples = features.SampleTable.from_records(jobs, [m.body for m in msgs if m.kind == "job.sample"])
    X, mask = features.asof_features(jobs, samples, np.full(2, now), np.arange(2))
    S, lengths = features.sequences(jobs, samples, np.full(2, now), 5, 30.0, np.arange(2))
    np.testing.assert_array_equal(got.mask, mask)
    np.testing.assert_allclose(got.X, X, rtol=1e-6)
    np.testing.assert_allclose(got.S, S, rtol=1e-6)
    np.testing.assert_array_equal(got.lengths, lengths)
    assert got.X[1, features.FEATURES.index("user_last_failed")] == 1.0   # bob's ended job


def test_model_watch_logs_once_per_change() -> None:
    w = scoring.ModelWatch()
    assert w.update("no files") is not None
    assert w.update("no files") is None
    assert "loaded" in (w.update(None) or "")
    assert w.update(None) is None
    assert w.update("broken") is not None
