"""Job history from accounting logs: SWF traces and ``sacct`` output → :class:`Trace`.

What becomes a feature is only what is known at submit or start: requested CPUs,
memory, GPUs, time limit, user (and group, executable, queue, partition, account as
categorical codes), submit and start time. Runtime, used CPU/memory and the final
state are kept only for labels and evaluation (``end_ts``, ``state``, ``label``);
see ``../shared/data/traces/README.md`` on leakage.

**SWF** (Standard Workload Format, https://www.cs.huji.ac.il/labs/parallel/workload/swf.html):
18 whitespace-separated fields per line, ``;`` header comments, -1 unknown, optionally
gzip-compressed. Times are seconds since the header's ``UnixStartTime`` (0 if absent).
Status (field 11) → state: 1 COMPLETED, 0 FAILED, 5 CANCELLED, 3 COMPLETED and
4 FAILED (last part of a checkpointed job), 2 PARTIAL (a part that continues: no
label), -1 unknown (no label).

**sacct**: ``sacct --parsable2`` with the fields of :data:`SACCT_FORMAT` (a header line
names them; without one this order is assumed), or ``sacct --json``. Job steps
(``123.batch``, ``123.extern``, ``123.0``) are skipped: a step is part of its job.
Produce the text with::

    sacct --allusers --allocations --parsable2 --starttime 2024-01-01 \\
          --format JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit,Submit,Start,End,State,ExitCode,NNodes,NodeList
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nomade import states
from nomade.errors import NomadeError
from nomade.features import JobTable, label_of

SACCT_FORMAT = ("JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit,"
                "Submit,Start,End,State,ExitCode,NNodes,NodeList")
SWF_STATUS = {1: "COMPLETED", 0: "FAILED", 5: "CANCELLED", 3: "COMPLETED", 4: "FAILED", 2: "PARTIAL"}
CATEGORIES = ("group", "executable", "queue", "partition", "account")
Progress = Callable[[int, int], None]
"""Called with (bytes read so far, total bytes or 0 if unknown)."""


@dataclass
class Trace:
    """Parsed history: the jobs, their names, and what was skipped.

    ``names[col]`` lists the original names of the int codes in ``jobs.user``
    (``col = "user"``) and ``jobs.cat[col]``; ``extra`` has per-job strings that are not
    features (``exit_code``, ``nodes``) where the source gives them.
    """

    jobs: JobTable
    names: dict[str, list[str]]
    source: str
    skipped: int = 0
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Jobs, labelled jobs, failure rate and date range (POSIX s), JSON-safe."""
        lab = self.jobs.label[np.isfinite(self.jobs.label)]
        sub = self.jobs.submit_ts[np.isfinite(self.jobs.submit_ts)]
        end = self.jobs.end_ts[np.isfinite(self.jobs.end_ts)]
        return {"source": self.source, "jobs": len(self.jobs), "labelled": int(len(lab)),
                "failed": int(lab.sum()), "failure_rate": float(lab.mean()) if len(lab) else None,
                "first_submit_ts": float(sub.min()) if len(sub) else None,
                "last_end_ts": float(end.max()) if len(end) else None, "skipped_lines": self.skipped}


class _Codes:
    """Names → dense int codes, -1 for unknown."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, name: Any) -> int:
        if name is None or name == "" or name == "-1":
            return -1
        return self.index.setdefault(str(name), len(self.index))

    def names(self) -> list[str]:
        return list(self.index)


# ---------------------------------------------------------------- input

def _open_text(path: str | Path, progress: Progress | None) -> Iterator[str]:
    """Lines of a file (gzip by magic bytes) or of stdin for ``-``, reporting progress."""
    if str(path) == "-":
        import sys
        yield from sys.stdin
        return
    p = Path(path)
    try:
        raw: BinaryIO = p.open("rb")
    except OSError as exc:
        raise NomadeError(f"cannot read {p}: {exc.strerror}") from exc
    total = p.stat().st_size
    with raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gz else raw  # type: ignore[assignment]
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
        for n, line in enumerate(text):
            if progress is not None and n % 20000 == 0:
                progress(raw.tell(), total)
            yield line
        if progress is not None:
            progress(total, total)


# ---------------------------------------------------------------- SWF

def read_swf(path: str | Path, progress: Progress | None = None) -> Trace:
    """Parse an SWF file (``.gz`` ok) into a :class:`Trace`.

    CPUs are the requested processors (field 8), or the allocated ones (field 5) where
    the request is -1: allocation is fixed when the job starts, so it is known at the
    as-of time of every start-time or later feature. Requested memory (field 10, KB
    per processor) is scaled by that CPU count. GPUs are 0 (the archive's machines had
    none). End = start + runtime is kept for labels and history only.
    """
    rows, header, skipped = [], {}, 0
    for line in _open_text(path, progress):
        s = line.strip()
        if not s:
            continue
        if s.startswith(";"):
            key, sep, value = s[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
            continue
        parts = s.split()
        try:
            if len(parts) != 18:
                raise ValueError
            rows.append([float(x) for x in parts])
        except ValueError:
            skipped += 1
    if not rows:
        raise NomadeError(f"{path}: no SWF job lines (18 numbers each) found")
    return _swf_trace(np.array(rows, dtype=np.float64), header, str(path), skipped)


def _swf_trace(a: np.ndarray, header: dict[str, str], source: str, skipped: int) -> Trace:
    def col(i: int) -> np.ndarray:  # 1-based SWF field, -1 → NaN
        v = a[:, i - 1]
        return np.where(v < 0, np.nan, v)

    origin = float(header.get("UnixStartTime", "0") or 0)
    cpus = np.where(np.isfinite(col(8)), col(8), col(5))
    cpus = np.where(cpus > 0, cpus, np.nan)
    submit = col(2) + origin
    start = submit + col(3)
    status = a[:, 10].astype(np.int64)
    state = np.array([SWF_STATUS.get(int(s)) for s in status], dtype=object)
    codes = {c: _Codes() for c in ("user", *CATEGORIES[:4])}
    fields = {"user": 12, "group": 13, "executable": 14, "queue": 15, "partition": 16}
    coded = {c: np.array([codes[c](str(int(v))) for v in a[:, fields[c] - 1]], dtype=np.int64)
             for c in codes}
    jobs = JobTable(
        job_id=np.array([str(int(v)) for v in a[:, 0]], dtype=object), user=coded.pop("user"),
        req_cpus=cpus, req_mem_bytes=col(10) * 1024.0 * cpus, req_gpus=np.zeros(len(a)),
        time_limit_s=np.where(col(9) > 0, col(9), np.nan), submit_ts=submit, start_ts=start,
        end_ts=start + col(4), state=state, label=np.array([label_of(s) for s in state]),
        cat=coded)
    return Trace(jobs, {c: codes[c].names() for c in codes}, source, skipped)


# ---------------------------------------------------------------- sacct --parsable2

_STEP = re.compile(r"^\d+(_\d+)?\.")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)([nc]?)$", re.IGNORECASE)
_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_GPU = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")


def read_sacct(path: str | Path, progress: Progress | None = None) -> Trace:
    """Parse ``sacct --parsable2`` text or ``sacct --json`` (detected by a leading ``{``)
    from a file or ``-`` (stdin) into a :class:`Trace`."""
    lines = _open_text(path, progress)
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise NomadeError(f"{path}: empty sacct output")
    if first.lstrip().startswith("{"):
        text = first + "".join(lines)
        try:
            return parse_sacct_json(json.loads(text), str(path))
        except json.JSONDecodeError as exc:
            raise NomadeError(f"{path}: not valid sacct --json output: {exc}") from exc
    return parse_sacct_lines(_chain(first, lines), str(path))


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def parse_sacct_lines(lines: Iterable[str], source: str = "sacct") -> Trace:
    """Parse ``--parsable2`` lines (``|``-separated); a header line names the fields,
    else :data:`SACCT_FORMAT` order is assumed. Malformed lines are counted, not fatal."""
    names = SACCT_FORMAT.split(",")
    records, skipped = [], 0
    for n, line in enumerate(lines):
        parts = line.rstrip("\r\n").split("|")
        if n == 0 and parts and parts[0] == "JobID":
            names = parts
            continue
        if not line.strip():
            continue
        if len(parts) != len(names):
            skipped += 1
            continue
        row = dict(zip(names, parts))
        if _STEP.match(row.get("JobID", "")):
            continue
        try:
            records.append(_sacct_record(row))
        except (KeyError, ValueError):
            skipped += 1
    return _trace_from_records(records, source, skipped)


def _sacct_record(row: dict[str, str]) -> dict[str, Any]:
    """One ``--parsable2`` row → start/end body fields (raises ValueError if malformed)."""
    job_id = row["JobID"]
    if not re.match(r"^\d+(_\d+)?$", job_id):
        raise ValueError(job_id)  # e.g. a pending array "123_[1-5]": not one job
    cpus = _int_or_none(row.get("ReqCPUS"))
    nodes = _int_or_none(row.get("NNodes"))
    tres = row.get("ReqTRES") or row.get("AllocTRES") or ""
    gpus = _GPU.search(tres) or _GPU.search(row.get("AllocTRES", ""))
    state = states.normalise(row.get("State"))
    return {"job_id": job_id, "user": row.get("User") or None, "partition": row.get("Partition") or None,
            "account": row.get("Account") or None, "req_cpus": cpus,
            "req_mem_bytes": _req_mem(row.get("ReqMem", ""), cpus, nodes),
            "req_gpus": int(gpus.group(1)) if gpus else 0,
            "time_limit_s": _duration(row.get("Timelimit", "")),
            "submit_ts": _time(row.get("Submit", "")), "start_ts": _time(row.get("Start", "")),
            "end_ts": _time(row.get("End", "")) if states.is_final(state) else None,
            "state": state, "num_nodes": nodes, "nodes": _nodes(row.get("NodeList")),
            "exit_code": row.get("ExitCode") or None}


def _nodes(text: Any) -> str | None:
    """A node list, or None for Slurm's ``None assigned`` / empty."""
    return text if isinstance(text, str) and text and text != "None assigned" else None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _req_mem(text: str, cpus: int | None, nodes: int | None) -> float | None:
    """``4000M``, ``4G``, ``2Gc`` (per CPU), ``4Gn`` (per node) → bytes; None if unknown."""
    m = _MEM.match(text.strip())
    if not m:
        return None
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    per = m.group(3).lower()
    if per == "c":
        return value * cpus if cpus else None
    return value * (nodes or 1) if per == "n" else value


def _duration(text: str) -> float | None:
    """Slurm durations → seconds: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``; ``UNLIMITED``, ``Partition_Limit`` and anything else → None."""
    days, sep, rest = text.strip().rpartition("-")
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or (sep and not days.isdigit()) or len(parts) > 3:
        return None
    nums = [int(p) for p in parts]
    if sep:
        h, m, s = (nums + [0, 0])[:3]
    else:
        h, m, s = {1: [0, nums[0], 0], 2: [0, *nums], 3: nums}[len(nums)]
    return float((int(days) if sep else 0) * 86400 + h * 3600 + m * 60 + s)


def _time(text: str) -> float | None:
    """``2024-01-02T03:04:05`` (local time, as sacct prints) → POSIX s; Unknown/None → None."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


# ---------------------------------------------------------------- sacct --json

def parse_sacct_json(data: Any, source: str = "sacct --json") -> Trace:
    """Parse ``sacct --json`` output (``{"jobs": [...]}``, Slurm 21-25 layouts: numbers
    either plain or as ``{"set", "infinite", "number"}``). Steps live inside each job
    and are not read."""
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise NomadeError(f"{source}: sacct --json output has no 'jobs' list")
    records, skipped = [], 0
    for job in data["jobs"]:
        try:
            records.append(_json_record(job))
        except (KeyError, TypeError, ValueError):
            skipped += 1
    return _trace_from_records(records, source, skipped)


def _num(value: Any) -> float | None:
    """A plain number, or Slurm's ``{"set": bool, "infinite": bool, "number": n}``."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite", False):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _json_record(job: dict[str, Any]) -> dict[str, Any]:
    job_id = str(int(job["job_id"]))
    array = job.get("array") or {}
    task = _num(array.get("task_id"))
    if task is not None and _num(array.get("job_id")):
        job_id = f"{int(_num(array['job_id']) or 0)}_{int(task)}"
    req = job.get("required") or {}
    cpus = _num(req.get("CPUs"))
    nodes = _num(job.get("allocation_nodes"))
    per_cpu, per_node = _num(req.get("memory_per_cpu")), _num(req.get("memory_per_node"))
    legacy = _num(req.get("memory"))  # Slurm 22.05: MB per node, or per CPU with bit 63 set
    if legacy is not None and per_cpu is None and per_node is None:
        per_cpu, per_node = (legacy - 2**63, None) if legacy >= 2**63 else (None, legacy)
    mem = (per_cpu * 2**20 * cpus if per_cpu and cpus else
           per_node * 2**20 * (nodes or 1) if per_node else None)
    tm = job.get("time") or {}
    limit = _num(tm.get("limit"))
    raw_state = (job.get("state") or {}).get("current")
    state = states.normalise(raw_state)
    tres = (job.get("tres") or {}).get("requested") or (job.get("tres") or {}).get("allocated") or []
    gpus = sum(int(_num(t.get("count")) or 0) for t in tres
               if t.get("type") == "gres" and str(t.get("name", "")).split(":")[0] == "gpu")
    start = _num(tm.get("start"))
    end = _num(tm.get("end"))
    return {"job_id": job_id, "user": job.get("user") or None, "partition": job.get("partition") or None,
            "account": job.get("account") or None, "req_cpus": cpus, "req_mem_bytes": mem,
            "req_gpus": gpus, "time_limit_s": limit * 60.0 if limit else None,
            "submit_ts": _num(tm.get("submission")), "start_ts": start if start else None,
            "end_ts": end if end and states.is_final(state) else None, "state": state,
            "num_nodes": nodes, "nodes": _nodes(job.get("nodes")),
            "exit_code": _exit_code(job.get("exit_code"))}


def _exit_code(value: Any) -> str | None:
    if isinstance(value, dict):
        rc, sig = _num(value.get("return_code")), _num((value.get("signal") or {}).get("id"))
        return f"{int(rc or 0)}:{int(sig or 0)}"
    return None if value is None else str(value)


def _trace_from_records(records: list[dict[str, Any]], source: str, skipped: int) -> Trace:
    users: dict[str, int] = {}
    jobs = JobTable.from_records(records, users)
    cats = {c: _Codes() for c in ("partition", "account")}
    jobs.cat = {c: np.array([cats[c](r.get(c)) for r in records], dtype=np.int64) for c in cats}
    extra = {k: [r.get(k) for r in records] for k in ("num_nodes", "nodes", "exit_code")}
    return Trace(jobs, {"user": list(users), **{c: cats[c].names() for c in cats}},
                 source, skipped, extra)


def messages(trace: Trace) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """``(job.start body, job.end body or None)`` per job, for writing into the store.

    Unknown values are None; ``source`` is ``"import"``. The end body is given only
    for jobs with a known end time.
    """
    j = trace.jobs
    def name(col: str, code: int) -> str | None:
        return trace.names[col][code] if code >= 0 and col in trace.names else None
    def opt(x: float) -> float | None:
        return None if math.isnan(x) else float(x)
    part = j.cat.get("partition", np.full(len(j), -1))
    acct = j.cat.get("account", np.full(len(j), -1))
    nodes = trace.extra.get("nodes", [None] * len(j))
    num_nodes = trace.extra.get("num_nodes", [None] * len(j))
    exit_codes = trace.extra.get("exit_code", [None] * len(j))
    for i in range(len(j)):
        cpus, mem, gpus = opt(j.req_cpus[i]), opt(j.req_mem_bytes[i]), opt(j.req_gpus[i])
        start = {"job_id": j.job_id[i], "user": name("user", int(j.user[i])), "uid": None,
                 "partition": name("partition", int(part[i])), "account": name("account", int(acct[i])),
                 "nodes": _node_names(nodes[i]), "num_nodes": num_nodes[i],
                 "req_cpus": None if cpus is None else int(cpus),
                 "req_mem_bytes": None if mem is None else int(mem),
                 "req_gpus": None if gpus is None else int(gpus),
                 "time_limit_s": opt(j.time_limit_s[i]), "submit_ts": opt(j.submit_ts[i]),
                 "start_ts": opt(j.start_ts[i]), "source": "import"}
        end = None
        if not math.isnan(j.end_ts[i]):
            code, signal = _split_exit(exit_codes[i])
            end = {"job_id": j.job_id[i], "end_ts": float(j.end_ts[i]), "exit_code": code,
                   "signal": signal, "state": j.state[i], "source": "import"}
        yield start, end


def _split_exit(text: str | None) -> tuple[int | None, int | None]:
    """sacct's ``"3:0"`` (exit code : signal) → (3, 0); unknown → (None, None)."""
    code, _, signal = (text or "").partition(":")
    return (int(code) if code.isdigit() else None, int(signal) if signal.isdigit() else None)


def _node_names(text: str | None) -> list[str]:
    """``"n1,n2"`` → names; a compressed hostlist (``n[1-2]``) is not expanded here: []."""
    return [] if not text or "[" in text else text.split(",")
