"""The store on real SQLite files: writes, merges, reads, migrations, and a reader process
that queries while a writer process writes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nomade import store as store_mod
from nomade import wire
from nomade.store import (
    JOB_SAMPLE_FIELDS,
    NODE_SAMPLE_FIELDS,
    SchemaVersionError,
    Store,
    StoreError,
    reads,
    schema,
    schema_version,
    writes,
)


@dataclass(frozen=True)
class Loose:
    """A message the wire would refuse: the store still checks what it needs of one."""

    kind: str
    body: dict[str, Any]
    sender: str = "n1"
    seq: int = 0
    ts: float = 1000.0


def msg(kind: str, body: dict[str, Any], ts: float = 1000.0) -> wire.Message:
    return wire.make(kind, "n1", 0, body, ts)


def start(job_id: str, **body: Any) -> wire.Message:
    return msg("job.start", {"job_id": job_id, "source": "prolog", **body})


def end(job_id: str, **body: Any) -> wire.Message:
    return msg("job.end", {"job_id": job_id, "source": "epilog", **body})


def sample(job_id: str, ts: float, node: str = "n1", **body: Any) -> wire.Message:
    return msg("job.sample", {"job_id": job_id, "node": node, "ts": ts, **body})


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nomade" / "nomade.db"


@pytest.fixture()
def st_(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


# ---------------------------------------------------------------- opening

def test_open_creates_dir_in_wal_at_current_version(db: Path) -> None:
    with Store(db):
        pass
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version() >= 2
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "job_samples", "node_samples", "predictions", "model_runs",
            "batches"} <= tables
    conn.close()


def test_readonly_refuses_missing_file_and_writes(db: Path) -> None:
    with pytest.raises(StoreError, match="no store file"):
        Store(db, readonly=True)
    assert not db.exists()
    Store(db).close()
    with Store(db, readonly=True) as ro:
        assert ro.counts()["jobs"] == 0
        with pytest.raises(StoreError, match="read-only"):
            ro.write_messages([start("1")])
        with pytest.raises(StoreError, match="read-only"):
            ro.set_final_state("1", "COMPLETED", 0, "poll")


def test_not_a_database_and_foreign_database_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(junk)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a nomade store"):
        Store(foreign)
    conn = sqlite3.connect(foreign)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]
    conn.close()


# ---------------------------------------------------------------- batches

def test_duplicate_batch_is_a_no_op(st_: Store) -> None:
    assert st_.write_batch("n1", 7, [sample("1", 10.0, mem_bytes=5)])
    assert not st_.write_batch("n1", 7, [sample("1", 20.0), sample("1", 30.0)])
    assert st_.sample_count() == 1
    assert st_.write_batch("n2", 7, [sample("1", 20.0)])  # same seq, other sender
    assert st_.write_batches([("n1", 7, [sample("2", 1.0)]), ("n1", 8, [sample("2", 2.0)]),
                              ("n1", 8, [sample("2", 3.0)])]) == [False, True, False]
    assert [r[2] for r in st_.job_samples(["2"])] == [2.0]
    assert st_.counts()["batches"] == 3


def test_batches_with_job_sample_rows_store_the_rows_as_given(st_: Store) -> None:
    node = msg("node.sample", {"node": "n1", "ts": 5.0, "cpu_pct": 10.0})
    items = [sample("1", 5.0, mem_bytes=7), node, start("1", start_ts=1.0),
             sample("2", 5.0, io_pressure=2.5)]
    frame = wire.encode(wire.make_batch("n1", 4, items))
    batch, rows = wire.decode_rows(frame)
    assert st_.write_batches([("n1", 4, batch.body["items"], rows)]) == [True]
    assert st_.job_samples() == rows   # in JOB_SAMPLE_FIELDS order, nothing lost
    assert st_.node_samples()[0][:3] == ("n1", 5.0, 10.0)
    assert st_.get_job("1").start_ts == 1.0
    assert st_.write_batches([("n1", 4, batch.body["items"], rows)]) == [False]
    assert st_.sample_count() == 2


def test_a_job_s_samples_are_found_from_its_earliest_whatever_the_arrival_order(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(db) as s:
        s.write_batch("n1", 1, [sample("1", 50.0), sample("2", 60.0)])
        s.write_batch("n2", 1, [sample("1", 20.0, node="n2"), sample("3", 5.0)])  # late, earlier
    monkeypatch.setattr(writes, "_STARTS_CACHED", 1)   # a writer that forgets at once
    monkeypatch.setattr(writes, "SPAN_ROWS", 2)        # and many spans
    with Store(db) as s:   # and a fresh writer that knows nothing yet
        s.write_batches([("n3", 1, [sample("1", 10.0, node="n3"), sample("2", 70.0)]),
                         ("n3", 2, [sample("1", 5.0, node="n3")])])
        s.write_messages([sample("2", 1.0)])
    with Store(db, readonly=True) as r:
        assert [row[2] for row in r.job_samples(["1"])] == [5.0, 10.0, 20.0, 50.0]
        assert [row[2] for row in r.job_samples(["2", "3"])] == [1.0, 60.0, 70.0, 5.0]
        assert [row[2] for row in r.job_samples(["1"], since_ts=15.0)] == [20.0, 50.0]
        assert r.job_samples(["nope"]) == [] and r.sample_count("nope") == 0
        assert r.sample_count("1") == 4 and r.sample_count() == 8


def test_samples_since_a_time_are_all_found_when_old_ones_arrive_late(
        st_: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writes, "SPAN_ROWS", 3)
    stored: list[float] = []
    for seq, times in enumerate([[10.0, 11.0], [12.0, 13.0], [1.0, 2.0], [14.0], [3.0, 50.0],
                                 [15.0, 16.0, 17.0, 18.0], [4.0]]):
        st_.write_batch("n1", seq, [sample(str(int(t) % 3), t) for t in times])
        stored += times
    for since in [0.0, 2.0, 3.5, 12.0, 16.5, 50.0, 51.0]:
        got = sorted(row[2] for row in st_.job_samples(since_ts=since))
        assert got == sorted(t for t in stored if t >= since), since
        for job in "012":
            assert [r[2] for r in st_.job_samples([job], since_ts=since)] == sorted(
                t for t in stored if t >= since and str(int(t) % 3) == job), (since, job)


def test_reading_samples_scans_rowids_from_a_bound_not_the_whole_table(st_: Store) -> None:
    def plan(sql: str, *params: Any) -> str:
        return " | ".join(r[3] for r in st_._conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    ids = '["1"]'
    cols = ", ".join(store_mod.JOB_SAMPLE_FIELDS)
    for bound, params in [(reads._START_OF_JSON, (ids,)), (reads._START_SINCE, (5.0,))]:
        sql = f"SELECT {cols} FROM job_samples WHERE ts >= 0 AND rowid >= {bound}"
        assert "SEARCH job_samples USING INTEGER PRIMARY KEY (rowid>?)" in plan(sql, *params)
    assert "job_samples_ts" not in _indexes(st_.path)   # nothing to update a sample


@pytest.mark.parametrize("bad", [
    wire.make_ack("n1", 3),
    Loose("job.sample", {"node": "n1", "ts": 1.0}),
    Loose("job.end", {"end_ts": 5.0}),
    Loose("prediction", {"job_id": "1", "level": "low"}),
    Loose("prediction", {"job_id": "1", "risk": 0.5, "level": "low", "parts": {"x": object()}}),
])
def test_bad_message_writes_nothing_and_keeps_batch_id_free(st_: Store, bad: Any) -> None:
    with pytest.raises(ValueError):
        st_.write_batch("n1", 1, [sample("1", 1.0), start("1", start_ts=0.0), bad])
    assert st_.counts() == dict.fromkeys(st_.counts(), 0)
    assert st_.write_batch("n1", 1, [sample("1", 1.0)])  # the corrected resend is kept


def test_sample_ts_falls_back_to_envelope(st_: Store) -> None:
    st_.write_messages([Loose("job.sample", {"job_id": "1", "node": "n1"}, ts=55.0),
                        Loose("node.sample", {"node": "n1", "cpu_pct": 3.0}, ts=56.0)])
    assert st_.job_samples()[0][:3] == ("1", "n1", 55.0)
    assert st_.node_samples("n1")[0][:3] == ("n1", 56.0, 3.0)


def test_samples_keep_every_field_in_order(st_: Store) -> None:
    body = {f: i + 1 for i, f in enumerate(JOB_SAMPLE_FIELDS)}
    body.update(job_id="9", node="n2", ts=3.5, io_pressure=None)
    nbody: dict[str, Any] = {f: i for i, f in enumerate(NODE_SAMPLE_FIELDS)}
    nbody.update(node="n2", ts=4.0, load1=0.25)
    st_.write_messages([msg("job.sample", body), msg("node.sample", nbody),
                        sample("9", 1.0, node="n1"), sample("10", 0.5), sample("9", 2.0)])
    got = st_.job_samples(["9"])
    assert [r[:3] for r in got] == [("9", "n1", 1.0), ("9", "n1", 2.0), ("9", "n2", 3.5)]
    assert got[-1] == tuple(body[f] for f in JOB_SAMPLE_FIELDS)
    assert st_.job_samples(["9"], since_ts=2.0) == got[1:]
    assert [r[0] for r in st_.job_samples()] == ["10", "9", "9", "9"]
    assert st_.job_samples([]) == []
    assert st_.sample_count("9") == 3 and st_.sample_count() == 4
    assert st_.node_samples() == [tuple(nbody[f] for f in NODE_SAMPLE_FIELDS)]
    assert st_.node_samples("n2", since_ts=4.5) == [] and st_.node_samples("n1") == []


# ---------------------------------------------------------------- job merges

def test_starts_from_two_nodes_and_ctld_make_one_row(st_: Store) -> None:
    st_.write_batch("n2", 1, [start("5", nodes=["n2"], start_ts=101.0, user="ann", uid=1001,
                                    num_nodes=2, req_cpus=8)])
    st_.write_messages([start("5", nodes=["n1", "n2"], start_ts=100.0, submit_ts=90.0,
                              account="phys", partition="gpu", req_cpus=4,
                              source="prolog_slurmctld")])
    st_.write_batch("n1", 1, [start("5", nodes=["n1"], start_ts=100.5, time_limit_s=3600.0)])
    job = st_.get_job("5")
    assert job is not None
    assert (job.user, job.uid, job.account, job.partition) == ("ann", 1001, "phys", "gpu")
    assert job.nodes == ("n2", "n1")
    assert (job.start_ts, job.submit_ts, job.num_nodes) == (100.0, 90.0, 2)
    assert job.req_cpus == 8  # the first value known is kept
    assert job.time_limit_s == 3600.0
    assert st_.counts()["jobs"] == 1
    assert [j.job_id for j in st_.running_jobs()] == ["5"]


def test_repeated_end_changes_nothing(st_: Store) -> None:
    st_.write_messages([start("1", start_ts=10.0), end("1", end_ts=20.0, exit_code=0)])
    before = st_.get_job("1")
    st_.write_messages([end("1", end_ts=20.0, exit_code=0)])
    st_.write_messages([end("1", end_ts=25.0, exit_code=0)])  # a later epilog on another node
    assert st_.get_job("1") == before
    assert before is not None and before.end_ts == 20.0 and before.state is None


def test_end_with_final_state_sets_label(st_: Store) -> None:
    st_.write_messages([start("1", start_ts=10.0),
                        end("1", end_ts=20.0, exit_code=0, state="CANCELLED", source="jobcomp")])
    job = st_.get_job("1")
    assert job is not None
    assert (job.state, job.label, job.state_source) == ("CANCELLED", 1, "jobcomp")
    st_.write_messages([end("1", end_ts=20.0, state="COMPLETED")])  # first final state wins
    assert st_.get_job("1") == job
    assert st_.jobs_awaiting_final_state() == []


def test_end_without_state_waits_for_the_poller(st_: Store) -> None:
    st_.write_messages([start("1", start_ts=1.0), start("2", start_ts=2.0),
                        end("2", end_ts=4.0, exit_code=0, state="COMPLETING"),
                        end("1", end_ts=5.0, exit_code=0, signal=0)])
    assert [j.job_id for j in st_.jobs_awaiting_final_state()] == ["2", "1"]
    assert st_.running_jobs() == []
    st_.set_final_state("1", "TIMEOUT", None, "squeue")
    st_.set_final_state("2", ["COMPLETED"], 0, "squeue")
    one, two = st_.get_job("1"), st_.get_job("2")
    assert one is not None and two is not None
    assert (one.state, one.label, one.state_source, one.exit_code) == ("TIMEOUT", 1, "squeue", 0)
    assert (two.state, two.label) == ("COMPLETED", 0)
    assert st_.jobs_awaiting_final_state() == []
    with pytest.raises(ValueError, match="not a final"):
        st_.set_final_state("1", "RUNNING", 0, "squeue")
    assert st_.get_job("1") == one


def test_set_final_state_of_unseen_job_and_end_before_start(st_: Store) -> None:
    st_.set_final_state("77", "CANCELLED by 1001", 3, "jobcomp")
    st_.write_messages([end("78", end_ts=50.0), start("78", start_ts=40.0, user="bob")])
    s77, s78 = st_.get_job("77"), st_.get_job("78")
    assert s77 is not None and (s77.state, s77.label, s77.exit_code) == ("CANCELLED", 1, 3)
    assert s78 is not None and (s78.start_ts, s78.end_ts, s78.user) == (40.0, 50.0, "bob")


def test_end_ts_falls_back_to_envelope_and_job_ids_are_strings(st_: Store) -> None:
    st_.write_messages([Loose("job.start", {"job_id": 42, "start_ts": 1.0}),
                        msg("job.end", {"job_id": "42", "end_ts": None}, ts=9.0)])
    job = st_.get_job("42")
    assert job is not None and job.end_ts == 9.0 and st_.counts()["jobs"] == 1


_FIELDS = st.fixed_dictionaries({}, optional={
    "user": st.just("ann"), "uid": st.just(1001), "partition": st.just("cpu"),
    "req_cpus": st.just(4), "start_ts": st.floats(0, 1e6), "submit_ts": st.floats(0, 1e6),
    "nodes": st.lists(st.sampled_from(["n1", "n2", "n3"]), max_size=3)})


@settings(max_examples=40, deadline=None)
@given(st.lists(_FIELDS, min_size=1, max_size=5))
def test_any_set_of_consistent_starts_merges_to_their_union(bodies: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "h.db") as s:
        for i, body in enumerate(bodies):
            s.write_batch("n", i, [start("1", **body)])
        job = s.get_job("1")
    assert job is not None
    for key in ("user", "uid", "partition", "req_cpus"):
        known = [b[key] for b in bodies if key in b]
        assert getattr(job, key) == (known[0] if known else None)
    for key in ("start_ts", "submit_ts"):
        known = [b[key] for b in bodies if key in b]
        assert getattr(job, key) == (min(known) if known else None)
    assert set(job.nodes) == {n for b in bodies for n in b.get("nodes", [])}
    assert len(job.nodes) == len(set(job.nodes))


# ---------------------------------------------------------------- reads

def test_ended_jobs_bounds_and_user_history(st_: Store) -> None:
    for i, (user, end_ts, state) in enumerate([("ann", 10.0, "COMPLETED"),
                                               ("ann", 20.0, "FAILED"),
                                               ("ann", 30.0, None),
                                               ("bob", 15.0, "TIMEOUT"),
                                               ("ann", 40.0, "COMPLETED")]):
        st_.write_messages([start(str(i), user=user, start_ts=end_ts - 5),
                            end(str(i), end_ts=end_ts, state=state)])
    assert [j.job_id for j in st_.ended_jobs()] == ["0", "3", "1", "2", "4"]
    assert [j.job_id for j in st_.ended_jobs(since_ts=15.0, until_ts=30.0)] == ["3", "1"]
    assert [j.job_id for j in st_.ended_jobs(until_ts=15.0)] == ["0"]
    assert st_.user_history("ann", 10.0) == (0, 0, None)  # ended AT t is not before t
    assert st_.user_history("ann", 10.5) == (1, 0, False)
    assert st_.user_history("ann", 35.0) == (2, 1, True)  # job 2 has no label yet
    assert st_.user_history("ann", 1e9) == (3, 1, False)
    assert st_.user_history("carl", 1e9) == (0, 0, None)
    counts = st_.counts()
    assert (counts["jobs"], counts["labelled"], counts["failed"],
            counts["awaiting_final_state"], counts["running"]) == (5, 4, 2, 1, 0)


def test_predictions_latest_per_job(st_: Store) -> None:
    factors = [{"name": "mem", "value": 0.9, "normal": 0.4, "ratio": 2.2, "text": "memory"}]
    parts = {"gnn": 0.8, "lstm": None, "autoencoder": 0.5}
    st_.write_messages([msg("prediction", {"job_id": "1", "ts": 10.0, "risk": 0.2,
                                           "level": "low", "parts": parts, "factors": []})])
    newer = msg("prediction", {"job_id": "1", "ts": 20.0, "risk": 0.7, "level": "high",
                               "parts": parts, "factors": factors, "model_version": "m3"})
    assert st_.add_predictions([newer.body,
                                {"job_id": "2", "ts": 15.0, "risk": 0.1, "level": "low"}]) == 2
    latest = st_.latest_predictions()
    assert set(latest) == {"1", "2"}
    p = latest["1"]
    assert (p.ts, p.risk, p.level, p.parts, p.factors, p.model_version) == (
        20.0, 0.7, "high", parts, factors, "m3")
    assert latest["2"].parts == {} and latest["2"].factors == []
    assert set(st_.latest_predictions(["2", "404"])) == {"2"}
    with pytest.raises(ValueError, match="ts"):
        st_.add_predictions([{"job_id": "3", "risk": 0.1, "level": "low"}])


def test_model_runs(st_: Store) -> None:
    a = st_.add_model_run("train", {"jobs": 100, "seed": 0}, {"auc": 0.9}, ts=5.0)
    b = st_.add_model_run("eval", {}, {"f1": 0.8}, ts=6.0)
    runs = st_.model_runs()
    assert [(r.id, r.kind, r.metadata, r.metrics) for r in runs] == [
        (a, "train", {"jobs": 100, "seed": 0}, {"auc": 0.9}), (b, "eval", {}, {"f1": 0.8})]
    assert [r.id for r in st_.model_runs("eval")] == [b]


def test_prune_batches_forgets_only_old_ids(st_: Store, db: Path) -> None:
    st_.write_batch("n1", 1, [])
    conn = sqlite3.connect(db)
    conn.execute("UPDATE batches SET received_ts = 5.0")
    conn.commit()
    conn.close()
    st_.write_batch("n1", 2, [])
    assert st_.prune_batches(6.0) == 1
    assert st_.write_batch("n1", 1, []) and not st_.write_batch("n1", 2, [])


# ---------------------------------------------------------------- migrations

def _make_v1(path: Path) -> None:
    """A store file exactly as schema v1 wrote it, with some data."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in schema._statements(store_mod.MIGRATIONS[0]):  # the v1 schema as shipped
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO jobs (job_id, user, nodes, start_ts, end_ts, state, label, "
                 "updated_ts) VALUES ('1', 'ann', '[\"n1\"]', 10.0, 20.0, 'FAILED', 1, 21.0)")
    conn.execute("INSERT INTO jobs (job_id, user, start_ts, updated_ts) "
                 "VALUES ('2', 'ann', 30.0, 31.0)")
    conn.execute("INSERT INTO job_samples (job_id, node, ts, mem_bytes) "
                 "VALUES ('1', 'n1', 15.0, 1024)")
    conn.execute("INSERT INTO predictions VALUES ('2', 32.0, 0.5, 'moderate', '{}', '[]', NULL)")
    conn.execute("INSERT INTO batches VALUES ('n1', 1, 21.0)")
    conn.close()


def _indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index' "
                                        "AND name NOT LIKE 'sqlite_%'")}
    conn.close()
    return names


def test_v1_file_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _make_v1(path)
    assert "jobs_user_end" not in _indexes(path)
    with Store(path) as s:
        assert s.get_job("1") is not None and s.get_job("1").nodes == ("n1",)  # type: ignore[union-attr]
        assert s.job_samples(["1"])[0][:3] == ("1", "n1", 15.0)
        assert s.user_history("ann", 25.0) == (1, 1, True)
        assert [j.job_id for j in s.running_jobs()] == ["2"]
        assert s.latest_predictions()["2"].level == "moderate"
        assert not s.write_batch("n1", 1, [sample("1", 16.0)])  # dedup ids survive too
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()
    conn.close()
    assert {"jobs_running", "jobs_ended", "jobs_user_end", "predictions_job_ts",
            "batches_received"} <= _indexes(path)


def test_readonly_never_migrates(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _make_v1(path)
    with pytest.raises(SchemaVersionError, match=rf"v1\.db.*v1 is older.*\(v{schema_version()}\)"):
        Store(path, readonly=True)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_failed_migration_leaves_file_untouched(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    _make_v1(path)
    broken = "CREATE TABLE half_done (x); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(schema, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    with pytest.raises(StoreError, match=rf"migration to schema v{schema_version()} failed, "
                                         "file left at v1"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2
    assert not {"half_done", "jobs_user_end"} & {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_function_migration_runs_in_the_same_transaction(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A function migration's writes commit with the version bump, or not at all."""
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.write_batch("n1", 1, [start("1")])

    def add_column(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE jobs ADD COLUMN note TEXT")
        conn.execute("UPDATE jobs SET note = 'x'")

    def add_index_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE INDEX jobs_note ON jobs (note)")
        raise ValueError("half-way")

    released = list(store_mod.MIGRATIONS)
    monkeypatch.setattr(schema, "MIGRATIONS", [*released, add_column, add_index_then_fail])
    with pytest.raises(StoreError, match="half-way"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(released)
    assert "note" not in {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_note'").fetchone()[0] == 0
    conn.close()

    monkeypatch.setattr(schema, "MIGRATIONS", [*released, add_column])
    with Store(path) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()
        assert s._conn.execute("SELECT job_id, note FROM jobs").fetchall() == [("1", "x")]


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_is_refused_by_name(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema_version() + 5}")
    conn.close()
    with pytest.raises(SchemaVersionError,
                       match=rf"future\.db: store schema v{schema_version() + 5} is newer "
                             rf"than this nomade knows \(v{schema_version()}\)"):
        Store(path, readonly=readonly)


def test_statement_splitter_keeps_semicolons_in_literals() -> None:
    script = "CREATE TABLE t (x TEXT DEFAULT 'a;b');\nINSERT INTO t VALUES ('c;d');\n"
    assert list(schema._statements(script)) == [
        "CREATE TABLE t (x TEXT DEFAULT 'a;b');", "\nINSERT INTO t VALUES ('c;d');"]
    with pytest.raises(ValueError, match="incomplete"):
        list(schema._statements("CREATE TABLE t (x TEXT DEFAULT 'a;b)"))


# ---------------------------------------------------------------- concurrency

_WRITER = textwrap.dedent("""
    import sys
    from nomade.store import Store
    from nomade.wire import make

    path, batches, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Store(path) as s:
        print("ready", flush=True)
        for seq in range(batches):
            job = str(seq)
            msgs = [make("job.start", "n1", seq, {"job_id": job, "start_ts": float(seq)})]
            msgs += [make("job.sample", "n1", seq, {"job_id": job, "node": "n1",
                                                     "ts": float(i), "mem_bytes": i})
                     for i in range(per)]
            assert s.write_batch("n1", seq, msgs)
            if seq % 10 == 9:
                s.write_messages([make("job.end", "n1", 0,
                                       {"job_id": str(seq - 9), "end_ts": float(seq)})])
    print("done", flush=True)
""")


def _read_while_writing(path: Path, writer: subprocess.Popen[str],
                        per: int) -> list[tuple[int, int, int]]:
    """Poll the store read-only until the writer exits (plus one last read after it)."""
    seen: list[tuple[int, int, int]] = []
    with Store(path, readonly=True, busy_timeout_s=5.0) as reader:
        finished = False
        while not finished:
            finished = writer.poll() is not None
            c = reader.counts()
            some = reader.job_samples([j.job_id for j in reader.running_jobs()[:3]])
            seen.append((c["job_samples"], c["jobs"], c["batches"]))
            assert len(some) % per == 0  # a batch is seen whole or not at all
            assert c["job_samples"] == per * c["batches"]
    return seen


def test_reader_process_queries_while_writer_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    Store(path).close()
    batches, per = 200, 100
    with subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(batches), str(per)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "error"}) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            seen = _read_while_writing(path, writer, per)
        finally:
            if writer.poll() is None:
                writer.kill()
            out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert err == "" and out == "done\n"
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)  # counts only grow
    assert [s[1] for s in seen] == sorted(s[1] for s in seen)
    assert seen[-1] == (batches * per, batches, batches)
    assert len({s[0] for s in seen}) > 2  # the reader really ran during the writes


def test_long_reader_snapshot_does_not_block_writer(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Store(path).close()
    reader = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                             isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM job_samples").fetchone()[0] == 0
    result = subprocess.run([sys.executable, "-c", _WRITER, str(path), "20", "50"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert reader.execute("SELECT count(*) FROM job_samples").fetchone()[0] == 0  # snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM job_samples").fetchone()[0] == 1000
    reader.close()


_NOBODY = 65534
_COUNT_JOBS = ("import sys; from nomade.store import Store; "
               "print(Store(sys.argv[1], readonly=True).counts()['jobs'])")


def _python_for_nobody(tmp: Path) -> str:
    """A Python interpreter that user nobody may run (the venv may sit under /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run([python, "-c", "import sqlite3"], user=_NOBODY, cwd=tmp,
                                capture_output=True, timeout=60).returncode == 0
        except OSError:
            ok = False
        if ok:
            return python
    pytest.skip("no Python interpreter that user nobody may run")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a reader as another user")
def test_other_user_reads_without_write_access_to_the_directory() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nomade-test-store-", dir="/var/tmp"))
    try:
        tmp.chmod(0o755)
        path = tmp / "nomade.db"
        python = _python_for_nobody(tmp)
        env = {"PYTHONPATH": str(Path(store_mod.__file__).resolve().parents[2])}
        read = [python, "-c", _COUNT_JOBS, str(path)]
        with Store(path) as agent:
            agent.write_messages([start("1", start_ts=1.0), start("2", start_ts=2.0)])
            assert path.stat().st_mode & 0o777 == 0o600   # every user's jobs: private
            refused = subprocess.run(read, user=_NOBODY, env=env, capture_output=True,
                                     text=True, timeout=60, check=False)
            assert refused.returncode != 0 and "2\n" != refused.stdout
            for p in tmp.iterdir():      # an admin shares it on purpose (the agent's next open undoes it)
                p.chmod(0o644)
            while_open = subprocess.run(read, user=_NOBODY, env=env, capture_output=True,
                                        text=True, timeout=60)
        assert not Path(f"{path}-wal").exists()  # a clean close removes -wal and -shm
        after_close = subprocess.run(read, user=_NOBODY, env=env, capture_output=True,
                                     text=True, timeout=60)
        assert (while_open.returncode, while_open.stdout) == (0, "2\n"), while_open.stderr
        assert (after_close.returncode, after_close.stdout) == (0, "2\n"), after_close.stderr
        assert sorted(p.name for p in tmp.iterdir()) == ["nomade.db"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_new_store_is_private_and_an_old_one_is_made_so(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nomade.db"
    Store(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o750
    path.chmod(0o644)
    Store(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(StoreError, match="cannot open"):
        Store(link)
    assert not (tmp_path / "elsewhere.db").exists()
