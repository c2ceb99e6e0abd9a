"""The ``sacct`` reader: ``--parsable2`` text, or ``--json`` handed to ``sacct_json``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any

from nomade.errors import NomadeError
from nomade.traces.fields import _count, _gpu_count, _nodes, _req_mem, _time, _time_limit_s
from nomade.traces.records import trace_from_rows
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
    pick = _picker(names)
    records: list[tuple[Any, ...]] = []
    ignored, first = 0, True
    for n, line in lines:
        text = line.rstrip("\r\n")
        if not text or text.isspace():
            continue
        parts: list[str | None] = text.split("|")  # type: ignore[assignment]
        if first and parts[0] in ("JobID", "JobIDRaw"):
            names, first = parts, False  # type: ignore[assignment]
            pick = _picker(names)
            continue
        first = False
        if len(parts) != len(names):
            issues.bad(f"line {n}", f"{len(parts)} '|'-separated fields where the header has {len(names)}", text)
            continue
        parts.append(None)  # what an absent field is picked from
        row = pick(parts)
        job_id = row[0] or row[1] or ""
        if ("." in job_id and _STEP.match(job_id)) or ("[" in job_id and _ARRAY_RANGE.match(job_id)):
            ignored += 1
            continue
        try:
            records.append(_sacct_record(row, job_id))
        except ValueError as exc:
            issues.bad(f"line {n} (job {job_id!r})", str(exc), text)
    trace = trace_from_rows(records, issues.source, "sacct --parsable2")
    trace.ignored = ignored
    return trace


_FIELDS = ("JobIDRaw", "JobID", "User", "Partition", "Account", "ReqCPUS", "NNodes", "ReqTRES",
           "AllocTRES", "ReqMem", "Timelimit", "Submit", "Start", "End", "State", "ExitCode", "NodeList")
"""The fields :func:`_sacct_record` reads, in the order of its row."""


def _picker(names: list[str]) -> Callable[[list[str | None]], tuple[str | None, ...]]:
    """``pick(parts)``: the :data:`_FIELDS` of a line split by ``names`` (the last column
    of a name given twice), with None appended to ``parts`` for the fields it lacks."""
    at = {name: i for i, name in enumerate(names)}
    return itemgetter(*(at.get(name, len(names)) for name in _FIELDS))


def _sacct_record(row: tuple[str | None, ...], job_id: str) -> tuple[Any, ...]:
    """One ``--parsable2`` row (:data:`_FIELDS`, None where absent) → the record's
    :data:`~nomade.traces.records.RECORD_KEYS` (ValueError says what is malformed)."""
    (_, _, user, partition, account, req_cpus, nnodes, req_tres, alloc_tres, req_mem, limit,
     submit, start_text, end, state, exit_code, node_text) = row
    if not (job_id.isdecimal() or _JOB.match(job_id)):
        raise ValueError("not a job id")
    cpus = _count(req_cpus, "ReqCPUS")
    num_nodes = _count(nnodes, "NNodes")
    node_list = _nodes(node_text)
    start = _time(start_text or "", "Start")
    if node_text is not None and node_list is None:
        start = None  # no node was ever allocated: it never ran, whatever Start says
    return (job_id, user or None, partition or None, account or None, cpus,   # RECORD_KEYS
            _req_mem(req_mem or "", cpus, num_nodes), _gpus(req_tres, alloc_tres), _time_limit_s(limit),
            _time(submit or "", "Submit"), start, _time(end or "", "End"), state, num_nodes, node_list,
            exit_code or None)


def _gpus(req_tres: str | None, alloc_tres: str | None) -> int:
    """GPUs requested (``ReqTRES``), else allocated (``AllocTRES``); 0 if neither names any."""
    gpus = _gpu_count(req_tres or alloc_tres or "")
    if gpus is None:
        gpus = _gpu_count(alloc_tres or "")
    return gpus or 0
