"""``nomade import sacct --since DATE``: a site's history from slurmdbd, in one command.

``sacct`` is run for consecutive time windows (``window_days`` each, oldest first) from
``since`` to ``until`` (default now), each window parsed strictly (``nomade.traces``)
and written into the store in its own transaction. After each window the cursor file
beside the store (``<db>.sacct-cursor.json``: the span done so far) is rewritten, so an
interrupted import resumes where it stopped. A job pending or running across windows
comes back in each of them; the store merges its records (nothing is duplicated), and
its end arrives with the window it ended in.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from nomade.errors import NomadeError

WINDOW_DAYS = 7.0
FIELDS = "JobIDRaw,JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit," \
         "Submit,Start,End,State,ExitCode,NNodes,NodeList"
"""What ``sacct`` is asked for: the fields ``traces.read_sacct`` reads, Slurm's raw id first."""


def parse_date(text: str) -> float:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (local time, as sacct reads it) → POSIX s."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise NomadeError(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)") from None


def sacct_time(ts: float) -> str:
    """POSIX s → the local ``YYYY-MM-DDTHH:MM:SS`` sacct takes."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


def cursor_path(db: Path) -> Path:
    return db.with_name(db.name + ".sacct-cursor.json")


def read_cursor(path: Path) -> tuple[float, float] | None:
    """(since, done_until) of an earlier import into this store, or None."""
    try:
        data = json.loads(path.read_text())
        return float(data["since"]), float(data["done_until"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NomadeError(f"{path}: unreadable import cursor ({e}); delete it to import from --since again") from e


def write_cursor(path: Path, since: float, done_until: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"since": since, "done_until": done_until,
                               "since_text": sacct_time(since), "done_until_text": sacct_time(done_until)}))
    os.replace(tmp, path)


def windows(since: float, until: float, days: float, cursor: tuple[float, float] | None
            ) -> tuple[float, list[tuple[float, float]]]:
    """The span's start (earlier progress kept: a cursor whose span starts at or before
    ``since`` resumes at its end) and the windows still to fetch, oldest first."""
    if not days > 0 or not math.isfinite(days):
        raise NomadeError(f"--window-days must be > 0, got {days:g}")
    if not since < until:
        raise NomadeError(f"--since ({sacct_time(since)}) must be before --until ({sacct_time(until)})")
    start = since
    if cursor is not None and cursor[0] <= since < cursor[1]:
        start, since = cursor[1], cursor[0]
    step = days * 86400.0
    edges = [start + i * step for i in range(int(math.ceil((until - start) / step)))] + [until]
    return since, [(a, b) for a, b in pairwise(edges) if b > a]


def backfill(slurm: Any, db: Path, since: float, until: float | None = None, days: float = WINDOW_DAYS,
             partial: bool = False, say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Import every window still to do (see the module docstring); returns the totals."""
    from nomade.commands.import_ import write_store
    from nomade.traces import parse_sacct_lines

    until = time.time() if until is None else until
    cursor = cursor_path(db)
    since, todo = windows(since, until, days, read_cursor(cursor))
    totals = {"windows": len(todo), "jobs": 0, "written_jobs": 0, "never_ran": 0, "skipped_lines": 0,
              "since": sacct_time(since), "until": sacct_time(until), "db": str(db)}
    for k, (a, b) in enumerate(todo, 1):
        text = slurm.accounting(sacct_time(a), sacct_time(b), FIELDS)
        trace = parse_sacct_lines(text.splitlines(keepends=True), f"sacct {sacct_time(a)}..{sacct_time(b)}",
                                  partial)
        written, _ = write_store(trace, db, None, partial)
        write_cursor(cursor, since, b)
        for key, n in (("jobs", len(trace.jobs)), ("written_jobs", written), ("never_ran", trace.never_ran),
                       ("skipped_lines", trace.skipped)):
            totals[key] += n
        say(f"window {k}/{len(todo)} {sacct_time(a)} .. {sacct_time(b)}: {len(trace.jobs):,} jobs")
    return totals
