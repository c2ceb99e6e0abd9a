"""One job's report for ``nomade job``: request against use, risk over the run, levels
crossed, the advice written, the final state (read from the store, pure data out).

``Reader(db_path)`` opens its own read-only SQLite connection (the agent's query thread
uses it beside the agent's writer; WAL lets both run) and ``report(job_id, now)`` returns
a plain dict of msgpack/JSON types, or None when the store has no such job. It reads the
tables of the store schema directly (``jobs``, ``job_samples`` from ``job_sample_start``,
``job_sample_thin``, ``predictions``) and refuses another schema version; the aggregates
run in SQLite, so only a few rows per node and three columns per prediction come to Python.
The store has no index of samples by job: a job's rows are scanned from its first one
(``job_sample_start``) to the end of the table, or, for an ended job, to the rows stored
``LATE_S`` after its end (``job_sample_spans``); samples that arrive later are not counted.

Bounds: each report may spend ``budget_s`` in SQLite (a progress handler interrupts it:
``ReportTimeout``); at most ``MAX_PREDICTIONS`` of the newest predictions are read, the
risk series sent is cut to ``MAX_POINTS`` (the highest risk of each time bucket, so no
peak is lost), at most ``MAX_CHANGES`` level changes and ``MAX_ADVICE`` advice texts.

The advice is the Comment segments NØMADE's policy (``nomade.agent.comments``, with the
agent's ``[ml.alerts]``) wrote for this job's stored predictions, replayed: the store
does not keep Comment text, and Slurm forgets a job's Comment after it ends. A replay
gives the same texts as the running agent did, save after an agent restart in the middle
of a confirmation run (then the agent restores its state from the Comment itself).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nomade import store
from nomade.agent.comment_policy import CommentPolicy
from nomade.config import AlertsConfig, StorageConfig
from nomade.errors import NomadeError

MAX_PREDICTIONS = 200_000
MAX_POINTS = 480
MAX_CHANGES = 40
MAX_ADVICE = 20
#: SQLite VM steps between two looks at the clock.
_PROGRESS_STEPS = 10_000
_JOB_COLS = ("job_id", "cluster", "user", "uid", "account", "partition", "nodes", "num_nodes",
             "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts",
             "end_ts", "exit_code", "signal", "state", "state_source")
#: An ended job's samples are looked for among rows stored up to this long after its end.
LATE_S = 3600.0
_NO_BOUND = 2**63 - 1
_FROM_JOB = ("FROM job_samples WHERE job_id = ?1 AND rowid >= "
             "(SELECT first_rowid FROM job_sample_start WHERE job_id = ?1) AND rowid < ?2")
# Rows are stored in arrival order and a row's ts is before its arrival, so every span after
# the first that holds a ts past T was stored after T: the rows stored by T lie below it.
_STORED_BY = ("SELECT coalesce((SELECT min(first_rowid) FROM job_sample_spans WHERE first_rowid > "
              "(SELECT min(first_rowid) FROM job_sample_spans WHERE max_ts > ?)), ?)")
_PER_NODE = ("SELECT node, count(*), min(ts), max(ts), max(mem_peak_bytes), max(mem_bytes), "
             "max(mem_limit_hits), max(oom_kills), max(swap_bytes) " + _FROM_JOB + " GROUP BY node")
# SQLite takes the bare columns from the row that holds max(ts): each node's last sample.
_LAST = ("SELECT node, max(ts), cpu_user_s, cpu_system_s, mem_bytes, read_bytes, write_bytes, "
         "nfs_write_bytes " + _FROM_JOB + " GROUP BY node")


class ReportTimeout(NomadeError):
    """The store did not answer within the report's budget (busy or huge job)."""


class Reader:
    """A read-only view of the agent's store that builds job reports (one thread)."""

    def __init__(self, db_path: str | Path, alerts: AlertsConfig | None = None,
                 storage: StorageConfig | None = None, budget_s: float = 5.0) -> None:
        self.path = Path(db_path)
        self.alerts = alerts or AlertsConfig()
        self.storage = storage or StorageConfig()
        self.budget_s = budget_s
        self._deadline = math.inf
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        """The read-only connection, opened at first use (the agent may start before its
        store file exists); ``check_same_thread`` off: made in one thread, used in another."""
        if self._conn is None:
            try:
                conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True,
                                       isolation_level=None, timeout=self.budget_s,
                                       check_same_thread=False)
            except sqlite3.Error as e:
                raise NomadeError(f"{self.path}: cannot open the store: {e}") from e
            conn.set_progress_handler(self._too_long, _PROGRESS_STEPS)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _too_long(self) -> int:
        return int(time.monotonic() > self._deadline)

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction within the budget; the schema checked first."""
        self._deadline = time.monotonic() + self.budget_s
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version != store.schema_version():
                    raise NomadeError(f"{self.path}: store schema v{version}, job reports read "
                                      f"v{store.schema_version()}")
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if "interrupt" in str(e):
                raise ReportTimeout(f"the store did not answer within {self.budget_s:g} s") from None
            raise NomadeError(f"{self.path}: read failed: {e}") from e
        finally:
            self._deadline = math.inf

    def job_owner(self, job_id: str) -> tuple[int | None, str | None] | None:
        """The job's (uid, user name) as stored, or None when the store has no such job."""
        with self._snapshot() as conn:
            row = conn.execute("SELECT uid, user FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def report(self, job_id: str, now: float | None = None) -> dict[str, Any] | None:
        """Job ``job_id``'s report (see the module docstring), None if the store has no
        such job. ``ReportTimeout`` past the budget."""
        now = time.time() if now is None else now
        with self._snapshot() as conn:
            row = conn.execute(f"SELECT {', '.join(_JOB_COLS)} FROM jobs WHERE job_id = ?",
                               (job_id,)).fetchone()
            if row is None:
                return None
            job = dict(zip(_JOB_COLS, row, strict=True))
            end = job["end_ts"]
            hi = _NO_BOUND if end is None else \
                conn.execute(_STORED_BY, (end + LATE_S, _NO_BOUND)).fetchone()[0]
            nodes = conn.execute(_PER_NODE, (job_id, hi)).fetchall()
            last = conn.execute(_LAST, (job_id, hi)).fetchall()
            thinned = conn.execute("SELECT count(*) FROM job_sample_thin WHERE job_id = ?",
                                   (job_id,)).fetchone()[0] > 0
            preds = conn.execute("SELECT rowid, ts, risk, level FROM predictions WHERE job_id = ? "
                                 "ORDER BY ts DESC LIMIT ?", (job_id, MAX_PREDICTIONS)).fetchall()
            preds.reverse()
            advice = self._advice(conn, preds)
        job["nodes"] = json.loads(job["nodes"] or "[]")
        usage = _usage(job, nodes, last, now)
        request = {k: job.pop(f"req_{k}") for k in ("cpus", "mem_bytes", "gpus")}
        request["time_limit_s"] = job.pop("time_limit_s")
        return {**job, "now": now, "running": job["end_ts"] is None and job["start_ts"] is not None,
                "request": request, "usage": usage, "risk": _risk(preds), "levels": _levels(preds),
                "advice": advice, "notes": self._notes(job, usage, thinned, len(preds), now)}

    def _advice(self, conn: sqlite3.Connection, preds: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """The Comment updates the policy makes of ``preds``, newest ``MAX_ADVICE``. The
        decisions depend on risk and level only, so a first pass finds them and a second
        gives those predictions their factors (read for those rows only)."""
        policy = CommentPolicy(self.alerts)
        hits = [k for k, (_, ts, risk, level) in enumerate(preds)
                if policy.decide_job("j", risk, level, ts) is not None][-MAX_ADVICE:]
        if not hits:
            return []
        ids = json.dumps([preds[k][0] for k in hits])
        factors = dict(conn.execute("SELECT rowid, factors FROM predictions WHERE rowid IN "
                                    "(SELECT value FROM json_each(?))", (ids,)).fetchall())
        policy, wanted, out = CommentPolicy(self.alerts), set(hits), []
        for k, (rowid, ts, risk, level) in enumerate(preds):
            given = json.loads(factors.get(rowid) or "[]") if k in wanted else ()
            update = policy.decide_job("j", risk, level, ts, given)
            if k in wanted and update is not None:
                out.append({"ts": ts, "level": update.level, "reason": update.reason,
                            "text": update.segment})
        return out

    def _notes(self, job: dict[str, Any], usage: dict[str, Any], thinned: bool, n_preds: int,
               now: float) -> list[str]:
        """What the reader should know about missing or thinned data."""
        notes, end = [], job["end_ts"]
        if thinned:
            notes.append(f"samples thinned by retention (jobs ended over "
                         f"{self.storage.full_samples_days:g} days ago keep at most "
                         f"{self.storage.thin_samples_to} per node): use figures are from those")
        if not usage["samples"]:
            gone = end is not None and end < now - self.storage.sample_retention_days * 86400
            notes.append("samples dropped by retention" if gone else "no samples from a collector")
        if n_preds >= MAX_PREDICTIONS:
            notes.append(f"risk from the newest {MAX_PREDICTIONS} predictions only")
        elif not n_preds:
            old = end is not None and end < now - self.storage.prediction_retention_days * 86400
            notes.append("predictions dropped by retention" if old else
                         "not scored (no model loaded, or too short to score)")
        return notes


def _usage(job: dict[str, Any], nodes: list[tuple[Any, ...]], last: list[tuple[Any, ...]],
           now: float) -> dict[str, Any]:
    """Request against use from per-node aggregates (counters are cumulative per node)."""
    start, end = job["start_ts"], job["end_ts"]
    elapsed = None if start is None else max(0.0, (end if end is not None else now) - start)
    limit = job["time_limit_s"]
    out: dict[str, Any] = {
        "nodes": len(nodes), "samples": sum(n[1] for n in nodes),
        "first_ts": min((n[2] for n in nodes), default=None),
        "last_ts": max((n[3] for n in nodes), default=None),
        "elapsed_s": elapsed,
        "time_left_s": None if elapsed is None or limit is None or end is not None
        else max(0.0, limit - elapsed),
        "mem_peak_bytes": _sum(n[4] if n[4] is not None else n[5] for n in nodes),
        "mem_peak_node_bytes": _max(n[4] if n[4] is not None else n[5] for n in nodes),
        "mem_limit_hits": _max(n[6] for n in nodes), "oom_kills": _max(n[7] for n in nodes),
        "swap_peak_bytes": _max(n[8] for n in nodes),
        "mem_now_bytes": _sum(r[4] for r in last), "mem_now_ts": max((r[1] for r in last), default=None),
        "read_bytes": _sum(r[5] for r in last), "write_bytes": _sum(r[6] for r in last),
        "nfs_write_bytes": _sum(r[7] for r in last),
    }
    per_node = [((r[2] or 0.0) + (r[3] or 0.0), r[1] - start) for r in last
                if start is not None and (r[2] is not None or r[3] is not None)]
    out["cpu_s"] = sum(c for c, _ in per_node) if per_node else None
    # each node's CPU seconds over its own span since the start: average CPUs busy
    out["cpus_used"] = sum(c / t for c, t in per_node if t > 0) if per_node else None
    req = job["req_cpus"]
    out["cpu_eff"] = out["cpus_used"] / req if out["cpus_used"] is not None and req else None
    return out


def _sum(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _risk(preds: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """The series cut to ``MAX_POINTS`` (each time bucket's highest risk), with its max and last."""
    if not preds:
        return {"n": 0, "points": [], "max": None, "max_ts": None, "last": None, "last_level": None}
    top = max(preds, key=lambda p: p[2])
    t0, t1 = preds[0][1], preds[-1][1]
    width = (t1 - t0) / MAX_POINTS or 1.0
    buckets: dict[int, tuple[Any, ...]] = {}
    for p in preds:
        k = min(MAX_POINTS - 1, int((p[1] - t0) / width))
        if k not in buckets or p[2] > buckets[k][2]:
            buckets[k] = p
    points = [[p[1], p[2], p[3]] for _, p in sorted(buckets.items())]
    return {"n": len(preds), "points": points, "max": top[2], "max_ts": top[1],
            "last": preds[-1][2], "last_level": preds[-1][3]}


def _levels(preds: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """When each level was first reached, and the level changes (first ``MAX_CHANGES``)."""
    first: dict[str, float] = {}
    changes: list[dict[str, Any]] = []
    n_changes, before = 0, None
    for _, ts, risk, level in preds:
        first.setdefault(level, ts)
        if before is not None and level != before:
            n_changes += 1
            if len(changes) < MAX_CHANGES:
                changes.append({"ts": ts, "from": before, "to": level, "risk": risk})
        before = level
    return {"first": first, "changes": changes, "n_changes": n_changes}


__all__ = ["MAX_ADVICE", "MAX_CHANGES", "MAX_POINTS", "MAX_PREDICTIONS", "Reader", "ReportTimeout"]
