"""Writing to the store: batches of wire messages (idempotent by sender and seq),
final states, predictions and model runs."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from nomade import slurmstates
from nomade.store.base import StoreBase
from nomade.store.records import JOB_FIELDS, MessageLike
from nomade.store.rows import (
    _GET_JOB_ID,
    _GET_TS,
    _IN_JSON,
    _INSERT_JOB_SAMPLE,
    _INSERT_NODE_SAMPLE,
    _INSERT_PREDICTION,
    _JOB_COLS,
    _UPSERT_JOB,
    _blank_job,
    _job_row,
    _merge_end,
    _merge_start,
    _prediction_row,
    _Rows,
)

#: Rows of job samples in one span of ``job_sample_spans`` (a read since a time scans at
#: most about this many rows before the first one it needs).
SPAN_ROWS = 4096
#: Jobs a writing Store remembers having recorded in ``job_sample_start`` (~100 B each).
_STARTS_CACHED = 200_000


class Writes(StoreBase):
    """Writes, each in one transaction that commits before it returns."""

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
        half way through an import) leaves the store as it was. Into a store with no job
        yet (a first import), the jobs' secondary indexes are built once at the end."""
        started: set[str] = set()
        with self._transaction() as conn, _job_indexes_deferred(conn):
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
            rowid_of = dict(zip(reversed(ids), range(first + len(ids) - 1, first - 1, -1), strict=True))
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
        jobs = {row[0]: dict(zip(JOB_FIELDS, row, strict=True)) for row in conn.execute(
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

        ``state`` is any spelling ``slurmstates.normalise`` accepts; a state that is not final
        raises ``ValueError``. A job the store has not seen gets a row of its own.
        """
        name = slurmstates.normalise(state)
        if name is None or not slurmstates.is_final(name):
            raise ValueError(f"job {job_id}: {state!r} is not a final Slurm state")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, state, label, state_source, exit_code, updated_ts) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                "state = excluded.state, label = excluded.label, "
                "state_source = excluded.state_source, "
                "exit_code = coalesce(excluded.exit_code, exit_code), "
                "updated_ts = excluded.updated_ts",
                (str(job_id), name, slurmstates.label_for(name), source, exit_code, time.time()))

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


@contextmanager
def _job_indexes_deferred(conn: sqlite3.Connection) -> Iterator[None]:
    """Inside a write transaction: if ``jobs`` is empty, drop its secondary indexes and
    create them again (the same SQL) when the block ends without error: one sort instead
    of an index update a row, about a third of a bulk insert. On error the transaction's
    rollback brings them back."""
    if conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None:
        yield
        return
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                           "AND tbl_name = 'jobs' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    yield
    for _, sql in indexes:
        conn.execute(sql)
