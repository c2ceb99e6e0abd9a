"""The store: one SQLite file in WAL mode that holds jobs, samples, predictions and model runs.

One process writes (the agent); any number read at the same time (``nomade`` commands,
training), each through its own ``Store``. A ``Store`` wraps one connection: use it from
one thread.

Writes take wire messages that ``nomade.wire`` has already validated; only the attribute
contract is used (``kind``, ``sender``, ``seq``, ``ts``, ``body``). ``write_batch`` is
idempotent by (sender, seq) and commits before it returns, so the agent can ack after it.
A message the store cannot keep (unknown kind, no job id) raises ``ValueError`` before
anything of the call is written.

The schema carries its version in ``PRAGMA user_version``. ``MIGRATIONS[i]`` takes a file
from version ``i`` to ``i + 1``; opening an older file read-write applies the missing ones
in one transaction. Never edit a released migration: append a new one.

Retention (``prune``) deletes job sample rows. The v4 bounds (see ``_V4``) stay exact
because prune never deletes the row with the largest rowid, so a new row still gets a
rowid above every row ever stored, and a deleted row only loosens a lower bound. A plain
``VACUUM`` renumbers rowids once there are gaps (SQLite 3.40 does) and would break the
bounds: never run it on a pruned store. Freed pages are reused by new rows, so a pruned
store stops growing at its steady-state size instead of shrinking.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from nomade import states
from nomade.errors import NomadeError


class StoreError(NomadeError):
    """The store file cannot be opened, migrated or written; the message names the file."""


class SchemaVersionError(StoreError):
    """The file's schema version is not the one this code reads."""


class MessageLike(Protocol):
    """What the store reads of a ``nomade.wire.Message``."""

    @property
    def kind(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def body(self) -> Mapping[str, Any]: ...


JOB_FIELDS: tuple[str, ...] = (
    "job_id", "cluster", "user", "uid", "account", "partition", "nodes", "num_nodes",
    "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts",
    "end_ts", "exit_code", "signal", "state", "label", "state_source", "updated_ts")

#: Column order of the tuples ``job_samples`` returns (the ``job.sample`` body).
JOB_SAMPLE_FIELDS: tuple[str, ...] = (
    "job_id", "node", "ts", "alloc_cpus", "cpu_user_s", "cpu_system_s", "mem_bytes",
    "mem_peak_bytes", "mem_limit_bytes", "mem_limit_hits", "oom_kills", "page_faults",
    "major_faults", "swap_bytes", "read_bytes", "write_bytes", "nfs_write_bytes",
    "nprocs", "nthreads", "io_pressure", "mem_pressure", "fs_used_pct")

#: Column order of the tuples ``node_samples`` returns (the ``node.sample`` body).
NODE_SAMPLE_FIELDS: tuple[str, ...] = (
    "node", "ts", "cpu_pct", "iowait_pct", "mem_used_bytes", "mem_total_bytes",
    "swap_used_bytes", "load1", "disk_read_Bps", "disk_write_Bps", "net_rx_Bps", "net_tx_Bps")

_PREDICTION_FIELDS = ("job_id", "ts", "risk", "level", "parts", "factors", "model_version")

# job.start fields that the first message that knows them fills in.
_START_FILL = ("cluster", "user", "uid", "account", "partition", "num_nodes", "req_cpus",
               "req_mem_bytes", "req_gpus", "time_limit_s")


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``: what was requested, when it ran, how it ended (None = unknown)."""

    job_id: str
    cluster: str | None
    user: str | None
    uid: int | None
    account: str | None
    partition: str | None
    nodes: tuple[str, ...]
    num_nodes: int | None
    req_cpus: int | None
    req_mem_bytes: int | None
    req_gpus: int | None
    time_limit_s: float | None
    submit_ts: float | None
    start_ts: float | None
    end_ts: float | None
    exit_code: int | None
    signal: int | None
    state: str | None
    label: int | None
    state_source: str | None
    updated_ts: float


@dataclass(frozen=True)
class Prediction:
    """One stored prediction for a job at time ``ts``."""

    job_id: str
    ts: float
    risk: float
    level: str
    parts: dict[str, Any]
    factors: list[Any]
    model_version: str | None


@dataclass(frozen=True)
class ModelRun:
    """One training or evaluation run, with its metadata and metrics (JSON objects)."""

    id: int
    ts: float
    kind: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]


class UserHistory(NamedTuple):
    """A user's labelled jobs that ended before a time; ``last_failed`` None if none."""

    n_ended: int
    n_failed: int
    last_failed: bool | None


# ---------------------------------------------------------------- schema and migrations

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


# ---------------------------------------------------------------- turning messages into rows

def _min(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional numbers (None = unknown)."""
    if a is None:
        return b
    return a if b is None or a <= b else b


_GET_JOB_SAMPLE = itemgetter(*JOB_SAMPLE_FIELDS)
_GET_JOB_ID, _GET_TS = itemgetter(0), itemgetter(2)
_GET_NODE_SAMPLE = itemgetter(*NODE_SAMPLE_FIELDS)


def _sample_row(msg: MessageLike, fields: tuple[str, ...], get: itemgetter[Any],
                ts_at: int) -> tuple[Any, ...]:
    """The row of a job/node sample in ``fields`` order (absent keys are None); ts falls
    back to the envelope's."""
    try:
        row: tuple[Any, ...] = get(msg.body)  # every key present: the common case, and the fast one
    except KeyError:
        row = tuple(map(msg.body.get, fields))
    if row[0] is None:
        raise ValueError(f"{msg.kind} from {msg.sender} seq {msg.seq} has no {fields[0]}")
    if row[ts_at] is None:
        row = row[:ts_at] + (msg.ts,) + row[ts_at + 1:]
    return row


def _prediction_row(p: Mapping[str, Any], default_ts: float | None = None) -> tuple[Any, ...]:
    """The ``predictions`` row of a prediction body (parts and factors as JSON text)."""
    missing = [k for k in ("job_id", "risk", "level") if p.get(k) is None]
    ts = default_ts if p.get("ts") is None else p["ts"]
    if missing or ts is None:
        raise ValueError(f"prediction lacks {', '.join(missing or ['ts'])}: {dict(p)!r:.200}")
    try:
        factors = p.get("factors")   # most predictions have none: skip the encoder (tick budget)
        parts, factors = json.dumps(p.get("parts") or {}), json.dumps(factors) if factors else "[]"
    except (TypeError, ValueError) as e:
        raise ValueError(f"prediction for job {p['job_id']}: parts/factors not JSON: {e}") from None
    return (str(p["job_id"]), ts, p["risk"], p["level"], parts, factors, p.get("model_version"))


@dataclass
class _Rows:
    """Rows of one or more message lists, grouped per table, checked before any write."""

    job_samples: list[tuple[Any, ...]] = field(default_factory=list)
    node_samples: list[tuple[Any, ...]] = field(default_factory=list)
    predictions: list[tuple[Any, ...]] = field(default_factory=list)
    job_events: list[tuple[str, Mapping[str, Any], float]] = field(default_factory=list)

    @classmethod
    def of(cls, messages: Iterable[MessageLike],
           job_sample_rows: list[tuple[Any, ...]] | None = None) -> _Rows:
        """Group ``messages`` by kind; ``ValueError`` names the first one the store cannot
        keep. With ``job_sample_rows`` (the job samples' rows, already in column order) the
        ``job.sample`` messages are skipped."""
        rows = cls()
        if job_sample_rows is not None:
            rows.job_samples = job_sample_rows
        for msg in messages:
            kind = msg.kind
            if kind == "job.sample":
                if job_sample_rows is None:
                    rows.job_samples.append(_sample_row(msg, JOB_SAMPLE_FIELDS, _GET_JOB_SAMPLE, 2))
            elif kind == "node.sample":
                rows.node_samples.append(_sample_row(msg, NODE_SAMPLE_FIELDS, _GET_NODE_SAMPLE, 1))
            elif kind in ("job.start", "job.end"):
                if msg.body.get("job_id") is None:
                    raise ValueError(f"{kind} from {msg.sender} seq {msg.seq} has no job_id")
                rows.job_events.append((kind, msg.body, msg.ts))
            elif kind == "prediction":
                rows.predictions.append(_prediction_row(msg.body, msg.ts))
            else:
                raise ValueError(f"the store keeps no {kind!r} message "
                                 f"(from {msg.sender} seq {msg.seq})")
        return rows

    def extend(self, other: _Rows) -> None:
        """Append ``other``'s rows to these."""
        self.job_samples += other.job_samples
        self.node_samples += other.node_samples
        self.predictions += other.predictions
        self.job_events += other.job_events


def _blank_job(job_id: str) -> dict[str, Any]:
    """A jobs row that knows nothing but its id."""
    job: dict[str, Any] = dict.fromkeys(JOB_FIELDS)
    job.update(job_id=job_id, nodes=())
    return job


def _merge_start(job: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """job.start: fill unknown fields, keep the earliest submit/start, union the nodes."""
    new = dict(job)
    for f in _START_FILL:
        if new[f] is None and body.get(f) is not None:
            new[f] = body[f]
    new["submit_ts"] = _min(new["submit_ts"], body.get("submit_ts"))
    new["start_ts"] = _min(new["start_ts"], body.get("start_ts"))
    new["nodes"] = tuple(dict.fromkeys((*new["nodes"], *(body.get("nodes") or ()))))
    return new


def _merge_end(job: dict[str, Any], body: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """job.end: keep the earliest end; a final state (first one wins) sets state and label."""
    new = dict(job)
    end_ts = body.get("end_ts")
    new["end_ts"] = _min(new["end_ts"], ts if end_ts is None else end_ts)
    state = states.normalise(body.get("state"))
    if new["state"] is None and states.is_final(state):
        new.update(state=state, label=states.label_for(state), state_source=body.get("source"))
        for f in ("exit_code", "signal"):
            if body.get(f) is not None:
                new[f] = body[f]
    for f in ("exit_code", "signal"):
        if new[f] is None and body.get(f) is not None:
            new[f] = body[f]
    return new


_NODES_AT = JOB_FIELDS.index("nodes")
_UPDATED_AT = JOB_FIELDS.index("updated_ts")


def _job_of(row: Sequence[Any]) -> Job:
    """A ``Job`` from a ``SELECT`` of ``JOB_FIELDS``."""
    values = list(row)
    values[_NODES_AT] = tuple(json.loads(values[_NODES_AT]))
    return Job(*values)


def _job_row(job: Mapping[str, Any], now: float) -> list[Any]:
    """The parameters of ``_UPSERT_JOB`` for a merged job dict."""
    row = [job[f] for f in JOB_FIELDS]
    row[_NODES_AT] = json.dumps(list(job["nodes"]))
    row[_UPDATED_AT] = now
    return row


_JOB_COLS = ", ".join(JOB_FIELDS)
_UPSERT_JOB = (f"INSERT INTO jobs ({_JOB_COLS}) VALUES ({', '.join('?' * len(JOB_FIELDS))}) "
               "ON CONFLICT (job_id) DO UPDATE SET "
               + ", ".join(f"{f} = excluded.{f}" for f in JOB_FIELDS[1:]))
_INSERT_JOB_SAMPLE = (f"INSERT INTO job_samples ({', '.join(JOB_SAMPLE_FIELDS)}) "
                      f"VALUES ({', '.join('?' * len(JOB_SAMPLE_FIELDS))})")
#: Rows of job samples in one span of ``job_sample_spans`` (a read since a time scans at
#: most about this many rows before the first one it needs).
SPAN_ROWS = 4096
#: Jobs a writing Store remembers having recorded in ``job_sample_start`` (~100 B each).
_STARTS_CACHED = 200_000
_INSERT_NODE_SAMPLE = (f"INSERT INTO node_samples ({', '.join(NODE_SAMPLE_FIELDS)}) "
                       f"VALUES ({', '.join('?' * len(NODE_SAMPLE_FIELDS))})")
_INSERT_PREDICTION = (f"INSERT INTO predictions ({', '.join(_PREDICTION_FIELDS)}) "
                      f"VALUES ({', '.join('?' * len(_PREDICTION_FIELDS))})")
_IN_JSON = "IN (SELECT value FROM json_each(?))"
# The earliest sample of the jobs in a JSON array: where their samples start in the ts
# index (NULL, so no rows, when none of them has a sample).
_START_OF_JSON = f"(SELECT min(first_rowid) FROM job_sample_start WHERE job_id {_IN_JSON})"
# The first row that may hold a sample with ts >= ?: NULL (no rows) when none does.
_START_SINCE = "(SELECT min(first_rowid) FROM job_sample_spans WHERE max_ts >= ?)"


def _where(*conditions: tuple[str, Any], fixed: str = "") -> tuple[str, list[Any]]:
    """``WHERE`` text and parameters from ``fixed`` and (clause with one ?, value) pairs;
    a None value drops its clause (an open bound must not keep SQLite off an index)."""
    used = [(sql, v) for sql, v in conditions if v is not None]
    clauses = ([fixed] if fixed else []) + [sql for sql, _ in used]
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), [v for _, v in used]


def _json_ids(job_ids: Iterable[str] | None) -> str | None:
    """Job ids as the JSON array ``_IN_JSON`` reads (None stays None: all jobs)."""
    return None if job_ids is None else json.dumps([str(j) for j in job_ids])


# ---------------------------------------------------------------- retention

DAY_S = 86_400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """What ``Store.prune`` keeps (see ``[storage]`` in ``nomade.config``), in seconds.

    Ended jobs younger than ``full_samples_s`` keep every sample; older ones keep at most
    ``thin_samples_to`` per (job, node), the first row at or after each point of an even
    time grid from the first sample to the job's end, plus the first and the last;
    after ``sample_retention_s`` their samples go (the job row stays). Node samples and
    predictions older than their retention go. ``ValueError`` for an inconsistent policy.
    """

    full_samples_s: float = 14 * DAY_S
    thin_samples_to: int = 240
    sample_retention_s: float = 365 * DAY_S
    node_sample_retention_s: float = 30 * DAY_S
    prediction_retention_s: float = 180 * DAY_S

    def __post_init__(self) -> None:
        if self.thin_samples_to < 2:
            raise ValueError(f"thin_samples_to = {self.thin_samples_to}: expected >= 2 "
                             "(the first and the last sample)")
        if not 0 < self.full_samples_s <= self.sample_retention_s:
            raise ValueError("expected 0 < full_samples_s <= sample_retention_s")
        if min(self.node_sample_retention_s, self.prediction_retention_s) <= 0:
            raise ValueError("retention periods must be > 0")

    @classmethod
    def from_config(cls, storage: Any) -> RetentionPolicy:
        """The policy of a ``[storage]`` table (``nomade.config.StorageConfig``)."""
        return cls(full_samples_s=storage.full_samples_days * DAY_S,
                   thin_samples_to=storage.thin_samples_to,
                   sample_retention_s=storage.sample_retention_days * DAY_S,
                   node_sample_retention_s=storage.node_sample_retention_days * DAY_S,
                   prediction_retention_s=storage.prediction_retention_days * DAY_S)


@dataclass
class PruneCounts:
    """Rows one ``Store.prune`` removed (or, dry run, would remove) per step; ``done`` is
    False when ``max_rows`` stopped it with work left."""

    job_samples_thinned: int = 0
    job_samples_dropped: int = 0
    node_samples: int = 0
    predictions: int = 0
    transactions: int = 0
    done: bool = True

    def total(self) -> int:
        """Rows removed in all."""
        return (self.job_samples_thinned + self.job_samples_dropped + self.node_samples
                + self.predictions)


#: Thinning state of one (job, node): [first_ts, prev_ts | None, pend_rowid, pend_ts].
_ThinState = list[Any]


def _grid_hit(first: float, end: float, keep: int, prev: float, ts: float) -> bool:
    """Whether a grid point first + k·step (k = 0 … keep − 2, step = (end − first) /
    (keep − 1)) lies in (prev, ts]: each point keeps the first row at or after it."""
    step = (end - first) / (keep - 1)
    if step <= 0 or ts < first:
        return False
    k = min(keep - 2, math.floor((ts - first) / step))
    return first + k * step > prev


def _thin_rows(rows: Iterable[tuple[int, str, str | None, float]], ends: Mapping[str, float],
               state: dict[tuple[str, str], _ThinState], keep: int
               ) -> tuple[list[int], set[tuple[str, str]]]:
    """Decide a chunk of (rowid, job_id, node, ts) rows in rowid order: the rowids to
    delete and the (job, node) keys whose ``state`` changed. Only jobs in ``ends`` (job
    id -> end ts) are thinned. A row is decided when the next row of its (job, node)
    arrives, so the newest one (the last, for an ended job) is always kept; the first
    is kept; any other row is kept only if a grid point lies between it and the row
    before. At most ``keep`` rows of a (job, node) remain, and running it again over
    what remains deletes nothing."""
    deleted: list[int] = []
    touched: set[tuple[str, str]] = set()
    for rowid, job_id, node, ts in rows:
        end = ends.get(job_id)
        if end is None:
            continue
        key = (job_id, node or "")
        touched.add(key)
        st = state.get(key)
        if st is None:
            state[key] = [ts, None, rowid, ts]
            continue
        first, prev, pend_rowid, pend_ts = st
        if prev is not None and not _grid_hit(first, end, keep, prev, pend_ts):
            deleted.append(pend_rowid)
        st[1], st[2], st[3] = pend_ts, rowid, ts
    return deleted, touched


def _cursor(conn: sqlite3.Connection, name: str) -> int:
    """A sweep's cursor: the first rowid it has not looked at (0 at first)."""
    row = conn.execute("SELECT value FROM retention WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_cursor(conn: sqlite3.Connection, name: str, value: int) -> None:
    conn.execute("INSERT INTO retention VALUES (?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))


def _last_rowid(conn: sqlite3.Connection) -> int:
    """The largest job sample rowid (0 when empty): prune never deletes that row."""
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM job_samples").fetchone()[0])


def _older_than(conn: sqlite3.Connection, cursor: int, ts: float) -> int:
    """A rowid below which every job sample from ``cursor`` on has ts < ``ts``: the first
    span (from the one holding ``cursor``) whose newest sample is not older."""
    row = conn.execute(
        "SELECT first_rowid FROM job_sample_spans WHERE first_rowid >= coalesce("
        "(SELECT max(first_rowid) FROM job_sample_spans WHERE first_rowid <= ?), 0) "
        "AND max_ts >= ? ORDER BY first_rowid LIMIT 1", (cursor, ts)).fetchone()
    return _last_rowid(conn) if row is None else min(int(row[0]), _last_rowid(conn))


def _unsettled(conn: sqlite3.Connection, after: float) -> int:
    """The first sample rowid of a job that ended, or is running and started, after
    ``after``: the thinning sweep stops there (and below the last row). A job running
    for longer does not hold the sweep back (it may be one whose end was lost): the
    sweep passes its rows without touching them, and they stay until dropped."""
    join = "FROM jobs j JOIN job_sample_start s ON s.job_id = j.job_id"
    bounds = [conn.execute(f"SELECT min(s.first_rowid) {join} "
                           "WHERE j.end_ts IS NULL AND j.start_ts >= ?",
                           (after,)).fetchone()[0],
              conn.execute(f"SELECT min(s.first_rowid) {join} WHERE j.end_ts >= ?",
                           (after,)).fetchone()[0],
              _last_rowid(conn)]
    return min(int(b) for b in bounds if b is not None)


# The (at most ``limit``) next rows of a sweep: how many and the last rowid.
_CHUNK = ("SELECT count(*), max(rowid) FROM (SELECT rowid FROM job_samples "
          "WHERE rowid >= ? AND rowid < ? ORDER BY rowid LIMIT ?)")
_OF_JOB_ENDED_BEFORE = ("EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = job_samples.job_id "
                        "AND j.end_ts < ?)")
# Every node in node_samples, one index seek each (a skip scan of (node, ts)).
_NODES = ("WITH RECURSIVE n(node) AS (SELECT min(node) FROM node_samples UNION ALL "
          "SELECT (SELECT min(node) FROM node_samples WHERE node > n.node) FROM n "
          "WHERE n.node IS NOT NULL) SELECT node FROM n WHERE node IS NOT NULL")


class _Budget:
    """Rows a prune may still look at (None: no limit)."""

    def __init__(self, max_rows: int | None) -> None:
        self.left = math.inf if max_rows is None else max_rows

    def chunk(self, batch_rows: int) -> int:
        return int(min(batch_rows, self.left))

    def spend(self, n: int) -> None:
        self.left -= n


# ---------------------------------------------------------------- the store

def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if missing (SQLite gives its -wal and -shm files the same
    mode), or take group and world bits off an existing file of ours. Never follows a
    symlink at ``path``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Store:
    """An open store file. ``readonly`` opens with ``mode=ro`` and never migrates.

    Read-write opening creates the parent directory (0750) and the file (0600: it holds
    every user's jobs; a file with group or world bits is made 0600), switches it to WAL
    with synchronous=FULL (a commit is on disk before it returns, so what the agent acked
    survives a power cut too; one fsync per commit, and ingest commits once a round) and
    migrates an older schema. Raises ``SchemaVersionError`` for a schema
    newer than this code (or, read-only, older), ``StoreError`` for anything else that
    keeps the file from being used.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._started: set[str] = set()   # jobs committed to job_sample_start
        self._conn = self._connect(busy_timeout_s)
        try:
            self._prepare()
        except sqlite3.Error as e:
            self._conn.close()
            raise StoreError(f"{self.path}: {e}") from e
        except BaseException:
            self._conn.close()
            raise

    # -- opening

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Open the connection (autocommit: transactions are explicit)."""
        try:
            if self.readonly:
                return self._connect_readonly(busy_timeout_s)
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            _private_file(self.path)
            return sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{self.path}: cannot open: {e}") from e

    def _connect_readonly(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Open with ``mode=ro``; if that fails because SQLite would have to create the
        ``-shm`` file (a user who may not write the directory, while no writer has the file
        open: a clean close removes ``-wal`` and ``-shm``), read the file as it is
        (``immutable=1``: valid while no writer appears, which then shows as a read error)."""
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no store file there")
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, isolation_level=None,
                               timeout=busy_timeout_s)
        try:
            conn.execute("PRAGMA user_version").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
            if Path(f"{self.path}-wal").exists() or Path(f"{self.path}-shm").exists():
                raise
        return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, isolation_level=None,
                               timeout=busy_timeout_s)

    def _prepare(self) -> None:
        """Set the pragmas and bring the schema to ``schema_version()``."""
        if not self.readonly:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL (journal_mode is {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
            # Fewer, larger checkpoints (WAL up to ~40 MB) and a page cache that holds the
            # hot index pages: together about 1.3x the sample write rate of the defaults.
            self._conn.execute("PRAGMA wal_autocheckpoint = 10000")
            self._conn.execute("PRAGMA cache_size = -32768")
        version = self._version()
        if version == schema_version():
            return
        if version > schema_version():
            raise SchemaVersionError(
                f"{self.path}: store schema v{version} is newer than this nomade knows "
                f"(v{schema_version()}); upgrade nomade")
        if self.readonly:
            raise SchemaVersionError(
                f"{self.path}: store schema v{version} is older than this nomade reads "
                f"(v{schema_version()}); open it read-write once (the agent does) to migrate")
        self._migrate()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Apply the missing migrations in one transaction; the file is unchanged on error."""
        with self._transaction() as conn:
            version = self._version()  # another process may have migrated meanwhile
            if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{self.path}: has tables but no schema version: "
                                 "not a nomade store")
            for target in range(version + 1, schema_version() + 1):
                try:
                    _apply(conn, MIGRATIONS[target - 1])
                except (sqlite3.Error, ValueError) as e:
                    raise StoreError(f"{self.path}: migration to schema v{target} failed, "
                                     f"file left at v{version}: {e}") from e
            conn.execute(f"PRAGMA user_version = {schema_version():d}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: write failed: {e}") from e

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: read failed: {e}") from e

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing

    def write_batch(self, sender: str, seq: int, messages: Iterable[MessageLike]) -> bool:
        """Store one batch in one transaction; False (and nothing written) if already stored."""
        return self.write_batches([(sender, seq, messages)])[0]

    def write_batches(self, batches: Iterable[tuple[str, int, Iterable[MessageLike]]
                                        | tuple[str, int, Iterable[MessageLike],
                                                list[tuple[Any, ...]]]]) -> list[bool]:
        """Store several batches in one transaction; per batch, False if it was a duplicate.

        A batch is ``(sender, seq, messages)``, or ``(sender, seq, messages, job_sample_rows)``
        where ``job_sample_rows`` are the bodies of the batch's ``job.sample`` messages as
        tuples in ``JOB_SAMPLE_FIELDS`` order (``nomade.wire.decode_rows`` gives them; every
        field present, job_id and ts not None): they are inserted as they are and the
        ``job.sample`` messages are not read again. All batches are checked first: a message
        the store cannot keep raises ``ValueError`` and nothing of any batch is written.
        """
        checked = [(b[0], b[1], _Rows.of(b[2], b[3] if len(b) > 3 else None))
                   for b in batches]
        now = time.time()
        fresh: list[bool] = []
        with self._transaction() as conn:
            todo = _Rows()
            for sender, seq, rows in checked:
                cur = conn.execute("INSERT OR IGNORE INTO batches (sender, seq, received_ts) "
                                   "VALUES (?, ?, ?)", (sender, seq, now))
                fresh.append(cur.rowcount == 1)
                if fresh[-1]:
                    todo.extend(rows)
            started = self._write_rows(conn, todo, now)
        self._started_seen(started)
        return fresh

    def write_messages(self, messages: Iterable[MessageLike]) -> None:
        """Store messages without de-duplication (hook events drained from a spool).

        job.start / job.end are idempotent merges, so a re-drained event changes nothing.
        """
        rows = _Rows.of(messages)
        with self._transaction() as conn:
            started = self._write_rows(conn, rows, time.time())
        self._started_seen(started)

    def write_message_chunks(self, chunks: Iterable[Iterable[MessageLike]]) -> None:
        """Store messages given chunk by chunk (as ``write_messages``), all in one
        transaction: an error while the chunks are made or written (a malformed record
        half way through an import) leaves the store as it was."""
        started: set[str] = set()
        with self._transaction() as conn:
            for chunk in chunks:
                started |= self._write_rows(conn, _Rows.of(chunk), time.time())
        self._started_seen(started)

    def _write_rows(self, conn: sqlite3.Connection, rows: _Rows, now: float) -> set[str]:
        """Insert grouped rows, one ``executemany`` per table, and merge job events; the
        jobs recorded in ``job_sample_start`` (for ``_started_seen`` once committed)."""
        started: set[str] = set()
        if rows.job_samples:
            started = self._write_samples(conn, rows.job_samples)
        if rows.node_samples:
            conn.executemany(_INSERT_NODE_SAMPLE, rows.node_samples)
        if rows.predictions:
            conn.executemany(_INSERT_PREDICTION, rows.predictions)
        if rows.job_events:
            self._merge_jobs(conn, rows.job_events, now)
        return started

    def _write_samples(self, conn: sqlite3.Connection, samples: list[tuple[Any, ...]]
                       ) -> set[str]:
        """Append job samples (rowids ``first`` on, in order) and keep ``job_sample_start``
        and ``job_sample_spans`` in step; the jobs whose start was recorded."""
        first = conn.execute("SELECT coalesce(max(rowid), 0) + 1 FROM job_samples").fetchone()[0]
        conn.executemany(_INSERT_JOB_SAMPLE, samples)
        newest = max(map(_GET_TS, samples))
        span = conn.execute("SELECT first_rowid FROM job_sample_spans "
                            "ORDER BY first_rowid DESC LIMIT 1").fetchone()
        if span is not None and first - span[0] < SPAN_ROWS:
            conn.execute("UPDATE job_sample_spans SET max_ts = max(max_ts, ?) "
                         "WHERE first_rowid = ?", (newest, span[0]))
        else:
            conn.execute("INSERT INTO job_sample_spans VALUES (?, ?)", (first, newest))
        ids = list(map(_GET_JOB_ID, samples))
        new = set(ids).difference(self._started)
        if new:   # a job's first row here: its first occurrence (the dict keeps the last)
            rowid_of = dict(zip(reversed(ids), range(first + len(ids) - 1, first - 1, -1)))
            conn.executemany("INSERT OR IGNORE INTO job_sample_start VALUES (?, ?)",
                             [(j, rowid_of[j]) for j in new])
        return new

    def _started_seen(self, started: set[str]) -> None:
        """Remember jobs committed to ``job_sample_start`` (a bounded cache: forgetting one
        only costs an insert that changes nothing)."""
        if len(self._started) + len(started) > _STARTS_CACHED:
            self._started.clear()
        self._started.update(started)

    def _merge_jobs(self, conn: sqlite3.Connection,
                    events: list[tuple[str, Mapping[str, Any], float]], now: float) -> None:
        """Apply job.start / job.end events in order onto the stored rows; write the changed."""
        ids = list(dict.fromkeys(str(body["job_id"]) for _, body, _ in events))
        jobs = {row[0]: dict(zip(JOB_FIELDS, row)) for row in conn.execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE job_id {_IN_JSON}", (json.dumps(ids),))}
        for job in jobs.values():
            job["nodes"] = tuple(json.loads(job["nodes"]))
        changed: dict[str, dict[str, Any]] = {}
        for kind, body, ts in events:
            job_id = str(body["job_id"])
            old = jobs.get(job_id) or _blank_job(job_id)
            new = _merge_start(old, body) if kind == "job.start" else _merge_end(old, body, ts)
            if job_id not in jobs or new != old:
                jobs[job_id] = changed[job_id] = new
        conn.executemany(_UPSERT_JOB, [_job_row(job, now) for job in changed.values()])

    def set_final_state(self, job_id: str, state: str | Sequence[str], exit_code: int | None,
                        source: str) -> None:
        """Record a job's final state and its label (replacing any earlier one).

        ``state`` is any spelling ``states.normalise`` accepts; a state that is not final
        raises ``ValueError``. A job the store has not seen gets a row of its own.
        """
        name = states.normalise(state)
        if name is None or not states.is_final(name):
            raise ValueError(f"job {job_id}: {state!r} is not a final Slurm state")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, state, label, state_source, exit_code, updated_ts) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                "state = excluded.state, label = excluded.label, "
                "state_source = excluded.state_source, "
                "exit_code = coalesce(excluded.exit_code, exit_code), "
                "updated_ts = excluded.updated_ts",
                (str(job_id), name, states.label_for(name), source, exit_code, time.time()))

    def add_predictions(self, predictions: Iterable[Mapping[str, Any]]) -> int:
        """Store predictions (the ``prediction`` body: job_id, ts, risk, level, parts,
        factors, model_version); returns how many. ``ValueError`` if one lacks a field."""
        rows = [_prediction_row(p) for p in predictions]
        with self._transaction() as conn:
            conn.executemany(_INSERT_PREDICTION, rows)
        return len(rows)

    def add_model_run(self, kind: str, metadata: Mapping[str, Any],
                      metrics: Mapping[str, Any], ts: float | None = None) -> int:
        """Record a training/evaluation run; returns its id."""
        row = (time.time() if ts is None else ts, kind, json.dumps(dict(metadata)),
               json.dumps(dict(metrics)))
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO model_runs (ts, kind, metadata, metrics) VALUES (?, ?, ?, ?)", row)
        return int(cur.lastrowid or 0)

    def prune_batches(self, before_ts: float) -> int:
        """Forget batch ids received before ``before_ts`` (keep longer than any outbox
        holds a batch, or a late resend is stored twice); returns how many."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM batches WHERE received_ts < ?",
                                (before_ts,)).rowcount

    # -- retention

    def prune(self, now: float, policy: RetentionPolicy, *, batch_rows: int = 50_000,
              max_rows: int | None = None, dry_run: bool = False) -> PruneCounts:
        """Apply ``policy`` as of ``now``: drop the samples of jobs that ended before
        ``now - sample_retention_s``, thin those of jobs that ended before
        ``now - full_samples_s``, drop old node samples and predictions.

        Works in transactions of at most ``batch_rows`` rows, so a writer waits at most
        one of them; looks at no more than ``max_rows`` rows in all (None: until done;
        ``done`` False in the result when the limit stopped it). Jobs not ended (and
        samples of jobs the store has no row for) are never touched, nor is the newest
        job sample row. Idempotent: the sweeps keep their place in the file, and a second
        call as of the same ``now`` removes nothing. ``dry_run`` counts what would go and
        writes nothing (read transactions only).
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows = {batch_rows}: expected >= 1")
        counts, budget = PruneCounts(), _Budget(max_rows)
        self._drop_job_samples(now - policy.sample_retention_s, batch_rows, budget, dry_run,
                               counts)
        self._thin_job_samples(now, policy, batch_rows, budget, dry_run, counts)
        self._drop_node_samples(now - policy.node_sample_retention_s, batch_rows, budget,
                                dry_run, counts)
        self._drop_predictions(now - policy.prediction_retention_s, batch_rows, budget,
                               dry_run, counts)
        counts.done = budget.left > 0
        return counts

    def _step(self, dry_run: bool) -> Any:
        """One prune transaction: a read snapshot for a dry run, else a write."""
        return self._snapshot() if dry_run else self._transaction()

    def _drop_job_samples(self, before: float, batch_rows: int, budget: _Budget,
                          dry_run: bool, counts: PruneCounts) -> None:
        """Delete the samples of jobs that ended before ``before``, sweeping the rows
        older than it from the ``drop`` cursor on."""
        cursor = hi = 0
        while (limit := budget.chunk(batch_rows)) > 0:
            with self._step(dry_run) as conn:
                if not hi:   # once a call: the bound only grows
                    cursor = _cursor(conn, "drop")
                    hi = _older_than(conn, cursor, before)
                n, last = conn.execute(_CHUNK, (cursor, hi, limit)).fetchone()
                if n == 0:
                    return
                where = f"rowid >= ? AND rowid <= ? AND {_OF_JOB_ENDED_BEFORE}"
                if dry_run:
                    gone = conn.execute(f"SELECT count(*) FROM job_samples WHERE {where}",
                                        (cursor, last, before)).fetchone()[0]
                else:
                    gone = conn.execute(f"DELETE FROM job_samples WHERE {where}",
                                        (cursor, last, before)).rowcount
                    _set_cursor(conn, "drop", last + 1)
            cursor = last + 1
            budget.spend(n)
            counts.job_samples_dropped += gone
            counts.transactions += 1

    def _thin_job_samples(self, now: float, policy: RetentionPolicy, batch_rows: int,
                          budget: _Budget, dry_run: bool, counts: PruneCounts) -> None:
        """Thin the samples of jobs that ended between the two cutoffs, sweeping rows in
        rowid order from the ``thin`` cursor up to the first row of an unsettled job."""
        ended = (now - policy.sample_retention_s, now - policy.full_samples_s)
        cursor = hi = 0
        overlay: dict[tuple[str, str], _ThinState] = {}   # dry run: the state not written
        while (limit := budget.chunk(batch_rows)) > 0:
            with self._step(dry_run) as conn:
                if not hi:   # once a call (a job settling meanwhile waits for the next)
                    cursor, hi = _cursor(conn, "thin"), _unsettled(conn, ended[1])
                rows = conn.execute("SELECT rowid, job_id, node, ts FROM job_samples "
                                    "WHERE rowid >= ? AND rowid < ? ORDER BY rowid LIMIT ?",
                                    (cursor, hi, limit)).fetchall()
                if not rows:
                    return
                ends, state = self._thin_inputs(conn, rows, ended, overlay if dry_run else {})
                deleted, touched = _thin_rows(rows, ends, state, policy.thin_samples_to)
                if not dry_run:
                    self._thin_write(conn, deleted, [(*k, *state[k]) for k in touched],
                                     rows[-1][0] + 1)
            cursor = rows[-1][0] + 1
            budget.spend(len(rows))
            counts.job_samples_thinned += len(deleted)
            counts.transactions += 1

    @staticmethod
    def _thin_inputs(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                     ended: tuple[float, float], state: dict[tuple[str, str], _ThinState]
                     ) -> tuple[dict[str, float], dict[tuple[str, str], _ThinState]]:
        """The end ts of the chunk's jobs that ended in ``ended`` and their thinning
        state (entries already in ``state`` win over the stored ones)."""
        ids = json.dumps(list({r[1] for r in rows}))
        ends = dict(conn.execute(f"SELECT job_id, end_ts FROM jobs WHERE job_id {_IN_JSON} "
                                 "AND end_ts >= ? AND end_ts < ?", (ids, *ended)).fetchall())
        if ends:
            for job_id, node, *st in conn.execute(
                    "SELECT job_id, node, first_ts, prev_ts, pend_rowid, pend_ts "
                    f"FROM job_sample_thin WHERE job_id {_IN_JSON}", (json.dumps(list(ends)),)):
                state.setdefault((job_id, node), st)
        return ends, state

    @staticmethod
    def _thin_write(conn: sqlite3.Connection, deleted: list[int],
                    states: list[tuple[Any, ...]], cursor: int) -> None:
        """Delete the thinned rows, store the changed states, move the cursor on."""
        conn.executemany("DELETE FROM job_samples WHERE rowid = ?", [(r,) for r in deleted])
        conn.executemany("INSERT INTO job_sample_thin VALUES (?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (job_id, node) DO UPDATE SET prev_ts = excluded.prev_ts, "
                         "pend_rowid = excluded.pend_rowid, pend_ts = excluded.pend_ts", states)
        _set_cursor(conn, "thin", cursor)

    def _drop_node_samples(self, before: float, batch_rows: int, budget: _Budget,
                           dry_run: bool, counts: PruneCounts) -> None:
        """Delete node samples older than ``before``, node by node along the index."""
        with self._snapshot() as conn:
            nodes = [r[0] for r in conn.execute(_NODES)]
        select = "SELECT rowid FROM node_samples WHERE node = ? AND ts < ?"
        for node in nodes:
            n = limit = 1
            while n == limit and (limit := budget.chunk(batch_rows)) > 0:
                with self._step(dry_run) as conn:
                    if dry_run:   # nothing goes, so the same rows would come again: count all
                        n = conn.execute(f"SELECT count(*) FROM ({select})",
                                         (node, before)).fetchone()[0]
                        limit = n + 1
                    else:
                        n = conn.execute(f"DELETE FROM node_samples WHERE rowid IN "
                                         f"({select} LIMIT ?)", (node, before, limit)).rowcount
                budget.spend(n)
                counts.node_samples += n
                counts.transactions += 1

    def _drop_predictions(self, before: float, batch_rows: int, budget: _Budget,
                          dry_run: bool, counts: PruneCounts) -> None:
        """Delete predictions from the oldest stored on, up to the first one at or after
        ``before`` (the agent stores them in time order)."""
        n = limit = 1
        while n == limit and (limit := budget.chunk(batch_rows)) > 0:
            with self._step(dry_run) as conn:
                young = conn.execute("SELECT rowid FROM predictions WHERE ts >= ? "
                                     "ORDER BY rowid LIMIT 1", (before,)).fetchone()
                bound = math.inf if young is None else young[0]
                head = "SELECT rowid FROM predictions WHERE rowid < ? ORDER BY rowid"
                if dry_run:
                    n = conn.execute(f"SELECT count(*) FROM ({head})", (bound,)).fetchone()[0]
                    limit = n + 1
                else:
                    n = conn.execute(f"DELETE FROM predictions WHERE rowid IN ({head} LIMIT ?)",
                                     (bound, limit)).rowcount
            budget.spend(n)
            counts.predictions += n
            counts.transactions += 1

    def storage_stats(self) -> dict[str, Any]:
        """For ``nomade db stats``: ``counts()``, ``bytes`` per table with its indexes
        (None where SQLite lacks ``dbstat``), ``file_bytes``, ``free_bytes`` (pages that
        new rows reuse), and the oldest/newest job sample ts (None when empty). Reads
        the whole file."""
        counts = self.counts()
        with self._snapshot() as conn:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            pages, free = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                           for p in ("page_count", "freelist_count"))
            oldest = conn.execute("SELECT ts FROM job_samples ORDER BY rowid LIMIT 1").fetchone()
            newest = conn.execute("SELECT max(max_ts) FROM job_sample_spans").fetchone()
            try:
                sizes: dict[str, int] | None = dict(conn.execute(
                    "SELECT m.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_master m "
                    "ON m.name = d.name GROUP BY m.tbl_name").fetchall())
            except sqlite3.OperationalError:
                sizes = None
        return {"counts": counts, "bytes": sizes, "file_bytes": page * pages,
                "free_bytes": page * free, "oldest_sample_ts": oldest and oldest[0],
                "newest_sample_ts": newest[0] if counts["job_samples"] else None}

    # -- reading

    def _jobs(self, where: str, params: Sequence[Any] = (), order: str = "job_id",
              limit: int | None = None) -> list[Job]:
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        with self._snapshot() as conn:
            rows = conn.execute(f"SELECT {_JOB_COLS} FROM jobs {where} ORDER BY {order}{tail}",
                                params).fetchall()
        return [_job_of(r) for r in rows]

    def get_job(self, job_id: str) -> Job | None:
        """The job's row, or None if the store has never heard of it."""
        found = self._jobs("WHERE job_id = ?", (str(job_id),))
        return found[0] if found else None

    def running_jobs(self) -> list[Job]:
        """Jobs that have started and not ended, oldest start first."""
        return self._jobs("WHERE end_ts IS NULL AND start_ts IS NOT NULL",
                          order="start_ts, job_id")

    def jobs_awaiting_final_state(self, since_ts: float | None = None,
                                  limit: int | None = None) -> list[Job]:
        """Ended jobs (at or after ``since_ts`` when given) whose final state is not known
        yet, earliest end first, at most ``limit``."""
        where, params = _where(("end_ts >= ?", since_ts), fixed="end_ts IS NOT NULL AND state IS NULL")
        return self._jobs(where, params, order="end_ts, job_id", limit=limit)

    def ended_jobs(self, since_ts: float | None = None,
                   until_ts: float | None = None) -> list[Job]:
        """Jobs with since_ts <= end_ts < until_ts (open bounds where None), by end time."""
        where, params = _where(("end_ts >= ?", since_ts), ("end_ts < ?", until_ts),
                               fixed="end_ts IS NOT NULL")
        return self._jobs(where, params, order="end_ts, job_id")

    def job_samples(self, job_ids: Iterable[str] | None = None,
                    since_ts: float | None = None) -> list[tuple[Any, ...]]:
        """Samples (tuples in ``JOB_SAMPLE_FIELDS`` order) of the jobs (None = all) with
        ts >= since_ts, ordered by (job_id, ts, node)."""
        ids = _json_ids(job_ids)
        starts = [(start, value) for start, value in ((_START_OF_JSON, ids),
                                                      (_START_SINCE, since_ts))
                  if value is not None]
        where, params = _where((f"job_id {_IN_JSON}", ids), ("ts >= ?", since_ts))
        if starts:   # scan rowids from where the first wanted sample may be
            bound = starts[0][0] if len(starts) == 1 else f"max({starts[0][0]}, {starts[1][0]})"
            where = f"{where} AND rowid >= {bound}"
            params += [value for _, value in starts]
        with self._snapshot() as conn:
            return conn.execute(f"SELECT {', '.join(JOB_SAMPLE_FIELDS)} FROM job_samples "
                                f"{where} ORDER BY job_id, ts, node", params).fetchall()

    def sample_count(self, job_id: str | None = None) -> int:
        """How many job samples are stored (for one job, or all)."""
        with self._snapshot() as conn:
            if job_id is None:
                return int(conn.execute("SELECT count(*) FROM job_samples").fetchone()[0])
            return int(conn.execute(
                "SELECT count(*) FROM job_samples WHERE job_id = ?1 AND rowid >= "
                "(SELECT first_rowid FROM job_sample_start WHERE job_id = ?1)",
                (str(job_id),)).fetchone()[0])

    def node_samples(self, node: str | None = None,
                     since_ts: float | None = None) -> list[tuple[Any, ...]]:
        """Node samples (tuples in ``NODE_SAMPLE_FIELDS`` order) of one node (None = all)
        with ts >= since_ts, ordered by (node, ts)."""
        where, params = _where(("node = ?", node), ("ts >= ?", since_ts))
        with self._snapshot() as conn:
            return conn.execute(f"SELECT {', '.join(NODE_SAMPLE_FIELDS)} FROM node_samples "
                                f"{where} ORDER BY node, ts", params).fetchall()

    def latest_predictions(self, job_ids: Iterable[str] | None = None) -> dict[str, Prediction]:
        """The newest prediction of each job (of ``job_ids``, or all), by job id."""
        where, params = _where((f"job_id {_IN_JSON}", _json_ids(job_ids)))
        with self._snapshot() as conn:
            # SQLite takes the bare columns from the row that holds max(ts).
            rows = conn.execute(f"SELECT job_id, max(ts), risk, level, parts, factors, "
                                f"model_version FROM predictions {where} GROUP BY job_id",
                                params).fetchall()
        return {r[0]: Prediction(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]),
                                 r[6]) for r in rows}

    def model_runs(self, kind: str | None = None) -> list[ModelRun]:
        """Recorded runs (of one kind, or all), oldest first."""
        with self._snapshot() as conn:
            where, params = _where(("kind = ?", kind))
            rows = conn.execute("SELECT id, ts, kind, metadata, metrics FROM model_runs "
                                f"{where} ORDER BY ts, id", params).fetchall()
        return [ModelRun(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4])) for r in rows]

    def user_history(self, user: str, before_ts: float) -> UserHistory:
        """The user's labelled jobs that ended before ``before_ts``: how many, how many
        failed, and whether the last one to end failed."""
        with self._snapshot() as conn:
            n, failed = conn.execute(
                "SELECT count(*), coalesce(sum(label), 0) FROM jobs WHERE user = ? "
                "AND end_ts < ? AND label IS NOT NULL", (user, before_ts)).fetchone()
            last = conn.execute(
                "SELECT label FROM jobs WHERE user = ? AND end_ts < ? AND label IS NOT NULL "
                "ORDER BY end_ts DESC, job_id DESC LIMIT 1", (user, before_ts)).fetchone()
        return UserHistory(int(n), int(failed), None if last is None else bool(last[0]))

    def counts(self) -> dict[str, int]:
        """Row counts for ``nomade status``, all from one snapshot."""
        queries = {
            "jobs": "SELECT count(*) FROM jobs",
            "running": "SELECT count(*) FROM jobs WHERE end_ts IS NULL AND start_ts IS NOT NULL",
            "awaiting_final_state": "SELECT count(*) FROM jobs "
                                    "WHERE end_ts IS NOT NULL AND state IS NULL",
            "labelled": "SELECT count(*) FROM jobs WHERE label IS NOT NULL",
            "failed": "SELECT count(*) FROM jobs WHERE label = 1",
            "job_samples": "SELECT count(*) FROM job_samples",
            "node_samples": "SELECT count(*) FROM node_samples",
            "predictions": "SELECT count(*) FROM predictions",
            "model_runs": "SELECT count(*) FROM model_runs",
            "batches": "SELECT count(*) FROM batches",
        }
        with self._snapshot() as conn:
            return {k: int(conn.execute(q).fetchone()[0]) for k, q in queries.items()}
