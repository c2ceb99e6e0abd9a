"""``nomade import swf|sacct|jobcomp``: job history from accounting logs, as training data.

Example::

    $ nomade import sacct history.txt
    history.txt (sacct --parsable2): 48,113 jobs, 47,902 with a final state, 9,311 failed (19.4%)
      submitted 2024-01-02 08:11 .. ended 2024-06-30 23:58 UTC
      612 never ran (cancelled while pending: left out of training and tests)
      1,204 lines that are not jobs (steps, pending array ranges) ignored
    wrote 48,113 jobs into /var/lib/nomade/nomade.db

``sacct`` output and job completion logs (``jobcomp/filetxt``, ``jobcomp/elasticsearch``)
are the site's own history and go into the store unless ``--dry-run``. An SWF trace
(another machine's public log) is only summarised unless ``--into-store``; give it its
own store with ``--db`` (SWF job ids would otherwise meet the site's own ids). Only
what is known at submit or start becomes a feature; runtime and final state are kept
for labels (see ``nomade/traces/``).

A malformed or truncated file stops the import with an error naming the line and
record, and nothing is written; ``--partial`` imports the records that can be read and
says how many were skipped. The store is written in one transaction: all or nothing.
Re-importing is harmless: job records merge, nothing is duplicated. Progress goes to
stderr on a terminal.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from nomade import jobrecord
from nomade.config import Config
from nomade.errors import NomadeError

NAME = "import"
HELP = "import job history (SWF trace, sacct output, jobcomp log) as training data"
CHUNK_JOBS = 2000
"""Jobs per store transaction."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``import swf FILE [--into-store]``, ``import sacct FILE|- [--dry-run]`` and
    ``import jobcomp FILE|- [--dry-run]``, each with ``--partial``."""
    kinds = parser.add_subparsers(dest="import_format", metavar="FORMAT", required=True)
    swf = kinds.add_parser("swf", help="a Standard Workload Format trace (.swf or .swf.gz)",
                           description="Summarise an SWF trace; with --into-store also write its jobs.")
    swf.add_argument("file", help="the trace file")
    swf.add_argument("--into-store", action="store_true", help="write the jobs into the store")
    sacct = kinds.add_parser(
        "sacct", help="sacct --parsable2 or --json output, from a file or - (stdin)",
        description="Import sacct output. Make it with: sacct --allusers --allocations "
                    "--parsable2 --starttime 2024-01-01 --format "
                    "JobID,User,Partition,Account,ReqCPUS,ReqMem,ReqTRES,AllocTRES,Timelimit,"
                    "Submit,Start,End,State,ExitCode,NNodes,NodeList   (or sacct --json)")
    jobcomp = kinds.add_parser(
        "jobcomp", help="a jobcomp/filetxt log or jobcomp/elasticsearch records, from a file or -",
        description="Import Slurm's job completion log: the JobCompLoc file of jobcomp/filetxt, or "
                    "jobcomp/elasticsearch records (one JSON object a line, a JSON list, or a search "
                    "response).")
    sacct.add_argument("file", nargs="?", help="the file, or - for stdin (or --since instead)")
    live = sacct.add_argument_group("or run sacct here (needs slurmdbd; resumable)")
    live.add_argument("--since", metavar="DATE", help="run sacct for every job from DATE (YYYY-MM-DD) on")
    live.add_argument("--until", metavar="DATE", help="up to DATE (default: now)")
    live.add_argument("--window-days", metavar="N", type=float, default=7.0,
                      help="days of history per sacct call (default 7)")
    jobcomp.add_argument("file", help="the file, or - for stdin")
    for p in (sacct, jobcomp):
        p.add_argument("--dry-run", action="store_true", help="only parse and summarise")
    for p in (swf, sacct, jobcomp):
        p.add_argument("--partial", action="store_true",
                       help="skip (and count) malformed records and import the rest; a truncated file "
                            "is imported up to the cut (default: stop, naming the record, write nothing)")
        p.add_argument("--db", metavar="PATH", help="store file (default: [storage] db_path)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Parse, summarise on stdout, and write into the store where asked; returns 0."""
    from nomade import jobcomp, traces

    if args.import_format == "sacct" and (args.since is None) == (args.file is None):
        raise NomadeError("give either a FILE (or -) or --since DATE")
    if args.import_format == "sacct" and args.since is not None:
        return _backfill(args, cfg)
    bar = Progress(f"reading {args.file}")
    reader = {"swf": traces.read_swf, "sacct": traces.read_sacct, "jobcomp": jobcomp.read_jobcomp}
    try:
        trace = reader[args.import_format](args.file, progress=bar, partial=args.partial)
    finally:
        bar.done()
    summary = trace.summary()
    write = args.into_store if args.import_format == "swf" else not args.dry_run
    if write:
        db = Path(args.db) if args.db else cfg.paths().db_path
        cluster = Path(args.file).name.split(".swf")[0] if args.import_format == "swf" else None
        summary["written_jobs"], summary["refused_jobs"] = write_store(trace, db, cluster, args.partial)
        summary["db"] = str(db)
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0


def _backfill(args: argparse.Namespace, cfg: Config) -> int:
    """``import sacct --since``: sacct run window by window into the store."""
    from nomade import backfill
    from nomade.slurm import Slurm

    if args.dry_run:
        raise NomadeError("--dry-run reads a file; --since writes the store as it goes")
    db = Path(args.db) if args.db else cfg.paths().db_path
    until = None if args.until is None else backfill.parse_date(args.until)
    totals = backfill.backfill(Slurm.from_config(cfg), db, backfill.parse_date(args.since), until,
                               args.window_days, args.partial, lambda line: print(line, file=sys.stderr))
    print(json.dumps(totals, indent=2) if args.json else
          f"sacct {totals['since']} .. {totals['until']}: {totals['jobs']:,} job records in "
          f"{totals['windows']} window(s), {totals['never_ran']:,} never ran; wrote {totals['written_jobs']:,} "
          f"into {totals['db']}")
    return 0


def write_store(trace: Any, db: Path, cluster: str | None, partial: bool = False) -> tuple[int, int]:
    """Write job.start/job.end messages of every job into the store at ``db``, in one
    transaction; returns (jobs written, jobs refused). A job the wire format refuses
    (e.g. an id Slurm could not have given) is an error naming it and nothing is
    written, unless ``partial``: then it is counted and left out."""
    from nomade.store import Store

    db.parent.mkdir(parents=True, exist_ok=True)
    bar = Progress(f"writing {db}", unit="jobs")
    counts = {"written": 0, "refused": 0}
    try:
        with Store(db) as store, _gc_paused():
            store.write_message_chunks(_message_chunks(trace, cluster, partial, counts, bar))
    finally:
        bar.done()
    return counts["written"], counts["refused"]


def _message_chunks(trace: Any, cluster: str | None, partial: bool, counts: dict[str, int],
                    bar: Progress) -> Iterator[list[Any]]:
    """The validated job.start/job.end messages of ``trace``, ``CHUNK_JOBS`` jobs a list;
    counts the jobs written and refused (as :func:`write_store` says) and reports progress."""
    from nomade import traces, wire

    total, now = len(trace.jobs), time.time()
    for chunk in _chunks(traces.message_fields(trace, cluster), CHUNK_JOBS):
        msgs = []
        for start, end in chunk:
            try:
                job = [wire.make_fields("job.start", "import", 0, start, now)]
                if end is not None:
                    job.append(wire.make_fields("job.end", "import", 0, end, end[_END_TS_AT]))
            except wire.WireError as exc:
                if not partial:
                    raise NomadeError(f"{trace.source}: job {start[_JOB_ID_AT]}: {exc}; nothing was imported "
                                      "(give --partial to import the other jobs)") from exc
                counts["refused"] += 1
                continue
            msgs += job
            counts["written"] += 1
        yield msgs
        bar(counts["written"] + counts["refused"], total)


_JOB_ID_AT, _END_TS_AT = jobrecord.START_FIELDS.index("job_id"), jobrecord.END_FIELDS.index("end_ts")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off, and back as it was after: an import makes millions
    of short-lived objects with no cycles, and each collection would walk all alive."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _chunks(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _day(ts: float | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def render(s: dict[str, Any]) -> str:
    """The summary for people: jobs, failure rate, date range, what was left out or
    assumed, what was written."""
    rate = "n/a" if s["failure_rate"] is None else f"{100 * s['failure_rate']:.1f}%"
    shape = f" ({s['shape']})" if s.get("shape") else ""
    lines = [f"{s['source']}{shape}: {s['jobs']:,} jobs, {s['labelled']:,} with a final state, "
             f"{s['failed']:,} failed ({rate})",
             f"  submitted {_day(s['first_submit_ts'])} .. ended {_day(s['last_end_ts'])} UTC"]
    notes = [(s["never_ran"], "never ran (cancelled while pending: left out of training and tests)"),
             (s["start_unknown"], "ran with no known start (wait unknown): their as-of moment is "
                                  "their submit time"),
             (s["ignored_lines"], "line(s) that are not jobs (steps, pending array ranges) ignored"),
             (s["skipped_lines"], "malformed record(s) skipped (--partial)")]
    lines += [f"  {n:,} {text}" for n, text in notes if n]
    if s.get("truncated"):
        lines.append(f"  the file is cut short {s['truncated']} (--partial: imported up to there)")
    if "written_jobs" in s:
        refused = f" ({s['refused_jobs']:,} refused)" if s.get("refused_jobs") else ""
        lines.append(f"wrote {s['written_jobs']:,} jobs into {s['db']}{refused}")
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal's stderr (silent when not a terminal).

    Call it with (done, total); redraws at most ten times a second.
    """

    def __init__(self, label: str, unit: str = "bytes", stream: TextIO | None = None) -> None:
        self.label, self.unit = label, unit
        self.stream = sys.stderr if stream is None else stream
        self.shown = False
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.stream.isatty() or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        if total > 0:
            frac = min(done / total, 1.0)
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            text = f"\r{self.label} [{bar}] {100 * frac:5.1f}%"
        else:
            text = f"\r{self.label} {done:,} {self.unit}"
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False
