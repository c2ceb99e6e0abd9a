"""``Store.prune``: the retention sweeps over the file, in bounded transactions."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from nomade.store.base import StoreBase
from nomade.store.retention import PruneCounts, RetentionPolicy, _thin_rows, _ThinState
from nomade.store.rows import _IN_JSON


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


class Prune(StoreBase):
    """Retention: what ``prune`` deletes, swept in rowid order from cursors kept in the file."""

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

