"""Records <-> ``Trace``: a trace from records (dicts, or rows in :data:`RECORD_KEYS`
order), and a trace as ``job.start`` / ``job.end`` message bodies (the import into a store)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

import numpy as np

from nomade import jobrecord, slurmstates
from nomade.features import JobTable
from nomade.traces.fields import hosts
from nomade.traces.trace import Trace, _Codes, _state

START_KEYS = jobrecord.START_FIELDS
END_KEYS = jobrecord.END_FIELDS
"""The keys of :func:`messages`' bodies: the ``job.start`` and ``job.end`` fields in wire order."""


# ---------------------------------------------------------------- records → Trace

RECORD_KEYS = ("job_id", "user", "partition", "account", "req_cpus", "req_mem_bytes", "req_gpus",
               "time_limit_s", "submit_ts", "start_ts", "end_ts", "state", "num_nodes", "nodes", "exit_code")
"""The fields of a record (:func:`trace_from_records`), in the order of a row (:func:`trace_from_rows`)."""


def trace_from_records(records: list[dict[str, Any]], source: str, shape: str = "") -> Trace:
    """A :class:`Trace` of records with the ``job.start`` body fields, ``end_ts``, a raw
    ``state`` (any spelling), ``num_nodes``, ``nodes`` and ``exit_code``. The end of a
    job whose state is not final is dropped (it has not ended)."""
    columns = {k: [r.get(k) for r in records] for k in RECORD_KEYS}
    columns["job_id"] = [r["job_id"] for r in records]
    return _trace_from_columns(columns, source, shape)


def trace_from_rows(rows: list[tuple[Any, ...]], source: str, shape: str = "") -> Trace:
    """:func:`trace_from_records` of records given as tuples of :data:`RECORD_KEYS` (a bulk
    reader's: no dict a record, and the columns come out of one transposition)."""
    columns = ([list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in RECORD_KEYS])
    return _trace_from_columns(dict(zip(RECORD_KEYS, columns, strict=True)), source, shape)


def _trace_from_columns(c: dict[str, list[Any]], source: str, shape: str) -> Trace:
    """The trace of records given as one list a :data:`RECORD_KEYS` field (None unknown)."""
    def col(key: str) -> np.ndarray:
        return np.array(c[key], np.float64)   # None is NaN

    named = [_state(s) for s in c["state"]]
    state = np.array([name for name, _ in named], dtype=object)
    label = np.array([lab for _, lab in named], dtype=np.float64)
    final = np.array([name in slurmstates.FINAL_STATES for name, _ in named], dtype=bool)
    users, cats = _Codes(), {k: _Codes() for k in ("partition", "account")}
    jobs = JobTable(
        job_id=np.array(c["job_id"], dtype=object), user=np.array(list(map(users, c["user"])), dtype=np.int64),
        req_cpus=col("req_cpus"), req_mem_bytes=col("req_mem_bytes"), req_gpus=col("req_gpus"),
        time_limit_s=col("time_limit_s"), submit_ts=col("submit_ts"), start_ts=col("start_ts"),
        end_ts=np.where(final, col("end_ts"), np.nan), state=state, label=label,
        cat={k: np.array(list(map(cats[k], c[k])), dtype=np.int64) for k in cats})
    extra = {k: c[k] for k in ("num_nodes", "nodes", "exit_code")}
    return Trace(jobs, {"user": users.names(), **{k: cats[k].names() for k in cats}},
                 source, extra=extra, shape=shape)


def messages(trace: Trace) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """``(job.start body, job.end body or None)`` per job, for writing into the store.

    Unknown values are None; ``source`` is ``"import"``, ``cluster`` None. The keys are
    in wire order (:data:`START_KEYS`, :data:`END_KEYS`: ``wire.FIELDS``), so a body's
    values are its wire fields. The end body is given only for jobs with a known end time.
    """
    for start, end in message_fields(trace):
        yield dict(zip(START_KEYS, start, strict=True)), None if end is None else dict(
            zip(END_KEYS, end, strict=True))


def message_fields(trace: Trace, cluster: str | None = None
                   ) -> Iterator[tuple[list[Any], list[Any] | None]]:
    """The bodies of :func:`messages` as their values in wire order (``cluster`` set),
    made column by column: the import's rows, without a dict a body."""
    n = len(trace.jobs)
    start = _start_columns(trace)
    start.update(source=repeat("import", n), cluster=repeat(cluster, n))
    end = _end_columns(trace)
    unknown = set(start).difference(START_KEYS) | set(end).difference(END_KEYS)
    if unknown:   # as jobrecord.start_body/end_body refuse a key that is not a field
        raise ValueError(f"no job.start/job.end field {sorted(unknown)}")
    ends = zip(*(end[k] if k in end else repeat(None, n) for k in END_KEYS), strict=True)
    for start_row in zip(*(start[k] if k in start else repeat(None, n) for k in START_KEYS), strict=True):
        end_row = next(ends)
        yield list(start_row), None if end_row[_END_TS_AT] is None else list(end_row)


_END_TS_AT = END_KEYS.index("end_ts")


def _start_columns(trace: Trace) -> dict[str, Iterable[Any]]:
    """The ``job.start`` fields a trace knows, by name, one value a job (None unknown)."""
    j = trace.jobs
    n = len(j)

    def names(col: str, codes: np.ndarray) -> list[str | None]:
        known = trace.names.get(col, [])
        return [known[c] if c >= 0 else None for c in codes.tolist()]
    extra = trace.extra
    return {"job_id": j.job_id.tolist(), "user": names("user", j.user),
            "partition": names("partition", j.cat.get("partition", np.full(n, -1))),
            "account": names("account", j.cat.get("account", np.full(n, -1))),
            "nodes": [_node_names(x) for x in extra.get("nodes", repeat(None, n))],
            "num_nodes": [None if x is None else int(x) for x in extra.get("num_nodes", repeat(None, n))],
            "req_cpus": _counts(j.req_cpus), "req_mem_bytes": _counts(j.req_mem_bytes),
            "req_gpus": _counts(j.req_gpus), "time_limit_s": _known(j.time_limit_s),
            "submit_ts": _known(j.submit_ts), "start_ts": _known(j.start_ts)}


def _end_columns(trace: Trace) -> dict[str, Iterable[Any]]:
    """The ``job.end`` fields a trace knows, by name (``end_ts`` None: the job has not ended)."""
    j = trace.jobs
    codes = [_split_exit(x) for x in trace.extra.get("exit_code", repeat(None, len(j)))]
    return {"job_id": j.job_id.tolist(), "end_ts": _known(j.end_ts), "exit_code": [c for c, _ in codes],
            "signal": [s for _, s in codes], "state": j.state.tolist(), "source": repeat("import", len(j))}


def _known(x: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else v for v in x.tolist()]


def _counts(x: np.ndarray) -> list[int | None]:
    return [None if math.isnan(v) else int(v) for v in x.tolist()]


def _split_exit(text: str | None) -> tuple[int | None, int | None]:
    """sacct's ``"3:0"`` (exit code : signal) → (3, 0); unknown → (None, None)."""
    code, _, signal = (text or "").partition(":")
    return (int(code) if code.isdigit() else None, int(signal) if signal.isdigit() else None)


def _node_names(text: str | None) -> list[str]:
    """A node list (checked by ``fields._nodes`` when read) → host names: ``n[1-2]`` → n1 n2."""
    return list(hosts(text)) if text else []
