"""Job history from Slurm's job completion logs → :class:`nomade.traces.Trace`.

Many sites keep years of history only here. Two plugins are read (the file's first
non-blank character tells which: ``{`` or ``[`` JSON, else text):

**jobcomp/filetxt** (``JobCompLoc``, one line per ended job)::

    JobId=12 UserId=alice(1000) GroupId=alice(1000) Name=sim run JobState=TIMEOUT
    Partition=batch TimeLimit=60 StartTime=2024-03-01T10:00:05 EndTime=... NodeList=n[1-2]
    NodeCnt=2 ProcCnt=8 WorkDir=/home/alice ReservationName= Tres=cpu=8,mem=16G,node=2
    Account=phys QOS=normal WcKey= Cluster=c1 SubmitTime=... EligibleTime=...
    [ArrayJobId=.. ArrayTaskId=..] [HetJobId=.. HetJobOffset=..] DerivedExitCode=0:0 ExitCode=0:15

(all on one line). ``TimeLimit`` is in minutes (or ``UNLIMITED``), times are local
time (``Unknown`` for a job cancelled before it started), ``Tres`` is the request
(``mem`` the job's total). Older releases stop after ``NodeCnt``/``ProcCnt`` or have no
``SubmitTime``: the submit time is then unknown. Values may hold spaces (``Name``,
``WorkDir``): a value runs to the next known ``Key=``.

**jobcomp/elasticsearch** records (the ``_source`` of each indexed document): one JSON
object per line (an export, or the plugin's bulk lines, whose action lines are
skipped), a JSON list of them, or a search response (``hits.hits[]._source``). Fields:
``jobid``, ``username``, ``partition``, ``account``, ``total_cpus``, ``total_nodes``,
``nodes``, ``tres_req`` (else ``tres_alloc``), ``time_limit`` (seconds; absent when
unlimited), ``@submit``/``@start``/``@end`` (UTC, ``Unknown`` for no start), ``state``,
``exit_code``.

Jobs are named by Slurm's own id (``JobId``, ``jobid``; an array task's too), as the
hooks name them. A record that cannot be read is an error naming its line (see
``nomade.traces``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nomade import slurmfmt
from nomade.errors import NomadeError
from nomade.traces import Issues, Progress, Trace, json_items, numbered_lines, trace_from_records, tres_gpus, tres_mem
from nomade.traces.fields import _nodes, _time
from nomade.traces.trace import _finish

FILETXT_KEYS = ("JobId", "UserId", "GroupId", "Name", "JobState", "Partition", "TimeLimit", "StartTime",
                "EndTime", "NodeList", "NodeCnt", "ProcCnt", "WorkDir", "ReservationName", "Tres", "Account",
                "QOS", "WcKey", "Cluster", "SubmitTime", "EligibleTime", "ArrayJobId", "ArrayTaskId",
                "HetJobId", "HetJobOffset", "DerivedExitCode", "ExitCode")
_KEY = re.compile(r"(?:^|\s)(" + "|".join(FILETXT_KEYS) + r")=")
_ES_ACTIONS = frozenset({"index", "create", "update", "delete"})


def read_jobcomp(path: str | Path, progress: Progress | None = None, partial: bool = False) -> Trace:
    """Parse a jobcomp/filetxt log or jobcomp/elasticsearch records (``.gz`` ok, ``-``
    stdin) into a :class:`Trace`."""
    issues = Issues(str(path), partial)
    lines = numbered_lines(path, issues, progress)
    first = next(((n, ln) for n, ln in lines if ln.strip()), None)
    if first is None:
        raise NomadeError(f"{path}: empty job completion log")
    rest = _chain(first, lines)
    if first[1].lstrip()[:1] in ("{", "["):
        return _finish(_elasticsearch(rest, issues), issues)
    return _finish(_filetxt(rest, issues), issues)


def _chain(first: tuple[int, str], rest: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


# ---------------------------------------------------------------- filetxt

def _filetxt(lines: Iterable[tuple[int, str]], issues: Issues) -> Trace:
    records = []
    for n, line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            records.append(_filetxt_record(split_filetxt(text)))
        except (KeyError, ValueError) as exc:
            why = f"no {exc.args[0]}= field" if isinstance(exc, KeyError) else str(exc)
            issues.bad(f"line {n}", why, text)
    return trace_from_records(records, issues.source, "jobcomp/filetxt")


def split_filetxt(text: str) -> dict[str, str]:
    """``Key=value`` pairs of one filetxt line; a value runs to the next known key."""
    marks = list(_KEY.finditer(text))
    if not marks or marks[0].group(1) != "JobId" or text[:marks[0].start()].strip():
        raise ValueError("not a jobcomp/filetxt line (it starts with JobId=)")
    out = {}
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        out[m.group(1)] = text[m.end():nxt.start() if nxt else len(text)].strip()
    return out


def _filetxt_record(f: dict[str, str]) -> dict[str, Any]:
    job_id = f["JobId"]
    if not job_id.isdigit():
        raise ValueError(f"JobId {job_id!r} is not a job id")
    tres = f.get("Tres", "")
    cpus = _tres_count(tres, "cpu") or _digits(f.get("ProcCnt"), "ProcCnt")
    nodes = _nodes(f.get("NodeList"))
    start = _time(f.get("StartTime", ""), "StartTime")
    return {"job_id": job_id, "user": f.get("UserId", "").split("(")[0] or None,
            "partition": f.get("Partition") or None, "account": f.get("Account") or None,
            "req_cpus": cpus, "req_mem_bytes": tres_mem(tres), "req_gpus": tres_gpus(tres),
            "time_limit_s": slurmfmt.time_limit_s(f.get("TimeLimit")),
            "submit_ts": _time(f.get("SubmitTime", ""), "SubmitTime"),
            "start_ts": start if nodes is not None or "NodeList" not in f else None,
            "end_ts": _time(f.get("EndTime", ""), "EndTime"), "state": f["JobState"],
            "num_nodes": _digits(f.get("NodeCnt"), "NodeCnt"), "nodes": nodes,
            "exit_code": f.get("ExitCode") or None}


def _digits(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{name} {text!r} is not a count")
    return int(text)


def _tres_count(tres: str, key: str) -> int | None:
    for part in tres.split(","):
        k, _, v = part.partition("=")
        if k == key and v.isdigit():
            return int(v)
    return None


# ---------------------------------------------------------------- elasticsearch

def _elasticsearch(lines: Iterator[tuple[int, str]], issues: Issues) -> Trace:
    """NDJSON (one object a line), else the whole text as one JSON document."""
    first = next(lines)
    try:
        head = json.loads(first[1])
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict):
        items = _ndjson(_chain(first, lines), issues)
    else:
        text = "\n" * (first[0] - 1) + first[1] + "".join(ln for _, ln in lines)
        items = _document(text, issues)
    records = []
    for at, doc in items:
        try:
            records.append(_es_record(doc))
        except (KeyError, TypeError, ValueError) as exc:
            why = f"no {exc.args[0]!r} field" if isinstance(exc, KeyError) else str(exc)
            issues.bad(at, why)
    return trace_from_records(records, issues.source, "jobcomp/elasticsearch")


def _ndjson(lines: Iterable[tuple[int, str]], issues: Issues) -> Iterator[tuple[str, Any]]:
    for n, line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.bad(f"line {n}", f"not JSON ({exc.msg} at column {exc.colno})", line)
            continue
        if isinstance(doc, dict) and len(doc) == 1 and next(iter(doc)) in _ES_ACTIONS:
            continue  # a bulk request's action line: its document is the next line
        yield f"line {n}", doc


def _document(text: str, issues: Issues) -> Iterator[tuple[str, Any]]:
    """A list of records, or a search response's ``hits.hits``."""
    start = text.find("[")
    hits = re.search(r'(?<!\\)"hits"\s*:\s*\[', text)
    if hits is not None:
        yield from json_items(text, hits.end() - 1, issues, "hits.hits")
    elif start >= 0 and not text[:start].strip():
        yield from json_items(text, start, issues, "records")
    else:
        raise NomadeError(f"{issues.source}: neither jobcomp/elasticsearch records (a JSON object a line, "
                          "or a list) nor an Elasticsearch search response")


def _es_record(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    doc = doc.get("_source", doc)
    job_id = str(int(doc["jobid"]))
    tres = doc.get("tres_req") or doc.get("tres_alloc") or ""
    nodes = _nodes(doc.get("nodes"))
    limit = doc.get("time_limit")
    start = _time(str(doc.get("@start") or ""), "@start", utc=True)
    return {"job_id": job_id, "user": doc.get("username") or None, "partition": doc.get("partition") or None,
            "account": doc.get("account") or None,
            "req_cpus": _tres_count(tres, "cpu") or _int(doc.get("total_cpus")),
            "req_mem_bytes": tres_mem(tres), "req_gpus": tres_gpus(tres),
            "time_limit_s": float(limit) if isinstance(limit, (int, float)) and limit > 0 else None,
            "submit_ts": _time(str(doc.get("@submit") or ""), "@submit", utc=True),
            "start_ts": start if nodes is not None or "nodes" not in doc else None,
            "end_ts": _time(str(doc.get("@end") or ""), "@end", utc=True), "state": doc["state"],
            "num_nodes": _int(doc.get("total_nodes")), "nodes": nodes, "exit_code": doc.get("exit_code")}


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    return int(value)
