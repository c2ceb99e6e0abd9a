"""The ``sacct`` reader: ``--parsable2`` text, or ``--json`` handed to ``sacct_json``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nomade import slurmfmt
from nomade.errors import NomadeError
from nomade.traces.fields import _GPU, _count, _nodes, _req_mem, _time
from nomade.traces.records import trace_from_records
from nomade.traces.sacct_json import parse_sacct_json_text
from nomade.traces.trace import (
    SACCT_FORMAT,
    Issues,
    Progress,
    Trace,
    _chain,
    _finish,
    numbered_lines,
)

_STEP = re.compile(r"^\d+(_\d+)?(\+\d+)?\.")
_JOB = re.compile(r"^\d+(_\d+)?(\+\d+)?$")
_ARRAY_RANGE = re.compile(r"^\d+_\[[\d,\-%:]+\]$")


def read_sacct(path: str | Path, progress: Progress | None = None, partial: bool = False) -> Trace:
    """Parse ``sacct --parsable2`` text or ``sacct --json`` (detected by a leading ``{``)
    from a file or ``-`` (stdin) into a :class:`Trace`."""
    issues = Issues(str(path), partial)
    lines = numbered_lines(path, issues, progress)
    first = next(((n, ln) for n, ln in lines if ln.strip()), None)
    if first is None:
        raise NomadeError(f"{path}: empty sacct output")
    if first[1].lstrip().startswith("{"):
        text = "\n" * (first[0] - 1) + first[1] + "".join(ln for _, ln in lines)
        return _finish(parse_sacct_json_text(text, issues), issues)
    return _finish(_parse_lines(_chain(first, lines), issues), issues)


def parse_sacct_lines(lines: Iterable[str], source: str = "sacct", partial: bool = False) -> Trace:
    """Parse ``--parsable2`` lines (``|``-separated); a header line names the fields,
    else :data:`SACCT_FORMAT` order is assumed."""
    issues = Issues(source, partial)
    return _finish(_parse_lines(enumerate(lines, 1), issues), issues)


def _parse_lines(lines: Iterable[tuple[int, str]], issues: Issues) -> Trace:
    names = SACCT_FORMAT.split(",")
    records: list[dict[str, Any]] = []
    ignored, first = 0, True
    for n, line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        parts = text.split("|")
        if first and parts[0] in ("JobID", "JobIDRaw"):
            names, first = parts, False
            continue
        first = False
        if len(parts) != len(names):
            issues.bad(f"line {n}", f"{len(parts)} '|'-separated fields where the header has {len(names)}", text)
            continue
        row = dict(zip(names, parts, strict=True))
        job_id = row.get("JobIDRaw") or row.get("JobID", "")
        if _STEP.match(job_id) or _ARRAY_RANGE.match(job_id):
            ignored += 1
            continue
        try:
            records.append(_sacct_record(row, job_id))
        except ValueError as exc:
            issues.bad(f"line {n} (job {job_id!r})", str(exc), text)
    trace = trace_from_records(records, issues.source, "sacct --parsable2")
    trace.ignored = ignored
    return trace


def _sacct_record(row: dict[str, str], job_id: str) -> dict[str, Any]:
    """One ``--parsable2`` row → start/end body fields (ValueError says what is malformed)."""
    if not _JOB.match(job_id):
        raise ValueError("not a job id")
    cpus = _count(row.get("ReqCPUS"), "ReqCPUS")
    nodes = _count(row.get("NNodes"), "NNodes")
    tres = row.get("ReqTRES") or row.get("AllocTRES") or ""
    gpus = _GPU.search(tres) or _GPU.search(row.get("AllocTRES", ""))
    state = row.get("State")
    node_list = _nodes(row.get("NodeList"))
    start = _time(row.get("Start", ""), "Start")
    if "NodeList" in row and node_list is None:
        start = None  # no node was ever allocated: it never ran, whatever Start says
    return {"job_id": job_id, "user": row.get("User") or None, "partition": row.get("Partition") or None,
            "account": row.get("Account") or None, "req_cpus": cpus,
            "req_mem_bytes": _req_mem(row.get("ReqMem", ""), cpus, nodes),
            "req_gpus": int(gpus.group(1)) if gpus else 0,
            "time_limit_s": slurmfmt.time_limit_s(row.get("Timelimit")),
            "submit_ts": _time(row.get("Submit", ""), "Submit"), "start_ts": start,
            "end_ts": _time(row.get("End", ""), "End"), "state": state, "num_nodes": nodes,
            "nodes": node_list, "exit_code": row.get("ExitCode") or None}


