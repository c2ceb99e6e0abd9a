"""Job history from accounting logs: SWF traces and ``sacct`` output → :class:`Trace`.

What becomes a feature is only what is known at submit or start: requested CPUs,
memory, GPUs, time limit, user (and group, executable, queue, partition, account as
categorical codes), submit and start time. Runtime, used CPU/memory and the final
state are kept only for labels and evaluation (``end_ts``, ``state``, ``label``);
see ``../shared/data/traces/README.md`` on leakage. Slurm's job completion logs
(``jobcomp/filetxt``, ``jobcomp/elasticsearch``) are read by ``nomade.jobcomp``.

Files are taken as they come, and strictly: a line or record that cannot be read (a
wrong field count, a number or time that is not one, a truncated gzip or JSON) raises
``NomadeError`` naming the file, the line and the record, before anything is written
anywhere. With ``partial=True`` such records are skipped and counted instead
(``Trace.skipped``; a truncated file keeps what was read before the cut,
``Trace.truncated`` says where). Lines that are well formed but not jobs (job steps,
a pending array's ``123_[1-5]`` range) are counted in ``Trace.ignored``.

A job with a final state and no start never ran (cancelled while pending): its start
is None (NaN), which keeps it out of every training and test example (``ml.train``);
``Trace.never_ran`` counts them.

**SWF** (Standard Workload Format, https://www.cs.huji.ac.il/labs/parallel/workload/swf.html):
18 whitespace-separated fields per line, ``;`` header comments, -1 unknown (any field),
optionally gzip-compressed. Times are seconds since the header's ``UnixStartTime``
(0 if absent). Status (field 11) → state: 1 COMPLETED, 0 FAILED, 5 CANCELLED,
3 COMPLETED and 4 FAILED (last part of a checkpointed job), 2 PARTIAL (a part that
continues: no label), -1 unknown (no label). A job with no run time (0 or -1) that
was cancelled, or got no processors, never ran. A job that ran but whose wait (field
3) is unknown has no known start: it is placed as if it started on submission (its
as-of moment is its submit time, its end submit + run time, the earliest it can have
ended); ``Trace.start_unknown`` counts them.

**sacct**: ``sacct --parsable2`` with a header line naming the fields (any order, extra
fields ignored; :data:`SACCT_FORMAT` order is assumed without one), or ``sacct --json``.
Job steps (``123.batch``, ``123.extern``, ``123.0``) are skipped: a step is part of its
job. A job is named by Slurm's own id (``JobIDRaw``, the JSON ``job_id``; ``JobID`` only
where the text has no ``JobIDRaw``), the id the hooks and cgroups use, so imported
history merges with what the agent recorded. Shapes read, by Slurm version:

- ``--parsable2``, 20.11 .. 25.11: ``ReqMem`` with a ``c``/``n`` suffix (per CPU / per
  node, older releases) or without (the job's request), ``Start`` ``Unknown`` or ``None``
  for a job that never started, ``NodeList`` ``None assigned``, ``State``
  ``CANCELLED by UID``; hetjob components ``123+0`` are jobs.
- ``--json`` 21.08 and 22.05 (``openapi/dbv0.0.37``, ``dbv0.0.38``): plain numbers,
  ``state.current`` a string, ``required.memory`` in MiB (per CPU when bit 63 is set).
- ``--json`` 23.02 .. 25.11 (``data_parser`` v0.0.39 .. v0.0.44): numbers as
  ``{"set", "infinite", "number"}``, ``state.current`` a list, ``required.memory_per_cpu``
  and ``memory_per_node``, ``exit_code.signal.id``. (20.11's ``sacct`` has no ``--json``.)

Produce the text with::

    sacct --allusers --allocations --parsable2 --starttime 2024-01-01 \\
          --format=JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit,Submit,Start,End,State,ExitCode,NNodes,NodeList
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nomade import slurmfmt, states, wire
from nomade.errors import NomadeError
from nomade.features import JobTable

SACCT_FORMAT = ("JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit,"
                "Submit,Start,End,State,ExitCode,NNodes,NodeList")
SWF_STATUS = {1: "COMPLETED", 0: "FAILED", 5: "CANCELLED", 3: "COMPLETED", 4: "FAILED", 2: "PARTIAL"}
CATEGORIES = ("group", "executable", "queue", "partition", "account")
Progress = Callable[[int, int], None]
"""Called with (bytes read so far, total bytes or 0 if unknown)."""
PROGRESS_LINES = 20000
"""Lines between two progress calls."""


@dataclass
class Trace:
    """Parsed history: the jobs, their names, and what was left out.

    ``names[col]`` lists the original names of the int codes in ``jobs.user``
    (``col = "user"``) and ``jobs.cat[col]``; ``extra`` has per-job strings that are not
    features (``exit_code``, ``nodes``) where the source gives them. ``skipped``:
    malformed records left out (only with ``partial``); ``ignored``: lines that are not
    jobs (steps, pending array ranges); ``truncated``: where a cut file ended (with
    ``partial``); ``start_unknown``: jobs that ran with no known start (as of submit);
    ``never_ran``: jobs with a final state that never started; ``shape``: the format
    and, where the file says, the Slurm version.
    """

    jobs: JobTable
    names: dict[str, list[str]]
    source: str
    skipped: int = 0
    extra: dict[str, list[Any]] = field(default_factory=dict)
    ignored: int = 0
    truncated: str | None = None
    start_unknown: int = 0
    shape: str = ""

    @property
    def never_ran(self) -> int:
        """Jobs with a final state (a label) but no start: cancelled while pending."""
        return int((np.isfinite(self.jobs.label) & ~np.isfinite(self.jobs.start_ts)).sum())

    def summary(self) -> dict[str, Any]:
        """Jobs, labelled jobs, failure rate, date range (POSIX s) and what was left
        out or assumed, JSON-safe."""
        lab = self.jobs.label[np.isfinite(self.jobs.label)]
        sub = self.jobs.submit_ts[np.isfinite(self.jobs.submit_ts)]
        end = self.jobs.end_ts[np.isfinite(self.jobs.end_ts)]
        return {"source": self.source, "shape": self.shape, "jobs": len(self.jobs), "labelled": int(len(lab)),
                "failed": int(lab.sum()), "failure_rate": float(lab.mean()) if len(lab) else None,
                "never_ran": self.never_ran, "start_unknown": self.start_unknown,
                "first_submit_ts": float(sub.min()) if len(sub) else None,
                "last_end_ts": float(end.max()) if len(end) else None, "skipped_lines": self.skipped,
                "ignored_lines": self.ignored, "truncated": self.truncated}


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


@dataclass
class Issues:
    """How one file's bad records are met: an error naming the record (default), or,
    with ``partial``, a count of the records skipped."""

    source: str
    partial: bool = False
    skipped: int = 0
    truncated: str | None = None

    def bad(self, where: str, why: str, text: str = "") -> None:
        """A malformed record at ``where`` (e.g. ``line 12``): raise, or count it."""
        if not self.partial:
            shown = f": {text.strip()[:160]!r}" if text.strip() else ""
            raise NomadeError(f"{self.source}: {where}: {why}{shown}; nothing was imported "
                              "(fix the file, or give --partial to import the other records)")
        self.skipped += 1

    def cut(self, where: str, why: str) -> None:
        """The file ends early (truncated gzip, JSON): raise, or note where and go on."""
        if not self.partial:
            raise NomadeError(f"{self.source}: truncated or corrupt {where}: {why}; nothing was imported "
                              "(give --partial to import what comes before)")
        self.truncated = f"{where}: {why}"


# ---------------------------------------------------------------- input

def numbered_lines(path: str | Path, issues: Issues, progress: Progress | None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a file (gzip by magic bytes) or of stdin for ``-``,
    reporting progress; a gzip stream that breaks off goes to ``issues.cut``."""
    if str(path) == "-":
        import sys
        yield from enumerate(sys.stdin, 1)
        return
    p = Path(path)
    try:
        raw: BinaryIO = p.open("rb")
    except OSError as exc:
        raise NomadeError(f"cannot read {p}: {exc.strerror}") from exc
    total = p.stat().st_size
    n = 0
    with raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gz else raw  # type: ignore[assignment]
        try:
            for n, line in enumerate(_decoded(stream), 1):
                if progress is not None and n % PROGRESS_LINES == 0:
                    progress(raw.tell(), total)
                yield n, line
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            issues.cut(f"after line {n}", str(exc))
        if progress is not None:
            progress(total, total)


def _decoded(stream: BinaryIO) -> Iterator[str]:
    """UTF-8 lines (undecodable bytes replaced: names only, never numbers, carry them)."""
    for raw_line in stream:
        yield raw_line.decode("utf-8", errors="replace")


# ---------------------------------------------------------------- SWF

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


_STATES: dict[Any, tuple[str | None, float]] = {}


def _state(raw: Any) -> tuple[str | None, float]:
    """(normalised state, label or NaN) of a raw state, cached (a history repeats few)."""
    key = tuple(raw) if isinstance(raw, list) else raw
    got = _STATES.get(key)
    if got is None:
        name = states.normalise(raw)
        label = states.label_for(name)
        got = (name, math.nan if label is None else float(label))
        if len(_STATES) < 10000:
            _STATES[key] = got
    return got


def _label(state: Any) -> float:
    return _state(state)[1]


# ---------------------------------------------------------------- sacct --parsable2

_STEP = re.compile(r"^\d+(_\d+)?(\+\d+)?\.")
_JOB = re.compile(r"^\d+(_\d+)?(\+\d+)?$")
_ARRAY_RANGE = re.compile(r"^\d+_\[[\d,\-%:]+\]$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)([nc]?)$", re.IGNORECASE)
_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_GPU = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")
_NO_TIME = frozenset({"", "Unknown", "unknown", "None", "N/A"})


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


def _finish(trace: Trace, issues: Issues) -> Trace:
    trace.skipped, trace.truncated = issues.skipped, issues.truncated
    return trace


def _chain(first: tuple[int, str], rest: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


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
        row = dict(zip(names, parts))
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


def _count(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{name} {text!r} is not a count")
    return int(text)


def _nodes(text: Any) -> str | None:
    """A node list as written (``n[1-2],g1``), or None for Slurm's ``None assigned`` /
    empty; ValueError if it is not a host list of at most ``wire.MAX_NODES`` hosts."""
    if not isinstance(text, str) or not text or text in ("None assigned", "(null)"):
        return None
    slurmfmt.expand_hostlist(text, wire.MAX_NODES)
    return text


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


def tres_mem(tres: str) -> float | None:
    """Bytes of ``mem=`` in a TRES string (``cpu=4,mem=8G,node=1``); None if absent."""
    for part in tres.split(","):
        key, _, value = part.partition("=")
        if key == "mem":
            return _req_mem(value, None, None)
    return None


def tres_gpus(tres: str) -> int:
    """GPUs in a TRES string (``gres/gpu=2``; typed ``gres/gpu:a100=2`` if untyped absent)."""
    m = _GPU.search(tres)
    return int(m.group(1)) if m else 0


_LOCAL_OFFSET: dict[str, float] = {}


def _time(text: str, name: str = "time", utc: bool = False) -> float | None:
    """``2024-01-02T03:04:05`` → POSIX s: local time as sacct and jobcomp/filetxt print
    it, or UTC (``utc``, as jobcomp/elasticsearch writes it) unless the text carries an
    offset; ``Unknown``/``None``/empty → None; anything else is malformed (ValueError)."""
    text = text.strip()
    if text in _NO_TIME:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a time") from None
    if dt.tzinfo is not None or utc:
        return dt.replace(tzinfo=dt.tzinfo or timezone.utc).timestamp()
    naive = (dt - _EPOCH).total_seconds()
    hour = text[:13]  # the local offset is the same all hour (up to a DST change's hour)
    offset = _LOCAL_OFFSET.get(hour)
    if offset is None:
        offset = dt.timestamp() - naive
        if len(_LOCAL_OFFSET) < 100000:
            _LOCAL_OFFSET[hour] = offset
    return naive + offset


_EPOCH = datetime(1970, 1, 1)


# ---------------------------------------------------------------- JSON records

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


START_KEYS = ("job_id", "user", "uid", "partition", "account", "nodes", "num_nodes", "req_cpus",
              "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts", "source", "cluster")
END_KEYS = ("job_id", "end_ts", "exit_code", "signal", "state", "source")
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
    final = np.array([name in states.FINAL_STATES for name, _ in named], dtype=bool)
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
        body = dict(zip(START_KEYS, (
            job_id, user[i], None, part[i], acct[i], _node_names(nodes[i]),
            None if num_nodes[i] is None else int(num_nodes[i]), cpus[i], mem[i], gpus[i], limit[i],
            submit[i], start[i], "import", None)))
        done = None
        if end[i] is not None:
            code, signal = _split_exit(exit_codes[i])
            done = dict(zip(END_KEYS, (job_id, end[i], code, signal, j.state[i], "import")))
        yield body, done


def _split_exit(text: str | None) -> tuple[int | None, int | None]:
    """sacct's ``"3:0"`` (exit code : signal) → (3, 0); unknown → (None, None)."""
    code, _, signal = (text or "").partition(":")
    return (int(code) if code.isdigit() else None, int(signal) if signal.isdigit() else None)


def _node_names(text: str | None) -> list[str]:
    """A node list (checked by :func:`_nodes` when read) → host names: ``n[1-2]`` → n1 n2."""
    return slurmfmt.expand_hostlist(text, wire.MAX_NODES) if text else []
