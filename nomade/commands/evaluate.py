"""``nomade evaluate``: the failure models beside two plain baselines, one split.

Examples::

    nomade evaluate --swf trace.swf.gz --ticks-per-job 1   a public trace
    nomade evaluate                                         jobs of the store
    nomade evaluate --data prepared.npz --json              a dataset from `nomade train --prepare`

The data is prepared exactly as ``nomade train`` prepares it (same options, same
80/10/10 split by start time). The GNN, autoencoder (and LSTM where the data has
samples), their ensemble, logistic regression and gradient boosting are all trained
on the same training split and features; each gets the threshold with the best F1 on
validation; the table shows test AUC-ROC, AUC-PR, precision, recall and F1. Progress
goes to stderr. ``--models-dir`` also writes the trained models there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nomade.config import Config
from nomade.errors import NomadeError

NAME = "evaluate"
HELP = "compare the failure models with logistic regression and gradient boosting on one time split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nomade evaluate`` (data options as in ``nomade train``)."""
    parser.description = ("Train the failure models and two plain baselines on the same time-ordered split "
                          "and print their test AUC-ROC, AUC-PR, precision, recall and F1.")
    src = parser.add_argument_group("data (as in `nomade train`)")
    src.add_argument("--swf", metavar="FILE", help="jobs of an SWF trace (.gz ok) instead of the store")
    src.add_argument("--db", metavar="PATH", help="store to read jobs from (default: [storage] db_path)")
    src.add_argument("--synthetic", metavar="N", type=int, help="a synthetic history of N jobs")
    src.add_argument("--data", metavar="FILE", help="a dataset written by `nomade train --prepare` instead")
    src.add_argument("--ticks-per-job", metavar="N", type=int, default=4,
                     help="as-of examples per job, spread over its run (default 4)")
    parser.add_argument("--learn-weights", action="store_true",
                        help="learn the ensemble weights on the validation split (default: [ml.ensemble])")
    parser.add_argument("--models-dir", metavar="DIR", help="also write the trained models here")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Prepare (or load), train, compare, print; 0 on success."""
    from nomade.commands.train import prepare_from_args
    from nomade.ml import evaluate, train
    sources = [s for s in (args.swf, args.synthetic, args.db, args.data) if s is not None]
    if len(sources) > 1:
        raise NomadeError("give at most one of --swf, --synthetic, --db, --data")
    say = (lambda line: None) if args.quiet else _say
    if args.data:
        prepared = train.Prepared.load(Path(args.data).expanduser())
    else:
        say("preparing the data as `nomade train` does")
        prepared = prepare_from_args(args, cfg)
    reporter = None if args.quiet else train.stderr_reporter()
    models_dir = None if args.models_dir is None else str(Path(args.models_dir).expanduser())
    report = evaluate.compare(prepared, cfg, models_dir, args.learn_weights, reporter, say)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(evaluate.format_table(report))
    return 0


def _say(line: str) -> None:
    sys.stderr.write(f"\nnomade evaluate: {line}\n")
    sys.stderr.flush()
