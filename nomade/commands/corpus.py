"""``nomade corpus info FILE [--json]``: what a corpus file holds.

Prints the format version, how it was made (tool, seed, period, the re-record command)
and the counts: jobs, samples, final states, and final states per shape. ``--json``
prints the file's whole header. A damaged file is a one-line error naming it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nomade.config import Config

NAME = "corpus"
HELP = "what a job corpus file holds (info)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``nomade corpus info FILE [--json]``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="format, how it was made, counts by final state and shape")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print the whole header as JSON")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print the corpus header; 0."""
    from nomade import corpus
    c = corpus.read(args.file)
    if args.json:
        print(json.dumps(c.header, indent=1, sort_keys=True))
    else:
        print(text(args.file, c.header))
    return 0


def text(path: str, header: dict[str, Any]) -> str:
    """The header as a short report: provenance, totals, then a shape x state table."""
    counts, made = header["counts"], header.get("made_by", {})
    states = list(counts["by_state"])
    lines = [f"{path}: {header['format']} version {header['version']}, created {header['created']}",
             *(f"  {k}: {v}" for k, v in made.items()),
             f"{counts['jobs']} jobs, {counts['job_samples']} job samples, {counts['node_samples']} node samples",
             f"{'shape':<14}{'jobs':>6}" + "".join(f"{s[:13]:>14}" for s in states)]
    for shape, by in counts["by_shape"].items():
        lines.append(f"{shape:<14}{sum(by.values()):>6}" + "".join(f"{by.get(s, 0):>14}" for s in states))
    lines.append(f"{'all':<14}{counts['jobs']:>6}" + "".join(f"{counts['by_state'][s]:>14}" for s in states))
    return "\n".join(lines)
