"""``Trace``, the parsed history, and what every reader shares: ``Issues`` (a bad record
raises or is counted), reading lines from a plain or gzip file, a state's label."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nomade import slurmstates
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



def _finish(trace: Trace, issues: Issues) -> Trace:
    trace.skipped, trace.truncated = issues.skipped, issues.truncated
    return trace


def _chain(first: tuple[int, str], rest: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


_STATES: dict[Any, tuple[str | None, float]] = {}


def _state(raw: Any) -> tuple[str | None, float]:
    """(normalised state, label or NaN) of a raw state, cached (a history repeats few)."""
    key = tuple(raw) if isinstance(raw, list) else raw
    got = _STATES.get(key)
    if got is None:
        name = slurmstates.normalise(raw)
        label = slurmstates.label_for(name)
        got = (name, math.nan if label is None else float(label))
        if len(_STATES) < 10000:
            _STATES[key] = got
    return got


def _label(state: Any) -> float:
    return _state(state)[1]


