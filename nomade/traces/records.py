"""Records <-> ``Trace``: a trace from record dicts, and a trace as ``job.start`` /
``job.end`` message bodies (the import into a store)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from nomade import jobrecord, slurmfmt, slurmstates, wire
from nomade.features import JobTable
from nomade.traces.trace import Trace, _Codes, _state

START_KEYS = jobrecord.START_FIELDS
END_KEYS = jobrecord.END_FIELDS
"""The keys of :func:`messages`' bodies: the ``job.start`` and ``job.end`` fields in wire order."""


# ---------------------------------------------------------------- records → Trace

def trace_from_records(records: list[dict[str, Any]], source: str, shape: str = "") -> Trace:
    """A :class:`Trace` of records with the ``job.start`` body fields, ``end_ts``, a raw
    ``state`` (any spelling), ``num_nodes``, ``nodes`` and ``exit_code``. The end of a
    job whose state is not final is dropped (it has not ended)."""
    def col(key: str) -> np.ndarray:
        return np.array([math.nan if (v := r.get(key)) is None else float(v) for r in records], np.float64)

    named = [_state(r.get("state")) for r in records]
    state = np.array([name for name, _ in named], dtype=object)
    label = np.array([lab for _, lab in named], dtype=np.float64)
    final = np.array([name in slurmstates.FINAL_STATES for name, _ in named], dtype=bool)
    users, cats = _Codes(), {c: _Codes() for c in ("partition", "account")}
    jobs = JobTable(
        job_id=np.array([r["job_id"] for r in records], dtype=object),
        user=np.array([users(r.get("user")) for r in records], dtype=np.int64),
        req_cpus=col("req_cpus"), req_mem_bytes=col("req_mem_bytes"), req_gpus=col("req_gpus"),
        time_limit_s=col("time_limit_s"), submit_ts=col("submit_ts"), start_ts=col("start_ts"),
        end_ts=np.where(final, col("end_ts"), np.nan), state=state, label=label,
        cat={c: np.array([cats[c](r.get(c)) for r in records], dtype=np.int64) for c in cats})
    extra = {k: [r.get(k) for r in records] for k in ("num_nodes", "nodes", "exit_code")}
    return Trace(jobs, {"user": users.names(), **{c: cats[c].names() for c in cats}},
                 source, extra=extra, shape=shape)


def messages(trace: Trace) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """``(job.start body, job.end body or None)`` per job, for writing into the store.

    Unknown values are None; ``source`` is ``"import"``, ``cluster`` None. The keys are
    in wire order (:data:`START_KEYS`, :data:`END_KEYS`: ``wire.FIELDS``), so a body's
    values are its wire fields. The end body is given only for jobs with a known end time.
    """
    j = trace.jobs
    n = len(j)
    def names(col: str, codes: np.ndarray) -> list[str | None]:
        known = trace.names.get(col, [])
        return [known[c] if c >= 0 else None for c in codes.tolist()]
    def opt(x: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else v for v in x.tolist()]
    def count(x: np.ndarray) -> list[int | None]:
        return [None if math.isnan(v) else int(v) for v in x.tolist()]
    user = names("user", j.user)
    part = names("partition", j.cat.get("partition", np.full(n, -1)))
    acct = names("account", j.cat.get("account", np.full(n, -1)))
    cpus, mem, gpus = count(j.req_cpus), count(j.req_mem_bytes), count(j.req_gpus)
    limit, submit, start, end = opt(j.time_limit_s), opt(j.submit_ts), opt(j.start_ts), opt(j.end_ts)
    nodes = trace.extra.get("nodes", [None] * n)
    num_nodes = trace.extra.get("num_nodes", [None] * n)
    exit_codes = trace.extra.get("exit_code", [None] * n)
    for i in range(n):
        job_id = j.job_id[i]
        body = jobrecord.start_body(
            job_id=job_id, user=user[i], partition=part[i], account=acct[i], nodes=_node_names(nodes[i]),
            num_nodes=None if num_nodes[i] is None else int(num_nodes[i]), req_cpus=cpus[i],
            req_mem_bytes=mem[i], req_gpus=gpus[i], time_limit_s=limit[i], submit_ts=submit[i],
            start_ts=start[i], source="import")
        done = None
        if end[i] is not None:
            code, signal = _split_exit(exit_codes[i])
            done = jobrecord.end_body(job_id=job_id, end_ts=end[i], exit_code=code, signal=signal,
                                       state=j.state[i], source="import")
        yield body, done


def _split_exit(text: str | None) -> tuple[int | None, int | None]:
    """sacct's ``"3:0"`` (exit code : signal) → (3, 0); unknown → (None, None)."""
    code, _, signal = (text or "").partition(":")
    return (int(code) if code.isdigit() else None, int(signal) if signal.isdigit() else None)


def _node_names(text: str | None) -> list[str]:
    """A node list (checked by :func:`_nodes` when read) → host names: ``n[1-2]`` → n1 n2."""
    return slurmfmt.expand_hostlist(text, wire.MAX_NODES) if text else []
