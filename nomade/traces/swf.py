"""The Standard Workload Format (SWF) reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nomade.errors import NomadeError
from nomade.features import JobTable
from nomade.traces.trace import (
    CATEGORIES,
    SWF_STATUS,
    Issues,
    Progress,
    Trace,
    _Codes,
    _label,
    numbered_lines,
)


def read_swf(path: str | Path, progress: Progress | None = None, partial: bool = False) -> Trace:
    """Parse an SWF file (``.gz`` ok) into a :class:`Trace`.

    CPUs are the requested processors (field 8), or the allocated ones (field 5) where
    the request is -1: allocation is fixed when the job starts, so it is known at the
    as-of time of every start-time or later feature. Requested memory (field 10, KB
    per processor) is scaled by that CPU count. GPUs are 0 (the archive's machines had
    none). End = start + runtime is kept for labels and history only. A line that is
    not 18 numbers is malformed (see the module docstring).
    """
    issues = Issues(str(path), partial)
    rows, header = [], {}
    for n, line in numbered_lines(path, issues, progress):
        s = line.strip()
        if not s:
            continue
        if s.startswith(";"):
            key, sep, value = s[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
            continue
        parts = s.split()
        if len(parts) != 18:
            issues.bad(f"line {n}", f"an SWF job line has 18 fields, this one {len(parts)}", s)
            continue
        try:
            rows.append([float(x) for x in parts])
        except ValueError:
            issues.bad(f"line {n}", "an SWF field is not a number", s)
    if not rows:
        raise NomadeError(f"{path}: no SWF job lines (18 numbers each) found")
    trace = _swf_trace(np.array(rows, dtype=np.float64), header, str(path))
    trace.skipped, trace.truncated = issues.skipped, issues.truncated
    return trace


def _swf_trace(a: np.ndarray, header: dict[str, str], source: str) -> Trace:
    def col(i: int) -> np.ndarray:  # 1-based SWF field, -1 → NaN
        v = a[:, i - 1]
        return np.where(v < 0, np.nan, v)

    origin = float(header.get("UnixStartTime", "0") or 0)
    cpus = np.where(np.isfinite(col(8)), col(8), col(5))
    cpus = np.where(cpus > 0, cpus, np.nan)
    status = a[:, 10].astype(np.int64)
    submit, wait, run = col(2) + origin, col(3), col(4)
    state = np.array([SWF_STATUS.get(int(s)) for s in status], dtype=object)
    label = np.array([_label(s) for s in state], dtype=np.float64)
    ran = (run > 0) | ((run == 0) & (status != 5) & (col(5) > 0))
    left = submit + np.where(np.isfinite(wait), wait, 0.0)  # started, or left the queue
    start = np.where(ran, left, np.nan)
    end = np.where(ran, start + run, np.where(np.isfinite(label), left, np.nan))
    codes = {c: _Codes() for c in ("user", *CATEGORIES[:4])}
    fields = {"user": 12, "group": 13, "executable": 14, "queue": 15, "partition": 16}
    coded = {c: np.array([codes[c](str(int(v))) for v in a[:, fields[c] - 1]], dtype=np.int64)
             for c in codes}
    jobs = JobTable(
        job_id=np.array([str(int(v)) for v in a[:, 0]], dtype=object), user=coded.pop("user"),
        req_cpus=cpus, req_mem_bytes=col(10) * 1024.0 * cpus, req_gpus=np.zeros(len(a)),
        time_limit_s=np.where(col(9) > 0, col(9), np.nan), submit_ts=submit, start_ts=start,
        end_ts=end, state=state, label=label, cat=coded)
    return Trace(jobs, {c: codes[c].names() for c in codes}, source,
                 start_unknown=int((ran & ~np.isfinite(wait)).sum()), shape="SWF")


