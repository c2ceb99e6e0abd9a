"""Store.prune on real SQLite files: what stays after thinning and dropping, the v4 rowid
bounds afterwards, idempotence, a reader during a prune, features of a thinned job."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nomade import wire
from nomade.features import JobTable, SampleTable, asof_features
from nomade.store import DAY_S, JOB_SAMPLE_FIELDS, PruneCounts, RetentionPolicy, Store
from nomade.store.retention import _grid_hit, _thin_rows

NOW = 1000 * DAY_S
STEP = 30.0
SHORT_STEP = 100.0  # job 103: fewer samples than KEEP, over its whole run
KEEP = 40
POLICY = RetentionPolicy(thin_samples_to=KEEP)

# job id -> (start, end or None, nodes, samples per node)
JOBS: dict[str, tuple[float, float | None, tuple[str, ...], int]] = {
    # 9 batches of 500 rows: whole spans of job_sample_spans, all older than a year
    "101": (NOW - 401 * DAY_S, NOW - 400 * DAY_S, ("n1",), 4500),
    "102": (NOW - 31 * DAY_S, NOW - 30 * DAY_S, ("n1", "n2"), 500),
    "103": (NOW - 30 * DAY_S - 3600, NOW - 30 * DAY_S, ("n3",), KEEP - 5),
    "104": (NOW - 3 * DAY_S, NOW - 2 * DAY_S, ("n1",), 400),
    "105": (NOW - 1 * DAY_S, None, ("n4",), 400),
}


def _msg(kind: str, body: dict[str, Any], ts: float) -> wire.Message:
    return wire.make(kind, "n1", 0, body, ts)


def _samples() -> list[wire.Message]:
    """Every job's samples, every STEP seconds from its start, in time order (ingest)."""
    out = []
    for job_id, (start, _, nodes, n) in JOBS.items():
        for i in range(n):
            for node in nodes:
                ts = start + 60 + i * (SHORT_STEP if job_id == "103" else STEP)
                out.append(_msg("job.sample", {"job_id": job_id, "node": node, "ts": ts,
                                               "cpu_user_s": i * 20.0, "alloc_cpus": 1,
                                               "mem_bytes": 2**30 + i, "mem_limit_bytes": 2**32,
                                               "read_bytes": i * 10**6, "write_bytes": i * 10**5},
                                    ts))
    return sorted(out, key=lambda m: m.body["ts"])


def fill(store: Store) -> None:
    """Job rows (labelled where ended) and their samples, written as the agent does."""
    events = []
    for job_id, (start, end, nodes, _) in JOBS.items():
        events.append(_msg("job.start", {"job_id": job_id, "source": "prolog", "user": "u",
                                         "start_ts": start, "submit_ts": start - 10,
                                         "nodes": list(nodes), "req_cpus": 1,
                                         "time_limit_s": 7 * DAY_S}, start))
        if end is not None:
            events.append(_msg("job.end", {"job_id": job_id, "source": "jobcomp", "end_ts": end,
                                           "state": "FAILED", "exit_code": 1}, end))
    store.write_messages(events)
    msgs = _samples()
    for i in range(0, len(msgs), 500):
        store.write_batch("n1", i, msgs[i:i + 500])


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "nomade.db") as s:
        fill(s)
        yield s


def _raw(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A query on its own connection, with no help from the store's bounds."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _ts(store: Store, job_id: str, node: str) -> list[float]:
    return [r[2] for r in store.job_samples([job_id]) if r[1] == node]


def test_prune_keeps_exactly_what_the_policy_says(store: Store) -> None:
    before = {j: store.sample_count(j) for j in JOBS}
    counts = store.prune(NOW, POLICY, batch_rows=97)
    assert counts.done and counts.job_samples_dropped == before["101"] == 4500
    # 101 (old): samples gone, the row and its label stay
    assert store.sample_count("101") == 0
    old = store.get_job("101")
    assert old is not None and old.label == 1 and old.state == "FAILED"
    # short, young and running jobs: untouched
    for job_id in ("103", "104", "105"):
        assert store.sample_count(job_id) == before[job_id]
    # 102 (mid): per node at most KEEP, the first and the last, spaced like the grid
    full = [JOBS["102"][0] + 60 + i * STEP for i in range(500)]
    for node in ("n1", "n2"):
        kept = _ts(store, "102", node)
        assert len(kept) <= KEEP and kept[0] == full[0] and kept[-1] == full[-1]
        step = (JOBS["102"][1] - full[0]) / (KEEP - 1)
        grid = [full[0] + k * step for k in range(KEEP - 1)]
        expected = sorted({next(t for t in full if t >= g) for g in grid if g <= full[-1]}
                          | {full[-1]})
        assert kept == expected
    assert counts.job_samples_thinned == 2 * (500 - len(_ts(store, "102", "n1")))
    assert counts.total() == sum(before.values()) - store.sample_count()


def test_prune_is_idempotent_and_resumes_across_calls(store: Store, tmp_path: Path) -> None:
    first = store.prune(NOW, POLICY, batch_rows=50, max_rows=120)
    assert not first.done
    while not store.prune(NOW, POLICY, batch_rows=50, max_rows=120).done:
        pass
    rows = _raw(tmp_path / "nomade.db", "SELECT * FROM job_samples ORDER BY rowid")
    again = store.prune(NOW, POLICY, batch_rows=50)
    assert again.total() == 0
    assert _raw(tmp_path / "nomade.db", "SELECT * FROM job_samples ORDER BY rowid") == rows
    # the same end state as one call on a fresh copy
    with Store(tmp_path / "other.db") as other:
        fill(other)
        other.prune(NOW, POLICY)
        assert other.job_samples() == store.job_samples()


def test_dry_run_counts_and_writes_nothing(store: Store) -> None:
    samples = store.job_samples()
    dry = store.prune(NOW, POLICY, batch_rows=64, dry_run=True)
    assert store.job_samples() == samples
    real = store.prune(NOW, POLICY, batch_rows=64)
    assert (dry.job_samples_dropped, dry.job_samples_thinned) == (
        real.job_samples_dropped, real.job_samples_thinned) and real.total() > 0


def test_bounds_select_exactly_each_jobs_samples_after_pruning(store: Store,
                                                              tmp_path: Path) -> None:
    store.prune(NOW, POLICY, batch_rows=97)
    # new rows after a prune still land above every row ever stored
    store.write_batch("n4", 1, [_msg("job.sample", {"job_id": j, "node": "n1", "ts": NOW + k},
                                     NOW + k) for k, j in enumerate(("102", "105", "107"))])
    path = tmp_path / "nomade.db"
    cols = ", ".join(JOB_SAMPLE_FIELDS)
    for job_id in (*JOBS, "107"):
        assert store.job_samples([job_id]) == _raw(
            path, f"SELECT {cols} FROM job_samples WHERE job_id = ? ORDER BY ts, node", job_id)
    for since in (NOW - 40 * DAY_S, NOW - 30 * DAY_S - 3600, NOW - DAY_S / 2, NOW + 1):
        assert store.job_samples(since_ts=since) == _raw(
            path, f"SELECT {cols} FROM job_samples WHERE ts >= ? ORDER BY job_id, ts, node",
            since)


def test_running_job_holds_the_thinning_sweep_until_it_ends(tmp_path: Path) -> None:
    with Store(tmp_path / "nomade.db") as s:
        fill(s)
        long_start = JOBS["102"][0] - 3600   # started before mid, still running 10 days on
        s.write_messages([_msg("job.start", {"job_id": "106", "source": "prolog",
                                             "start_ts": long_start}, long_start)])
        s.write_batch("n9", 1, [_msg("job.sample", {"job_id": "106", "node": "n9",
                                                    "ts": long_start + 1}, long_start + 1)])
        assert s.prune(NOW - 20 * DAY_S, POLICY).job_samples_thinned == 0   # long is running
        s.write_messages([_msg("job.end", {"job_id": "106", "source": "epilog",
                                           "end_ts": NOW - 19 * DAY_S}, NOW)])
        assert s.prune(NOW, POLICY).job_samples_thinned > 0
        assert s.sample_count("106") == 1


def test_reader_sees_consistent_rows_during_a_prune(store: Store, tmp_path: Path) -> None:
    full = store.job_samples(["102"])
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            with Store(tmp_path / "nomade.db", readonly=True) as r:
                while not stop.is_set():
                    rows = r.job_samples(["102"])
                    assert {row[0] for row in rows} == {"102"} and set(rows) <= set(full)
                    assert rows[0] == full[0] and rows[-1] == full[-1]
                    seen.append(len(rows))
        except BaseException as e:  # reported in the test's own thread
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        store.prune(NOW, POLICY, batch_rows=37)
    finally:
        stop.set()
        reader.join()
    assert not errors and seen
    assert store.sample_count("102") <= 2 * KEEP < len(full)


def test_node_samples_and_predictions_older_than_their_retention_go(tmp_path: Path) -> None:
    with Store(tmp_path / "nomade.db") as s:
        s.write_batch("n1", 1, [_msg("node.sample", {"node": f"n{i % 3}", "ts": ts, "cpu_pct": 1.0},
                                     ts) for i, ts in enumerate(
                                         NOW - d * DAY_S for d in (40, 35, 31, 29, 1, 0))])
        s.add_predictions({"job_id": "j", "ts": NOW - d * DAY_S, "risk": 0.5, "level": "moderate"}
                          for d in (200, 190, 181, 170, 1))
        counts = s.prune(NOW, POLICY, batch_rows=1)
        assert (counts.node_samples, counts.predictions) == (3, 3)
        assert sorted(r[1] for r in s.node_samples()) == [NOW - d * DAY_S for d in (29, 1, 0)]
        assert s.latest_predictions()["j"].ts == NOW - DAY_S
        assert s.prune(NOW, POLICY).total() == 0


def test_features_of_a_thinned_job_are_still_computed(store: Store) -> None:
    store.prune(NOW, POLICY)
    jobs = store.ended_jobs()
    table = JobTable.from_records(jobs)
    samples = SampleTable.from_records(table, store.job_samples(), fields=JOB_SAMPLE_FIELDS)
    row = [j.job_id for j in jobs].index("102")
    t = np.array([JOBS["102"][1]])
    X, mask = asof_features(table, samples, t, rows=np.array([row]))
    assert mask[0, 6:12].all() and np.isfinite(X).all()
    assert 0 < X[0, 7] <= 1.5   # CPU efficiency: 20 s of CPU per 30 s on 1 CPU, ~0.67


def test_thin_rows_keeps_first_last_and_at_most_keep() -> None:
    rows = [(i + 1, "j", None, float(ts)) for i, ts in enumerate(range(0, 10_000, 7))]
    state: dict[tuple[str, str], list[Any]] = {}
    deleted, touched = _thin_rows(rows, {"j": 10_000.0}, state, 10)
    kept = [r for r in rows if r[0] not in set(deleted)]
    assert touched == {("j", "")} and kept[0] == rows[0] and kept[-1] == rows[-1]
    assert len(kept) <= 10
    again, _ = _thin_rows(kept, {"j": 10_000.0}, {}, 10)
    assert again == []
    assert _grid_hit(0.0, 90.0, 10, -1.0, 0.0) and not _grid_hit(0.0, 0.0, 10, -1.0, 5.0)


def test_policy_and_arguments_are_checked(store: Store) -> None:
    with pytest.raises(ValueError, match="thin_samples_to"):
        RetentionPolicy(thin_samples_to=1)
    with pytest.raises(ValueError, match="full_samples_s"):
        RetentionPolicy(full_samples_s=10 * DAY_S, sample_retention_s=DAY_S)
    with pytest.raises(ValueError, match="batch_rows"):
        store.prune(NOW, POLICY, batch_rows=0)
    assert isinstance(store.prune(NOW, POLICY, max_rows=0), PruneCounts)


def test_the_agent_prunes_every_prune_interval_and_counts_it(tmp_path: Path) -> None:
    """The real agent loop (sockets on 127.0.0.1, no Slurm) prunes a store it serves."""
    import dataclasses
    import time

    from nomade import config
    from nomade.agent.daemon import Agent

    now = time.time()
    with Store(tmp_path / "agent.db") as s:
        s.write_messages([_msg("job.start", {"job_id": "1", "source": "prolog",
                                             "start_ts": now - 401 * DAY_S}, now),
                          _msg("job.end", {"job_id": "1", "source": "epilog", "state": "COMPLETED",
                                           "end_ts": now - 400 * DAY_S}, now),
                          _msg("job.start", {"job_id": "2", "source": "prolog",
                                             "start_ts": now - 60}, now)])
        s.write_batch("n1", 1, [_msg("job.sample", {"job_id": "1", "node": "n1", "ts": ts}, ts)
                                for ts in (now - 401 * DAY_S + k for k in range(4096))])
        s.write_batch("n1", 2, [_msg("job.sample", {"job_id": "2", "node": "n1", "ts": now}, now)])
    cfg = config.Config()
    cfg = dataclasses.replace(
        cfg, agent=dataclasses.replace(cfg.agent, ingest_endpoint="tcp://127.0.0.1:*",
                                       publish_endpoint="tcp://127.0.0.1:*", metrics_address="",
                                       interval_s=3600.0),
        ml=dataclasses.replace(cfg.ml, models_dir=str(tmp_path / "no-models")),
        storage=dataclasses.replace(cfg.storage, db_path=str(tmp_path / "agent.db"),
                                    prune_interval_s=0.05),
        security=dataclasses.replace(cfg.security, curve_enabled=False))   # loopback only
    made: list[Agent] = []
    stop, ready = threading.Event(), threading.Event()

    def serve() -> None:   # the agent's store connection belongs to its own thread
        made.append(Agent(cfg, name="agent0"))
        ready.set()
        try:
            made[0].run(stop.is_set)
        finally:
            made[0].close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(60)
        agent, deadline = made[0], time.monotonic() + 60
        while agent.metrics.pruned_rows_total["job_samples", "drop"] == 0:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert agent.metrics.pruned_rows_total["job_samples", "drop"] == 4096
    assert agent.metrics.registry.get_sample_value(
        "nomade_agent_pruned_rows_total", {"table": "job_samples", "step": "drop"}) == 4096
    with Store(tmp_path / "agent.db", readonly=True) as r:
        assert r.sample_count("1") == 0 and r.sample_count("2") == 1
        assert r.get_job("1") is not None
