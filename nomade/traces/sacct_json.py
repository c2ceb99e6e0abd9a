"""The ``sacct --json`` reader: streamed ``jobs`` items, every data_parser shape."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from nomade import slurmfmt
from nomade.errors import NomadeError
from nomade.traces.fields import _nodes
from nomade.traces.records import trace_from_records
from nomade.traces.trace import Issues, Trace

_JOBS_KEY = re.compile(r'(?<!\\)"jobs"\s*:\s*\[')


def json_items(text: str, start: int, issues: Issues, where: str) -> Iterator[tuple[str, Any]]:
    """The values of the JSON array that opens at ``text[start]`` (``[``), one at a time,
    each with where it is (``{where}[k] (line L)``); a value cut short or malformed goes to
    ``issues`` (a cut ends the array)."""
    decoder = json.JSONDecoder()
    pos, k, n = start + 1, 0, len(text)
    line, counted = text.count("\n", 0, pos) + 1, pos
    while True:
        pos = _skip(text, pos)
        if pos < n and text[pos] == "]":
            return
        line, counted = line + text.count("\n", counted, pos), pos
        at = f"{where}[{k}] (line {line})"
        if pos >= n:
            issues.cut(at, "the file ends inside the list")
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            issues.cut(at, f"{exc.msg} at line {exc.lineno} column {exc.colno}")
            return
        yield at, value
        k += 1
        pos = _skip(text, end)
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] != "]":
            issues.cut(at, f"',' or ']' expected after it, got {text[pos]!r}")
            return


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# ---------------------------------------------------------------- sacct --json

def parse_sacct_json_text(text: str, issues: Issues) -> Trace:
    """``sacct --json`` text, job by job (a malformed job is named by its place and line)."""
    m = _JOBS_KEY.search(text)
    if m is None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NomadeError(f"{issues.source}: not valid sacct --json output: {exc}") from exc
        raise NomadeError(f"{issues.source}: sacct --json output has no 'jobs' list"
                          + ("" if isinstance(data, dict) else " (not a JSON object)"))
    head = text[:m.start()]
    version = _version_text(head) or _version_text(text[-4000:])
    return _json_trace(json_items(text, m.end() - 1, issues, "jobs"), issues, version)


_MAJOR, _MINOR = (re.compile(rf'"{k}"\s*:\s*"?(\d+)') for k in ("major", "minor"))


def _version_text(text: str) -> str:
    """``23.02`` from the ``meta`` text of ``sacct --json`` output; "" if absent."""
    major, minor = _MAJOR.search(text), _MINOR.search(text)
    return f"{int(major.group(1)):02d}.{int(minor.group(1)):02d}" if major and minor else ""


def _json_trace(items: Iterable[tuple[str, Any]], issues: Issues, version: str) -> Trace:
    records = []
    for at, job in items:
        try:
            records.append(_json_record(job))
        except (KeyError, TypeError, ValueError) as exc:
            jid = job.get("job_id") if isinstance(job, dict) else None
            issues.bad(at + (f" (job {jid})" if jid is not None else ""), _why(exc))
    return trace_from_records(records, issues.source, "sacct --json" + (f", Slurm {version}" if version else ""))


def _why(exc: Exception) -> str:
    return f"no {exc.args[0]!r} field" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__


_num = slurmfmt.number


def _json_record(job: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(job, dict):
        raise ValueError("not a JSON object")
    job_id = str(int(job["job_id"]))
    req = job.get("required") or {}
    cpus = _num(req.get("CPUs"))
    nodes = _num(job.get("allocation_nodes"))
    per_cpu, per_node = _num(req.get("memory_per_cpu")), _num(req.get("memory_per_node"))
    legacy = req.get("memory")  # up to 22.05: MiB per node, or per CPU with bit 63 set (exact: an int)
    if isinstance(legacy, int) and per_cpu is None and per_node is None:
        per_cpu, per_node = (float(legacy - 2**63), None) if legacy >= 2**63 else (None, float(legacy))
    mem = (per_cpu * 2**20 * cpus if per_cpu and cpus else
           per_node * 2**20 * (nodes or 1) if per_node else None)
    tm = job.get("time")
    if not isinstance(tm, dict):
        raise ValueError("no 'time' object")
    limit = _num(tm.get("limit"))
    raw_state = (job.get("state") or {}).get("current")
    tres = (job.get("tres") or {}).get("requested") or (job.get("tres") or {}).get("allocated") or []
    gpus = sum(int(_num(t.get("count")) or 0) for t in tres
               if t.get("type") == "gres" and str(t.get("name", "")).split(":")[0] == "gpu")
    start, end = _num(tm.get("start")), _num(tm.get("end"))
    node_list = _nodes(job.get("nodes"))
    return {"job_id": job_id, "user": job.get("user") or None, "partition": job.get("partition") or None,
            "account": job.get("account") or None, "req_cpus": cpus, "req_mem_bytes": mem,
            "req_gpus": gpus, "time_limit_s": limit * 60.0 if limit else None,
            "submit_ts": _num(tm.get("submission")) or None,
            "start_ts": start if start and node_list is not None else None,
            "end_ts": end or None, "state": raw_state, "num_nodes": nodes, "nodes": node_list,
            "exit_code": _exit_code(job.get("exit_code"))}


def _exit_code(value: Any) -> str | None:
    if isinstance(value, dict):
        signal = value.get("signal") or {}  # {"id": ..} from 23.02, {"signal_id": ..} before
        rc, sig = _num(value.get("return_code")), _num(signal.get("id", signal.get("signal_id")))
        return f"{int(rc or 0)}:{int(sig or 0)}"
    return None if value is None else str(value)


