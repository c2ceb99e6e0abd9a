"""Reading the store: jobs, samples, predictions, model runs and counts, each from one
snapshot."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from nomade.store.base import StoreBase
from nomade.store.records import JOB_SAMPLE_FIELDS, NODE_SAMPLE_FIELDS, Job, ModelRun, Prediction, UserHistory
from nomade.store.rows import _IN_JSON, _JOB_COLS, _job_of

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



class Reads(StoreBase):
    """Queries, each in one read transaction."""

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
