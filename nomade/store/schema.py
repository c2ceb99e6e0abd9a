"""The store's schema: ``MIGRATIONS[i]`` takes a file from version ``i`` to ``i + 1``.

The version is kept in ``PRAGMA user_version``. Never edit a released migration: append a
new one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

_V1 = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, cluster TEXT, user TEXT, uid INTEGER, account TEXT,
    partition TEXT, nodes TEXT NOT NULL DEFAULT '[]', num_nodes INTEGER,
    req_cpus INTEGER, req_mem_bytes INTEGER, req_gpus INTEGER, time_limit_s REAL,
    submit_ts REAL, start_ts REAL, end_ts REAL, exit_code INTEGER, signal INTEGER,
    state TEXT, label INTEGER CHECK (label IN (0, 1)), state_source TEXT,
    updated_ts REAL NOT NULL);
CREATE TABLE job_samples (
    job_id TEXT NOT NULL, node TEXT, ts REAL NOT NULL, alloc_cpus REAL,
    cpu_user_s REAL, cpu_system_s REAL, mem_bytes INTEGER, mem_peak_bytes INTEGER,
    mem_limit_bytes INTEGER, mem_limit_hits INTEGER, oom_kills INTEGER,
    page_faults INTEGER, major_faults INTEGER, swap_bytes INTEGER, read_bytes INTEGER,
    write_bytes INTEGER, nfs_write_bytes INTEGER, nprocs INTEGER, nthreads INTEGER,
    io_pressure REAL, mem_pressure REAL);
CREATE INDEX job_samples_job_ts ON job_samples (job_id, ts);
CREATE TABLE node_samples (
    node TEXT NOT NULL, ts REAL NOT NULL, cpu_pct REAL, iowait_pct REAL,
    mem_used_bytes INTEGER, mem_total_bytes INTEGER, swap_used_bytes INTEGER, load1 REAL,
    disk_read_Bps REAL, disk_write_Bps REAL, net_rx_Bps REAL, net_tx_Bps REAL);
CREATE INDEX node_samples_node_ts ON node_samples (node, ts);
CREATE TABLE predictions (
    job_id TEXT NOT NULL, ts REAL NOT NULL, risk REAL NOT NULL, level TEXT NOT NULL,
    parts TEXT NOT NULL, factors TEXT NOT NULL, model_version TEXT);
CREATE TABLE model_runs (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL,
    metadata TEXT NOT NULL, metrics TEXT NOT NULL);
CREATE TABLE batches (
    sender TEXT NOT NULL, seq INTEGER NOT NULL, received_ts REAL NOT NULL,
    PRIMARY KEY (sender, seq)) WITHOUT ROWID;
"""

# v2: indexes for the read paths that v1 scanned whole tables for: the scoring tick
# (running jobs, latest prediction, user history), the final-state poller, training
# (ended jobs by time) and pruning of old batch ids.
_V2 = """
CREATE INDEX jobs_running ON jobs (start_ts) WHERE end_ts IS NULL;
CREATE INDEX jobs_ended ON jobs (end_ts) WHERE end_ts IS NOT NULL;
CREATE INDEX jobs_user_end ON jobs (user, end_ts);
CREATE INDEX predictions_job_ts ON predictions (job_id, ts);
CREATE INDEX batches_received ON batches (received_ts);
"""

# v3: job samples indexed by time, not (job_id, ts): samples arrive in time order, so the
# index grows only at its end. A job's samples are found from the time of its first one
# (``job_sample_first``, one row a job) onwards.
_V3 = """
CREATE TABLE job_sample_first (job_id TEXT PRIMARY KEY, first_ts REAL NOT NULL) WITHOUT ROWID;
INSERT INTO job_sample_first SELECT job_id, min(ts) FROM job_samples GROUP BY job_id;
CREATE INDEX job_samples_ts ON job_samples (ts);
DROP INDEX job_samples_job_ts;
"""

# v4: no index on job samples at all (an index costs every insert). Rowids only grow, in
# the order rows were stored, so a job's samples are the rows from its first one on
# (``job_sample_start``: its rowid), and samples since a time t are in the rows from the
# first span whose newest sample is >= t (``job_sample_spans``: consecutive rowid ranges of
# about SPAN_ROWS rows, each with the newest ts in it): both are lower bounds of a rowid
# range scan (retention and VACUUM: the module docstring).
_V4 = """
CREATE TABLE job_sample_start (job_id TEXT PRIMARY KEY, first_rowid INTEGER NOT NULL)
    WITHOUT ROWID;
INSERT INTO job_sample_start SELECT job_id, min(rowid) FROM job_samples GROUP BY job_id;
CREATE TABLE job_sample_spans (first_rowid INTEGER PRIMARY KEY, max_ts REAL NOT NULL);
INSERT INTO job_sample_spans SELECT min(rowid), max(ts) FROM job_samples GROUP BY rowid / 4096;
CREATE INDEX job_sample_spans_ts ON job_sample_spans (max_ts);
DROP TABLE job_sample_first;
DROP INDEX job_samples_ts;
"""

# v5: retention (``Store.prune``). ``retention`` holds the cursors (rowids) of the sweeps
# over job samples; ``job_sample_thin`` the thinning sweep's state per (job, node): the
# first sample's ts, the ts before the pending row, and the pending row (the newest row
# the sweep saw, kept until a newer one shows it was not the last).
_V5 = """
CREATE TABLE retention (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE job_sample_thin (
    job_id TEXT NOT NULL, node TEXT NOT NULL, first_ts REAL NOT NULL, prev_ts REAL,
    pend_rowid INTEGER NOT NULL, pend_ts REAL NOT NULL, PRIMARY KEY (job_id, node))
    WITHOUT ROWID;
"""

# v6: how full the fullest filesystem a job writes to is (``fs_used_pct``, percent).
_V6 = """
ALTER TABLE job_samples ADD COLUMN fs_used_pct REAL;
"""

Migration = str | Callable[[sqlite3.Connection], None]

#: ``MIGRATIONS[i]`` takes the schema from version i to i + 1: an SQL script or a function.
MIGRATIONS: list[Migration] = [_V1, _V2, _V3, _V4, _V5, _V6]


def schema_version() -> int:
    """The schema version this code reads and writes."""
    return len(MIGRATIONS)


def _statements(script: str) -> Iterator[str]:
    """Split an SQL script into complete statements (semicolons in literals are kept)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                yield pending
            pending = ""
    if pending.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:80]!r}")


def _apply(conn: sqlite3.Connection, migration: Migration) -> None:
    """Run one migration inside the caller's transaction (never ``executescript``: it commits)."""
    if callable(migration):
        migration(conn)
        return
    for statement in _statements(migration):
        conn.execute(statement)

