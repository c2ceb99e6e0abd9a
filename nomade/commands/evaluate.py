"""``nomade evaluate``: the failure models beside two plain baselines, one split.

Examples::

    nomade evaluate --swf trace.swf.gz --ticks-per-job 1   a public trace
    nomade evaluate                                         jobs of the store
    nomade evaluate --data prepared.npz --json              a dataset from `nomade train --prepare`
    nomade evaluate --synthetic 2000 --plot plots/          also roc.svg and lead_times.svg

The data is prepared exactly as ``nomade train`` prepares it (same options, same
80/10/10 split by start time). The GNN, autoencoder (and LSTM where the data has
samples), their ensemble, logistic regression and gradient boosting are all trained
on the same training split and features; each gets the threshold with the best F1 on
validation; the table shows test AUC-ROC, AUC-PR, precision, recall and F1. Progress
goes to stderr. ``--models-dir`` also writes the trained models there.

Then (unless ``--no-replay``) the test jobs are replayed tick by tick through the live
scorer (``nomade.ml.replay``): a second table gives coverage, false-alarm rate,
precision and lead times at ``[ml.alerts] high_risk_threshold`` and at each level,
and per final state. The replay needs the job tables, so it is skipped for
``--data``. ``--plot DIR`` writes ``roc.svg`` (test ROC curve of every model) and
``lead_times.svg`` (ECDF of the replay's lead times) there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nomade.commands.train import add_weights_arguments, weights_mode
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
    src.add_argument("--partial", action="store_true",
                     help="with --swf: skip (and count) malformed lines instead of stopping at the first")
    src.add_argument("--db", metavar="PATH", help="store to read jobs from (default: [storage] db_path)")
    src.add_argument("--synthetic", metavar="N", type=int, help="a synthetic history of N jobs")
    src.add_argument("--corpus", metavar="FILE", help="a corpus file (nomade.corpus) instead of the store")
    src.add_argument("--with-store", action="store_true", help="with --corpus: the corpus and the store together")
    src.add_argument("--data", metavar="FILE", help="a dataset written by `nomade train --prepare` instead")
    src.add_argument("--ticks-per-job", metavar="N", type=int, default=4,
                     help="as-of examples per job, spread over its run (default 4)")
    add_weights_arguments(parser)
    parser.add_argument("--models-dir", metavar="DIR", help="also write the trained models here")
    rep = parser.add_argument_group("replay of the test jobs through the live scorer")
    rep.add_argument("--no-replay", action="store_true", help="skip the replay (AUC table only)")
    rep.add_argument("--replay-step", metavar="S", type=float,
                     help="seconds between replayed ticks (default: [agent] interval_s)")
    rep.add_argument("--replay-max-ticks", metavar="N", type=int, default=64,
                     help="most ticks replayed per job, spread over its run (default 64)")
    rep.add_argument("--shapes", metavar="FILE",
                     help="JSON object job id -> shape name (metadata of a lab corpus, never a feature): "
                          "the replay's figures per shape too (with --corpus: the corpus's own shapes)")
    rep.add_argument("--leave-out-shape", metavar="SHAPE",
                     help="leave-one-shape-out: train and validate without the jobs of SHAPE, test on every "
                          "test job (needs shapes: --corpus or --shapes); how a failure never seen in "
                          "training is caught")
    parser.add_argument("--plot", metavar="DIR", help="write roc.svg and lead_times.svg into DIR")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Prepare (or load), train, compare, replay, plot, print; 0 on success."""
    from nomade.commands.train import tables_from_args
    from nomade.ml import evaluate, train
    sources = [s for s in (args.swf, args.synthetic, args.corpus, None if args.with_store else args.db,
                           args.data) if s is not None]
    if len(sources) > 1:
        raise NomadeError("give at most one of --swf, --synthetic, --db, --corpus, --data "
                          "(--corpus FILE --with-store [--db PATH] mixes a corpus with a store)")
    step = cfg.agent.interval_s if args.replay_step is None else args.replay_step
    if not step > 0 or args.replay_max_ticks < 1:
        raise NomadeError(f"--replay-step must be > 0 and --replay-max-ticks >= 1, got {step:g}, "
                          f"{args.replay_max_ticks}")
    if args.data and args.leave_out_shape:
        raise NomadeError("--leave-out-shape needs the job tables: use --corpus, --db or --swf, not --data")
    say = (lambda line: None) if args.quiet else _say
    source = None
    if args.data:
        prepared = train.Prepared.load(Path(args.data).expanduser())
    else:
        say("preparing the data as `nomade train` does")
        jobs, samples, name = tables_from_args(args, cfg)
        prepared = train.prepare(jobs, samples, cfg.collector.interval_s, cfg.ml.sequence_length,
                                 max_per_job=args.ticks_per_job, source=name)
        shapes = _job_shapes(args, jobs)
        if args.leave_out_shape:
            if shapes is None:
                raise NomadeError("--leave-out-shape needs the jobs' shapes: --corpus FILE or --shapes FILE")
            out = evaluate.leave_out_shape(prepared, shapes, args.leave_out_shape)
            say(f"left out of training and validation: {out['jobs']} jobs of shape {args.leave_out_shape} "
                f"({out['test_jobs']} in the test split)")
        if not args.no_replay:
            source = evaluate.ReplaySource(jobs, samples, step, args.replay_max_ticks, shapes)
    reporter = None if args.quiet else train.stderr_reporter()
    models_dir = None if args.models_dir is None else str(Path(args.models_dir).expanduser())
    report = evaluate.compare(prepared, cfg, models_dir, weights_mode(args), reporter, say, source)
    if args.data and not args.no_replay:
        report["replay"] = {"skipped": "a prepared dataset holds no job tables; use --swf, --db or --synthetic"}
    if args.plot:
        report["plots"] = _plots(report, Path(args.plot).expanduser())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(evaluate.format_table(report))
        for line in report.get("plots", []):
            print(f"plot: {line}")
    return 0


def _job_shapes(args: argparse.Namespace, jobs: Any) -> Any:
    """The shape of each job of ``jobs`` from ``--shapes``, else from ``--corpus``'s
    metadata (the corpus's job ids, prefixed ``corpus:`` when mixed with a store); None
    when neither names shapes."""
    if args.shapes:
        return _shapes(Path(args.shapes).expanduser(), jobs)
    if not args.corpus:
        return None
    import numpy as np

    from nomade import corpus
    meta = corpus.read(Path(args.corpus).expanduser()).meta
    prefix = "corpus:" if args.with_store else ""
    by_id = {f"{prefix}{job_id}": m.get("shape") for job_id, m in meta.items()}
    return np.array([by_id.get(str(j)) for j in jobs.job_id], dtype=object)


def _shapes(path: Path, jobs: Any) -> Any:
    """The shape of each job of ``jobs`` (None where the file names none) from a JSON
    object job id -> shape; ``NomadeError`` naming the file if it is not one."""
    import numpy as np
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NomadeError(f"{path}: cannot read the shapes ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise NomadeError(f"{path}: expected a JSON object of job id -> shape name (strings)")
    return np.array([data.get(str(j)) for j in jobs.job_id], dtype=object)


def _plots(report: dict[str, Any], out: Path) -> list[str]:
    """Write roc.svg and, with replay lead times, lead_times.svg into ``out``; one
    line per file saying what was written or why not."""
    from nomade import plot
    from nomade.ml.evaluate import LABELS
    curves = {LABELS.get(k, k).strip(): (c["fpr"], c["tpr"]) for k, c in report["roc"].items() if c["fpr"]}
    lines = [f"wrote {plot.roc_svg(curves, out / 'roc.svg')}"]
    rep = report.get("replay") or {}
    leads = rep.get("lead_times_s") or []
    if not leads:
        why = rep.get("skipped") or ("--no-replay" if not rep else "no failed test job crossed the threshold")
        return lines + [f"{out / 'lead_times.svg'} not written: no lead times ({why})"]
    series: dict[str, list[float]] = {"all failed": [v / 60 for v in leads]}
    if len(set(rep["lead_states"])) > 1:   # one line per final state, where there are several
        for v, state in zip(leads, rep["lead_states"], strict=True):
            series.setdefault(state, []).append(v / 60)
    title = f"Alert lead time (risk >= {rep['threshold']:.2f}), test jobs replayed"
    return lines + [f"wrote {plot.lead_time_svg(series, out / 'lead_times.svg', title)}"]


def _say(line: str) -> None:
    sys.stderr.write(f"\nnomade evaluate: {line}\n")
    sys.stderr.flush()
