"""``nomade db stats|prune``: what the agent's store holds, and its retention by hand.

``stats`` prints rows and bytes per table, the file and its free pages, the oldest and
newest job sample, and running/ended jobs. ``prune`` applies the ``[storage]`` retention
policy now (the agent also does it every ``prune_interval_s``); ``--dry-run`` counts what
it would remove and writes nothing. Both take ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from nomade.config import Config

NAME = "db"
HELP = "store statistics and retention (stats, prune)"

_DESCRIPTION = """\
The agent's SQLite store ([storage] db_path) grows by 70-150 bytes per job sample
(10,000 running jobs at 30 s: 2-4 GB a day) until retention removes what the
[storage] policy no longer keeps. Example:

  $ nomade db stats
  table          rows        bytes
  job_samples    412,331,077 61.2 GB
  ...
  $ nomade db prune --dry-run     what the policy would remove now
  $ nomade db prune               remove it (safe while the agent runs)
"""

_PRUNE_EPILOG = """\
Ended jobs younger than full_samples_days keep every sample; older ones keep at most
thin_samples_to per node (the first, the last, evenly spaced between); after
sample_retention_days their samples go and the job row and label stay. Node samples
and predictions go after their own retention. Jobs still running are never touched.
Freed space is reused by new rows; the file does not shrink. Do not VACUUM a pruned
store: SQLite renumbers rows and the store's sample bounds would be wrong.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``db stats [--json]`` and ``db prune [--dry-run] [--json]``."""
    parser.description = _DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    stats = actions.add_parser("stats", help="rows and bytes per table, sample time range",
                               description="Rows and approximate bytes per table (reads the "
                                           "whole file: seconds per GB), oldest/newest sample.")
    stats.add_argument("--json", action="store_true", help="print JSON")
    prune = actions.add_parser("prune", help="apply the [storage] retention policy now",
                               epilog=_PRUNE_EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    prune.add_argument("--dry-run", action="store_true",
                       help="count what would be removed, write nothing")
    prune.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run the action on ``cfg``'s store; 0."""
    from nomade.store import RetentionPolicy, Store  # lazily: keeps `nomade --help` fast

    path = cfg.paths().db_path
    if args.db_action == "stats":
        with Store(path, readonly=True) as store:
            data: dict[str, Any] = {"path": str(path), **store.storage_stats()}
        print(json.dumps(data, indent=2) if args.json else _stats_text(data))
        return 0
    with Store(path, readonly=args.dry_run) as store:
        counts = store.prune(time.time(), RetentionPolicy.from_config(cfg.storage),
                             dry_run=args.dry_run)
    result = {"path": str(path), "dry_run": args.dry_run, **asdict(counts)}
    print(json.dumps(result, indent=2) if args.json else _prune_text(result))
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _stats_text(d: dict[str, Any]) -> str:
    """The table ``nomade db stats`` prints."""
    counts, sizes = d["counts"], d["bytes"] or {}
    tables = ("jobs", "job_samples", "node_samples", "predictions", "model_runs", "batches")
    lines = [f"store: {d['path']}", f"{'table':<14} {'rows':>14} {'bytes':>10}"]
    lines += [f"{t:<14} {counts[t]:>14,} {_size(sizes.get(t)) if d['bytes'] else '-':>10}"
              for t in tables]
    lines += [f"file: {_size(d['file_bytes'])}, free for reuse: {_size(d['free_bytes'])}",
              f"job samples: oldest {_when(d['oldest_sample_ts'])}, "
              f"newest {_when(d['newest_sample_ts'])}",
              f"jobs: {counts['running']:,} running, "
              f"{counts['jobs'] - counts['running']:,} other ({counts['labelled']:,} labelled)"]
    return "\n".join(lines)


def _prune_text(d: dict[str, Any]) -> str:
    """The lines ``nomade db prune`` prints."""
    verb = "would remove" if d["dry_run"] else "removed"
    return (f"{d['path']}: {verb} {d['job_samples_thinned']:,} job samples (thinning), "
            f"{d['job_samples_dropped']:,} job samples (past retention), "
            f"{d['node_samples']:,} node samples, {d['predictions']:,} predictions")
