"""The agent's pure parts: job state, rebuild from a real store, tick inputs, factors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from nomade import features, wire
from nomade.agent import advice, scoring
from nomade.agent.jobstate import Explained, JobState, RunningJob
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


def node_sample(name: str, ts: float, iowait: float | None) -> wire.Message:
    return wire.make("node.sample", name, 0, {"node": name, "ts": ts, "iowait_pct": iowait}, ts)


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
    ts = [s[2] for s in st.running["1"].samples]
    assert len(ts) == 5 and ts[-1] == T0 + 290
    st = JobState(horizon_s=45.0, max_samples=100)
    st.apply([start("1")] + [sample("1", T0 + 10 * k) for k in range(30)])
    assert [s[2] - T0 for s in st.running["1"].samples] == [250, 260, 270, 280, 290]


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


def rows_of(msgs: list[wire.Message]) -> list[tuple[object, ...]]:
    """The job samples of ``msgs`` as the wire's ``decode_rows`` gives them."""
    items = [m._replace(sender="n1") for m in msgs if m.kind == "job.sample"]
    batch = wire.make("batch", "n1", 1, {"items": items}, T0)
    return wire.decode_rows(wire.encode(batch), sample_items=False)[1]


def test_apply_rows_is_apply_of_the_sample_messages() -> None:
    """Rows and messages fill the same rings: orphans held and joined, the horizon and
    the bound kept, samples of an ended job ignored (but counted as taken)."""
    msgs = [sample("1", T0 + 10 * k) for k in range(30)] + [sample("2", T0 + 5), sample("3", T0)]
    by_msgs = JobState(horizon_s=100.0, max_samples=5)
    by_rows = JobState(horizon_s=100.0, max_samples=5)
    for st in (by_msgs, by_rows):
        st.apply([start("1"), start("3"), end("3", T0 + 1)])
    assert by_msgs.apply(msgs).samples == by_rows.apply_rows(rows_of(msgs)) == 32
    assert set(by_rows.running) == {"1", "2"} and by_rows.scorable() == [by_rows.running["1"]]
    for job in ("1", "2"):
        assert list(by_rows.running[job].samples) == list(by_msgs.running[job].samples)
        assert by_rows.running[job].appended == by_msgs.running[job].appended
    assert [s[2] - T0 for s in by_rows.running["1"].samples] == [250, 260, 270, 280, 290]
    assert by_rows.running["1"].samples[-1][:3] == ("1", "n1", T0 + 290)
    by_rows.apply([start("2")])
    assert [r.job_id for r in by_rows.scorable()] == ["1", "2"]
    assert len(by_rows.running["2"].samples) == 1


def test_rebuild_from_the_store_matches_the_live_state(tmp_path: Path) -> None:
    msgs = [start("1"), start("2", user="bob"), end("2", T0 + 50, "FAILED")]
    msgs += [sample("1", T0 + 30 * k) for k in range(1, 6)]
    msgs += [node_sample("n1", T0 + 30 * k - 1, float(k + 40)) for k in range(-30, 7)]
    msgs.append(node_sample("n2", T0, 5.0))
    live = JobState(horizon_s=1000.0)
    live.apply(msgs)
    with Store(tmp_path / "s.db") as store:
        store.write_batch("n1", 1, msgs)
        rebuilt = JobState.rebuild(store, T0 + 200, JOB_SAMPLE_FIELDS, horizon_s=1000.0)
    assert set(rebuilt.running) == set(live.running) == {"1"}
    assert rebuilt.running["1"].request == {k: v for k, v in live.running["1"].request.items()}
    assert list(rebuilt.running["1"].samples) == list(live.running["1"].samples)
    assert rebuilt.history["2"].state == "FAILED" and rebuilt.history["2"].user == "bob"
    got = rebuilt.sample_rows(rebuilt.scorable()).iowait
    assert got is not None and got.tolist() == [41.0, 42.0, 43.0, 44.0, 45.0]
    np.testing.assert_array_equal(got, live.sample_rows(live.scorable()).iowait)
    # only what the rings or the horizon can need was read: n1 from 200 - 1000 - 60 s
    # on (not its first readings), nothing of n2 (no ring row on it)
    assert set(rebuilt.iowait) == {"n1"}
    assert min(r[0] for r in rebuilt.iowait["n1"]) - T0 == 30 * -28 - 1


def test_node_readings_join_each_row_as_of_its_time_and_are_trimmed() -> None:
    """A row takes its own node's latest known reading at or before it (at most
    ``iowait_max_age_s`` older); a reading that arrives after the rows it belongs to is
    taken at the next call; readings no row or horizon needs are forgotten."""
    st = JobState(horizon_s=100.0, iowait_max_age_s=60.0)
    st.apply([start("1"), start("2", nodes=("n2",)), node_sample("n1", T0 + 10, 4.0),
              node_sample("n1", T0 + 20, None), sample("1", T0 + 30), sample("1", T0 + 71),
              sample("2", T0 + 30, "n2"), node_sample("n2", T0 + 31, 9.0)])
    rows = st.sample_rows(st.scorable())
    assert rows.iowait is not None
    np.testing.assert_array_equal(rows.iowait, [4.0, np.nan, np.nan])   # n2's one is later
    st.apply([node_sample("n1", T0 + 60, 6.0), node_sample("n2", T0 + 29, 8.0)])     # late arrivals
    assert st.sample_rows(st.scorable()).iowait.tolist() == [4.0, 6.0, 8.0]
    st.apply([sample("1", T0 + 300 + 30 * k) for k in range(5)] + [node_sample("n1", T0 + 400, 1.0)])
    st.apply([sample("2", T0 + 500, "n2"), node_sample("n2", T0 + 500, 2.0)])
    rows = st.sample_rows(st.scorable())
    assert rows.iowait is not None and rows.iowait[-2:].tolist() == [8.0, 2.0]
    # n1: its rows now start at 330 (the ring's horizon): 10 and 60 go; n2 still has a
    # row at 30 (the ring keeps two), so 29 and 31 stay though far beyond the horizon
    assert [r[0] - T0 for r in st.iowait["n1"]] == [400.0]
    assert [r[0] - T0 for r in st.iowait["n2"]] == [31.0, 29.0, 500.0]
    with pytest.raises(ValueError, match="iowait_max_age_s"):
        JobState(iowait_max_age_s=-1.0)


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


def reference_inputs(st: JobState, now: float, length: int,
                     readings: list[wire.Message]) -> tuple[np.ndarray, ...]:
    """What training's functions make of the state's rings and history (the public
    record constructors, no agent code), for the scorable jobs in order; each sample
    joined to every node sample sent so far, as ``train.tables_from_store`` joins the
    store's (same helper, same bound)."""
    run = st.scorable()
    records = [{"job_id": r.job_id, **r.request} for r in run]
    records += [{"job_id": j, "user": h.user, "end_ts": h.end_ts, "state": h.state}
                for j, h in st.history.items()]
    jobs = features.JobTable.from_records(records)
    srecs = [dict(zip(JOB_SAMPLE_FIELDS, b, strict=True)) for r in run for b in r.samples]
    code = {f"n{k}": k for k in range(10)}
    iowait = features.node_asof(
        np.array([code[s["node"]] for s in srecs]), np.array([s["ts"] for s in srecs]),
        np.array([code[m.body["node"]] for m in readings]),
        np.array([m.body["ts"] for m in readings]),
        np.array([m.body["iowait_pct"] for m in readings], dtype=np.float64))
    samples = features.SampleTable.from_records(jobs, [dict(s, iowait_pct=w)
                                                       for s, w in zip(srecs, iowait, strict=True)])
    rows, t = np.arange(len(run)), np.full(len(run), now)
    return (*features.asof_features(jobs, samples, t, rows),
            *features.sequences(jobs, samples, t, length, 30.0, rows))


@pytest.mark.parametrize("seed", range(3))
def test_tick_inputs_stay_equal_to_the_feature_functions_tick_after_tick(seed: int) -> None:
    """Jobs start, end (with a state learnt late), run on one or three nodes, get samples
    late and out of order, lose old ones to the horizon and the ring bound, and get
    samples before their start; nodes send iowait readings (some unknown, some late,
    some missing for a while): after every tick the incrementally kept table gives
    exactly what the feature functions give on the rings' contents joined to all node
    samples sent so far, whether the samples came as messages or as rows."""
    rng = random.Random(seed)
    st = JobState(horizon_s=400.0, max_samples=12, orphan_ttl_s=1e6)
    now, next_id = T0 + 400, 1
    live: dict[str, tuple[str, ...]] = {}
    readings: list[wire.Message] = []
    known_io = 0
    for tick in range(12):
        msgs: list[wire.Message] = []
        for k in range(1, 10):   # most nodes report each tick, a few late or unknown
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                ts = now + rng.uniform(-10, 20) - rng.choice([0.0, 0.0, 0.0, 45.0, 200.0])
                readings.append(node_sample(f"n{k}", ts, None if rng.random() < 0.1 else rng.uniform(0, 60)))
                msgs.append(readings[-1])
        for _ in range(rng.randint(0, 3)):   # new jobs, one in four with an early sample
            job = str(next_id)
            next_id += 1
            nodes = ("n1", "n2", "n3") if rng.random() < 0.3 else (f"n{rng.randint(1, 9)}",)
            live[job] = nodes
            if rng.random() < 0.25:
                msgs.append(sample(job, now + 1, nodes[0]))
            msgs.append(start(job, now - rng.uniform(0, 300), user=rng.choice(["a", "b", "c"]),
                              nodes=nodes))
        for job, nodes in list(live.items()):
            for k, node in enumerate(nodes):   # distinct times per node: no exact ties
                for _ in range(rng.choice([0, 1, 1, 1, 2, 5])):
                    ts = now + k * 0.25 - rng.choice([0.0, 0.0, 0.0, 45.0])   # some arrive late
                    msgs.append(sample(job, ts + rng.uniform(0, 20), node, mem=rng.randint(1, 8) << 28))
            if rng.random() < 0.1:
                del live[job]
                msgs.append(end(job, now, rng.choice([None, "FAILED", "COMPLETED"])))
        rng.shuffle(msgs[-5:])
        if tick % 2:   # as ingest feeds it: the other items, then the samples as rows
            st.apply([m for m in msgs if m.kind != "job.sample"])
            st.apply_rows(rows_of(msgs))
        else:
            st.apply(msgs)
        for job in rng.sample(sorted(st.history), min(2, len(st.history))):
            st.final_state(job, "TIMEOUT")
        got = scoring.tick_inputs(st, now + 25, sequence_length=6, interval_s=30.0)
        X, mask, S, lengths = reference_inputs(st, now + 25, 6, readings)
        known_io += int(mask[:, features.FEATURES.index("io_pressure")].sum())
        assert [r.job_id for r in got.jobs] == [r.job_id for r in st.scorable()]
        np.testing.assert_array_equal(got.mask, mask)
        np.testing.assert_allclose(got.X, X, rtol=1e-6, err_msg=f"tick {tick}")
        np.testing.assert_allclose(got.S, S, rtol=1e-6, err_msg=f"tick {tick}")
        np.testing.assert_array_equal(got.lengths, lengths)
        now += 30.0
    assert known_io > 10   # feature 16 came from the nodes' iowait (no job PSI here)


def fake_jobs(levels: list[str | None], ts: list[float]) -> list[RunningJob]:
    return [RunningJob(str(i), explained=None if lv is None else Explained(lv, t, []))
            for i, (lv, t) in enumerate(zip(levels, ts, strict=True))]


def test_explanations_go_to_changed_levels_first_then_to_the_oldest() -> None:
    risk = np.array([0.1, 0.5, 0.9, 0.4, 0.65, 0.35, 0.7])
    level = np.array(["low", "moderate", "critical", "moderate", "high", "moderate", "high"], object)
    jobs = fake_jobs([None, "moderate", "high", "moderate", "high", "moderate", None],
                     [0, 100, 100, 50, 40, 90, 0])
    # under the cap: every job at moderate or above
    assert scoring.explain_rows(jobs, risk, level, 200.0, limit=10).tolist() == [1, 2, 3, 4, 5, 6]
    # over it: changed (2: high -> critical, 6: never) riskiest first, then the oldest (4, 3)
    assert scoring.explain_rows(jobs, risk, level, 200.0, limit=2).tolist() == [2, 6]
    assert scoring.explain_rows(jobs, risk, level, 200.0, limit=4).tolist() == [2, 3, 4, 6]
    assert scoring.explain_rows(jobs, risk, level, 200.0, min_risk=0.6, limit=2).tolist() == [2, 6]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A real ``Scorer`` of small models trained on synthetic data."""
    from modeltools import train_small_models

    from nomade.ml.inference import Scorer
    return Scorer.load(train_small_models(tmp_path_factory.mktemp("models"), seed=3))


def scored_state(n: int) -> tuple[JobState, float]:
    st = JobState(horizon_s=10_000.0)
    msgs = []
    for i in range(n):
        job = str(i + 1)
        msgs.append(start(job, user=f"u{i % 3}", req_mem_bytes=(1 + i % 4) << 30))
        msgs += [sample(job, T0 + 30 * k, mem=((k * (i + 1)) % 8 + 1) << 27) for k in range(1, 1 + i % 9)]
    st.apply(msgs)
    return st, T0 + 300


def test_the_explanation_pass_gives_the_full_explanations(scorer: object) -> None:
    st, now = scored_state(40)
    inputs = scoring.tick_inputs(st, now, 8, 30.0)
    full = scorer.score(inputs.X, inputs.mask, inputs.S, inputs.lengths, inputs.start_ts)
    preds = scoring.score(inputs, scorer, explain_min_risk=0.0, max_explain=100)
    assert len(preds) == 40 and any(p["factors"] for p in preds)
    idle = features.idle_minutes(inputs.S, inputs.lengths, inputs.step_s)
    for i, p in enumerate(preds):
        assert p["risk"] == pytest.approx(float(full.risk[i]), abs=1e-6) and p["level"] == full.level[i]
        # phrased with the job's own values (its request, how long its CPU has been idle)
        assert p["factors"] == advice.wire_factors(full.factors(i, scoring.TOP_FACTORS),
                                                   scoring.evidence(inputs, i, idle[i]))
        assert p["parts"] == full.parts_of(i)


def test_factors_within_the_cap_are_carried_at_the_same_level_only(scorer: object) -> None:
    st, now = scored_state(30)
    first = scoring.score(scoring.tick_inputs(st, now, 8, 30.0), scorer, explain_min_risk=0.0, max_explain=4)
    explained = {p["job_id"] for p in first if p["factors"]}
    assert 0 < len(explained) <= 4
    second = scoring.score(scoring.tick_inputs(st, now + 30, 8, 30.0), scorer, explain_min_risk=0.0,
                           max_explain=4)
    by_id = {p["job_id"]: p for p in first}
    for p in second:
        job = st.running[p["job_id"]]
        assert job.explained is not None or not p["factors"]
        if p["job_id"] in explained and job.explained.ts == now:   # not explained again: carried
            assert p["factors"] == by_id[p["job_id"]]["factors"] and p["level"] == job.explained.level
    assert len({p["job_id"] for p in second if p["factors"]}) > len(explained)   # rotation
    # at a risk below the threshold a job carries nothing and forgets its explanation
    nothing = scoring.score(scoring.tick_inputs(st, now + 60, 8, 30.0), scorer, explain_min_risk=1.1)
    assert all(not p["factors"] for p in nothing) and all(r.explained is None for r in st.scorable())


def test_model_watch_logs_once_per_change() -> None:
    w = scoring.ModelWatch()
    assert w.update("no files") is not None
    assert w.update("no files") is None
    assert "loaded" in (w.update(None) or "")
    assert w.update(None) is None
    assert w.update("broken") is not None
