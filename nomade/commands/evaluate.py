"""``nomade evaluate``: the failure models beside two plain baselines, one split.

Examples::

    nomade evaluate --swf trace.swf.gz --ticks-per-job 1   a public trace
    nomade evaluate                                         jobs of the store
    nomade evaluate --data prepared.npz --json              a dataset from `nomade train --prepare`
    nomade evaluate --synthetic 2000 --plot plots/          also roc.svg and lead_times.svg
    nomade evaluate --windows 3                             three test windows (rolling origin)

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

With the jobs' behaviours (``--corpus``, ``--shapes``) a last table judges the
behaviour-visible failures of the test part alone, models beside each baseline and
rule, at the shipped threshold and at the operating point of at most 5 % false alarms
chosen on validation (``nomade.ml.judging``; ``--plot``: ``behaviour_roc.svg``,
``behaviour_lead.svg``). ``--leave-out-shape SHAPE`` also judges every job of SHAPE
alone; ``--leave-out-shape all`` (or ``S1,S2``) trains once per failure shape and prints
one row per shape and scorer. ``--windows K`` trains once per test window, each a tenth
of the jobs further back in time, and prints how much each figure moves between them.
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
                          "test job and judge every job of SHAPE on its own (needs shapes: --corpus or "
                          "--shapes); how a failure never seen in training is caught. Several shapes "
                          "(S1,S2) or 'all' (every failure shape): one training per shape, one table "
                          "row per shape and scorer")
    rep.add_argument("--windows", metavar="K", type=int, default=1,
                     help="rolling origin: judge K test windows (each a tenth of the jobs by start, the newest "
                          "first, each trained on the jobs before it; at most 5), one training each, and print "
                          "how much each figure moves between them (default 1: the newest only)")
    parser.add_argument("--plot", metavar="DIR",
                        help="write roc.svg, lead_times.svg and, with job behaviours, behaviour_roc.svg and "
                             "behaviour_lead.svg into DIR")
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
    each = args.leave_out_shape is not None and (args.leave_out_shape == "all" or "," in args.leave_out_shape)
    if each and (args.no_replay or args.plot):
        raise NomadeError("several left-out shapes are judged by replay, one table: drop --no-replay and --plot")
    if args.windows != 1 and (args.no_replay or args.plot or args.data or args.leave_out_shape):
        raise NomadeError("--windows judges by replay, one table: drop --no-replay, --plot, --data and "
                          "--leave-out-shape")
    source = None
    if args.data:
        prepared = train.Prepared.load(Path(args.data).expanduser())
    else:
        say("preparing the data as `nomade train` does")
        jobs, samples, name = tables_from_args(args, cfg)
        prepared = train.prepare(jobs, samples, cfg.collector.interval_s, cfg.ml.sequence_length,
                                 max_per_job=args.ticks_per_job, source=name)
        shapes, variants = _job_shapes(args, jobs)
        if args.leave_out_shape and shapes is None:
            raise NomadeError("--leave-out-shape needs the jobs' shapes: --corpus FILE or --shapes FILE")
        if each:
            return _leave_out_each(args, cfg, prepared, evaluate.ReplaySource(
                jobs, samples, step, args.replay_max_ticks, shapes, variants), say)
        if args.windows != 1:
            return _windows(args, cfg, prepared, evaluate.ReplaySource(
                jobs, samples, step, args.replay_max_ticks, shapes, variants), say)
        if args.leave_out_shape:
            out = evaluate.leave_out_shape(prepared, shapes, args.leave_out_shape)
            say(f"left out of training and validation: {out['jobs']} jobs of shape {args.leave_out_shape} "
                f"({out['test_jobs']} in the test split)")
        if not args.no_replay:
            source = evaluate.ReplaySource(jobs, samples, step, args.replay_max_ticks, shapes, variants)
    reporter = None if args.quiet else train.stderr_reporter()
    models_dir = None if args.models_dir is None else str(Path(args.models_dir).expanduser())
    report = evaluate.compare(prepared, cfg, models_dir, weights_mode(args), reporter, say, source)
    if args.data and not args.no_replay:
        report["replay"] = {"skipped": "a prepared dataset holds no job tables; use --swf, --db or --synthetic"}
    if args.plot:
        report["plots"] = _plots(report, Path(args.plot).expanduser()) + _behaviour_plots(
            report, Path(args.plot).expanduser())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(evaluate.format_table(report))
        for line in report.get("plots", []):
            print(f"plot: {line}")
    return 0


def _leave_out_each(args: argparse.Namespace, cfg: Config, prepared: Any, source: Any, say: Any) -> int:
    """``--leave-out-shape all`` or ``S1,S2,...``: one training per shape, one table."""
    from nomade.ml import evaluate, judging
    if args.leave_out_shape == "all":
        shapes = judging.failure_shapes(source.shapes, source.jobs.state)
    else:
        shapes = [s.strip() for s in args.leave_out_shape.split(",") if s.strip()]
    known = {str(s) for s in source.shapes if s is not None}
    unknown = [s for s in shapes if s not in known]
    if unknown or not shapes:
        raise NomadeError(f"no job has the shape {', '.join(map(repr, unknown)) or 'given'}; "
                          f"the shapes are {', '.join(sorted(known)) or 'unknown'}")
    say(f"leave-one-shape-out for {len(shapes)} shapes ({', '.join(shapes)}): one training each")
    progress = None if args.quiet else _progress_bar
    if progress is not None:
        progress(0, len(shapes), "", 0.0)
    report = evaluate.leave_out_each(prepared, cfg, source, shapes, weights_mode(args), progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(judging.format_each(report, evaluate.LABELS))
    return 0


def _windows(args: argparse.Namespace, cfg: Config, prepared: Any, source: Any, say: Any) -> int:
    """``--windows K``: one training per test window, one table."""
    from nomade.ml import evaluate, judging
    say(f"rolling origin: {args.windows} test windows, one training each")
    progress = None if args.quiet else (lambda done, total, name, s: _progress_bar(done, total, name, s, "windows"))
    if progress is not None:
        progress(0, args.windows, "", 0.0)
    report = evaluate.rolling_windows(prepared, cfg, source, args.windows, weights_mode(args), progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(judging.format_windows(report))
    return 0


def _progress_bar(done: int, total: int, shape: str, elapsed_s: float, what: str = "shapes") -> None:
    """Shapes (or windows) done, time spent, time left: one line on stderr, rewritten in
    place on a terminal, a new line each time otherwise (a log file)."""
    bar = "#" * round(20 * done / total) + "." * (20 - round(20 * done / total))
    left = f"; about {elapsed_s / done * (total - done) / 60:.1f} min left" if done else ""
    last = f", {shape} done" if shape else ""
    title = "leave-one-shape-out" if what == "shapes" else "rolling origin"
    line = f"{title} [{bar}] {done}/{total} {what}{last}, {elapsed_s / 60:.1f} min{left}"
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{line}\x1b[K" + ("\n" if done == total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _job_shapes(args: argparse.Namespace, jobs: Any) -> tuple[Any, Any]:
    """The shape and the behaviour of each job of ``jobs``: from ``--shapes`` (its
    behaviour: its shape), else from ``--corpus``'s metadata (``shape``, ``variant``;
    the corpus's job ids prefixed ``corpus:`` when mixed with a store); (None, None)
    when neither names shapes."""
    if args.shapes:
        shapes = _shapes(Path(args.shapes).expanduser(), jobs)
        return shapes, shapes
    if not args.corpus:
        return None, None
    import numpy as np

    from nomade import corpus
    meta = corpus.read(Path(args.corpus).expanduser()).meta
    prefix = "corpus:" if args.with_store else ""
    by_id = {f"{prefix}{job_id}": m for job_id, m in meta.items()}
    of = [by_id.get(str(j), {}) for j in jobs.job_id]
    return (np.array([m.get("shape") for m in of], dtype=object),
            np.array([m.get("variant") or m.get("shape") for m in of], dtype=object))


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


def _behaviour_plots(report: dict[str, Any], out: Path) -> list[str]:
    """behaviour_roc.svg (each scorer's job-level ROC on the behaviour-visible failures of
    the test part) and behaviour_lead.svg (lead times as a share of the run, at each
    scorer's operating point of at most 5 % false alarms); one line per file."""
    from nomade import plot
    from nomade.ml.evaluate import LABELS
    b = report.get("behaviour") or {}
    if "scorers" not in b:
        why = b.get("skipped") or "no replay"
        return [f"behaviour_roc.svg, behaviour_lead.svg not written ({why})"]
    label = {k: LABELS.get(k, k).strip() for k in b["scorers"]}
    curves = {label[k]: (s["roc"]["fpr"], s["roc"]["tpr"]) for k, s in b["scorers"].items() if s["roc"]["fpr"]}
    lines = [f"wrote {plot.roc_svg(curves, out / 'behaviour_roc.svg', 'ROC per job, behaviour-visible failures')}"]
    series = {label[k]: [100 * v for v in s["bounded"]["lead_shares"]] for k, s in b["scorers"].items()}
    if not any(series.values()):
        return lines + [f"{out / 'behaviour_lead.svg'} not written: no scorer caught a failure at its operating point"]
    title = "Lead time at <= 5% false alarms (validation threshold)"
    return lines + [f"wrote {plot.lead_time_svg(series, out / 'behaviour_lead.svg', title, unit='% of the run')}"]


def _say(line: str) -> None:
    sys.stderr.write(f"\nnomade evaluate: {line}\n")
    sys.stderr.flush()
