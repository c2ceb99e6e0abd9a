"""The numpy tables features are computed from: ``JobTable`` (one row per job) and
``SampleTable`` (one row per job sample, summed over a job's nodes)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nomade.features.columns import SAMPLE_COLUMNS, label_of
from nomade.features.nodes import _time_order, job_totals


def _floats(values: Iterable[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


@dataclass
class JobTable:
    """One row per job (ARCHITECTURE "ML arrays"); times in POSIX s, NaN unknown.

    ``cat`` holds optional extra categorical columns known at submit (int codes,
    -1 unknown), e.g. ``group``, ``executable``, ``queue`` from a trace; the
    features do not use them, baselines may.
    """

    job_id: np.ndarray
    user: np.ndarray
    req_cpus: np.ndarray
    req_mem_bytes: np.ndarray
    req_gpus: np.ndarray
    time_limit_s: np.ndarray
    submit_ts: np.ndarray
    start_ts: np.ndarray
    end_ts: np.ndarray
    state: np.ndarray
    label: np.ndarray
    cat: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.job_id)
        for name in ("user", "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s",
                     "submit_ts", "start_ts", "end_ts", "state", "label", *self.cat):
            col = self.cat[name] if name in self.cat else getattr(self, name)
            if len(col) != n:
                raise ValueError(f"JobTable column {name!r} has {len(col)} rows, job_id has {n}")

    def __len__(self) -> int:
        return len(self.job_id)

    def take(self, idx: np.ndarray) -> JobTable:
        """The rows ``idx`` as a new table (history features then see only those rows)."""
        cols = {name: getattr(self, name)[idx] for name in _JOB_COLUMNS}
        return JobTable(**cols, cat={k: v[idx] for k, v in self.cat.items()})

    @classmethod
    def from_records(cls, records: Iterable[Any], users: dict[str, int] | None = None) -> JobTable:
        """Build from records with the ``job.start`` body fields plus optional ``end_ts``
        and ``state`` (``job.end``): dicts, or objects with those attributes (the store's
        ``Job`` rows). ``users`` maps user names to codes and is extended in place, so
        that tables built at different times share codes."""
        users = {} if users is None else users
        rows = list(records)
        def get(key: str) -> list[Any]:
            return [_field(r, key) for r in rows]
        states = np.array(get("state"), dtype=object)
        return cls(
            job_id=np.array([str(j) for j in get("job_id")], dtype=object),
            user=np.array([_code(users, u) for u in get("user")], dtype=np.int64),
            req_cpus=_floats(get("req_cpus")), req_mem_bytes=_floats(get("req_mem_bytes")),
            req_gpus=_floats(get("req_gpus")), time_limit_s=_floats(get("time_limit_s")),
            submit_ts=_floats(get("submit_ts")), start_ts=_floats(get("start_ts")),
            end_ts=_floats(get("end_ts")), state=states,
            label=np.array([label_of(s) for s in states], dtype=np.float64))


_JOB_COLUMNS = ("job_id", "user", "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s",
                "submit_ts", "start_ts", "end_ts", "state", "label")


def _field(record: Any, key: str) -> Any:
    """``record[key]`` of a mapping, else the attribute; None if absent."""
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def _code(codes: dict[str, int], name: Any) -> int:
    if name is None or name == "":
        return -1
    return codes.setdefault(str(name), len(codes))


@dataclass
class SampleTable:
    """Samples of jobs: ``job_index`` (row into a JobTable), ``ts``, and the float
    columns of ``SAMPLE_COLUMNS`` in ``cols`` (cumulative counters as read, NaN
    unknown). Rows are sorted by (job_index, ts) on construction."""

    job_index: np.ndarray
    ts: np.ndarray
    cols: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.job_index = np.asarray(self.job_index, dtype=np.int64)
        self.ts = np.asarray(self.ts, dtype=np.float64)
        n = len(self.ts)
        if len(self.job_index) != n:
            raise ValueError("SampleTable job_index and ts differ in length")
        unknown = set(self.cols) - set(SAMPLE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown sample columns {sorted(unknown)}; known: {SAMPLE_COLUMNS}")
        full = {c: np.asarray(self.cols.get(c, np.full(n, np.nan)), dtype=np.float64)
                for c in SAMPLE_COLUMNS}
        if np.isfinite(self.ts).all() and _time_order(self.job_index, self.ts) is None:
            self.cols = full   # already in order (the agent's tick): no sort, no copy
            return
        keep = np.flatnonzero(np.isfinite(self.ts))  # a sample without a time is unusable
        order = keep[np.lexsort((self.ts[keep], self.job_index[keep]))]
        self.job_index, self.ts = self.job_index[order], self.ts[order]
        self.cols = {c: v[order] for c, v in full.items()}

    def __len__(self) -> int:
        return len(self.ts)

    def __getattr__(self, name: str) -> np.ndarray:
        cols: dict[str, np.ndarray] = self.__dict__.get("cols", {})
        if name in cols:
            return cols[name]
        raise AttributeError(name)

    @classmethod
    def empty(cls) -> SampleTable:
        """No samples at all (e.g. a trace): every runtime feature is masked."""
        return cls(np.zeros(0, np.int64), np.zeros(0), {})

    @classmethod
    def from_records(cls, jobs: JobTable, records: Iterable[Any],
                     fields: Sequence[str] | None = None) -> SampleTable:
        """Build from dicts with the ``job.sample`` body fields (``job_id``, ``ts``, ...),
        or from tuples in the order ``fields`` (the store's ``JOB_SAMPLE_FIELDS``).
        Samples of jobs not in ``jobs`` are skipped."""
        if fields is not None:
            records = (dict(zip(fields, r, strict=True)) for r in records)
        row_of = {jid: i for i, jid in enumerate(jobs.job_id)}
        rows = [r for r in records if str(r.get("job_id")) in row_of]
        cols = {c: _floats(r.get(c) for r in rows) for c in SAMPLE_COLUMNS}
        job_index = np.array([row_of[str(r["job_id"])] for r in rows], dtype=np.int64)
        ts = _floats(r.get("ts") for r in rows)
        nodes: dict[str, int] = {}
        node = np.array([_code(nodes, r.get("node")) for r in rows], dtype=np.int64)
        by_name = np.argsort(np.argsort(np.array(list(nodes), dtype=object)))
        node = np.where(node >= 0, by_name[np.maximum(node, 0)] if nodes else node, node)
        ok = np.isfinite(ts)
        cols = job_totals(job_index[ok], node[ok], ts[ok], {c: v[ok] for c, v in cols.items()})
        return cls(job_index[ok], ts[ok], cols)


