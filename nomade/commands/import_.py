"""``nomade import swf|sacct``: job history from accounting logs, as training data.

Example::

    $ nomade import sacct history.txt
    sacct history.txt: 48,113 jobs, 47,902 with a final state, 9,311 failed (19.4%)
      submitted 2024-01-02 08:11 .. ended 2024-06-30 23:58 UTC; 2 lines skipped
    wrote 48,113 jobs into /var/lib/nomade/nomade.db

``sacct`` output is the site's own history and goes into the store unless
``--dry-run``. An SWF trace (another machine's public log) is only summarised unless
``--into-store``; give it its own store with ``--db`` (SWF job ids would otherwise
meet the site's own ids). Only what is known at submit or start becomes a feature;
runtime and final state are kept for labels (see ``nomade/traces.py``).
Re-importing is harmless: job records merge, nothing is duplicated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from nomade.config import Config

NAME = "import"
HELP = "import job history (SWF trace, sacct output) as training data"
CHUNK_JOBS = 2000
"""Jobs per store transaction."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``import swf FILE [--into-store]`` and ``import sacct FILE|- [--dry-run]``."""
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
    sacct.add_argument("file", help="the file, or - for stdin")
    sacct.add_argument("--dry-run", action="store_true", help="only parse and summarise")
    for p in (swf, sacct):
        p.add_argument("--db", metavar="PATH", help="store file (default: [storage] db_path)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Parse, summarise on stdout, and write into the store where asked; returns 0."""
    from nomade import traces

    bar = Progress(f"reading {args.file}")
    reader = traces.read_swf if args.import_format == "swf" else traces.read_sacct
    trace = reader(args.file, progress=bar)
    bar.done()
    summary = trace.summary()
    write = args.into_store if args.import_format == "swf" else not args.dry_run
    if write:
        db = Path(args.db) if args.db else cfg.paths().db_path
        cluster = Path(args.file).name.split(".swf")[0] if args.import_format == "swf" else None
        summary["written_jobs"] = write_store(trace, db, cluster)
        summary["db"] = str(db)
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0


def write_store(trace: Any, db: Path, cluster: str | None) -> int:
    """Write job.start/job.end messages of every job into the store at ``db``; returns
    how many jobs. Jobs whose id Slurm could not have given are counted and left out."""
    from nomade import traces, wire
    from nomade.store import Store

    db.parent.mkdir(parents=True, exist_ok=True)
    bar = Progress(f"writing {db}", unit="jobs")
    total, written = len(trace.jobs), 0
    with Store(db) as store:
        for chunk in _chunks(traces.messages(trace), CHUNK_JOBS):
            msgs = []
            for start, end in chunk:
                try:
                    msgs.append(wire.make("job.start", "import", 0, dict(start, cluster=cluster)))
                    if end is not None:
                        msgs.append(wire.make("job.end", "import", 0, end, ts=end["end_ts"]))
                except wire.WireError:
                    continue
                written += 1
            store.write_messages(msgs)
            bar(written, total)
    bar.done()
    return written


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
    """The summary for people: jobs, failure rate, date range, what was written."""
    rate = "n/a" if s["failure_rate"] is None else f"{100 * s['failure_rate']:.1f}%"
    lines = [f"{s['source']}: {s['jobs']:,} jobs, {s['labelled']:,} with a final state, "
             f"{s['failed']:,} failed ({rate})",
             f"  submitted {_day(s['first_submit_ts'])} .. ended {_day(s['last_end_ts'])} UTC; "
             f"{s['skipped_lines']} lines skipped"]
    if "written_jobs" in s:
        lines.append(f"wrote {s['written_jobs']:,} jobs into {s['db']}")
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
