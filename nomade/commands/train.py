"""``nomade train``: prepare a dataset, train the models, print how good they are.

Examples::

    nomade train --prepare                   jobs and samples from the store -> dataset
    nomade train --prepare --swf trace.swf   a Standard Workload Format trace instead
    nomade train --corpus corpus.npz         learn from a recorded corpus (nomade.corpus) alone
    nomade train --corpus corpus.npz --with-store   ... mixed with the site's own store
    nomade train                             train all three models on the dataset
    nomade train --model gnn --learn-weights retrain one model, learn ensemble weights
    nomade train --submit                    the same, as a Slurm batch job
    nomade train --if-due                    retrain from the store only when the models are
                                             older than [ml] retrain_interval_days (a timer's job)
    nomade train --starter --db CORPUS --learn-weights --ticks-per-job 16
                                             the starter model shipped in nomade/starter/

A site's models are judged against the shipped starter model on the validation split
(the site's recent jobs): the agent uses them only if they score at least as well
there (``nomade.ml.starter``); the table says which won.

It prints a table (validation and test AUC-ROC, AUC-PR, precision, recall, F1 per
model and for the ensemble) or, with ``--json``, the whole report. Progress goes to
stderr. The dataset is ``--data`` (default ``$XDG_DATA_HOME/nomade/prepared.npz``,
beside the models directory).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nomade.config import Config
from nomade.errors import NomadeError

NAME = "train"
HELP = "prepare training data, train the failure models and report their accuracy"
MODELS = ("gnn", "lstm", "autoencoder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nomade train``."""
    parser.description = "Prepare a dataset, train the failure models, and report how good they are."
    src = parser.add_argument_group("data")
    src.add_argument("--prepare", action="store_true",
                     help="only build the dataset (features, labels, 80/10/10 time split) and report it")
    src.add_argument("--swf", metavar="FILE", help="read jobs from an SWF trace instead of the store")
    src.add_argument("--partial", action="store_true",
                     help="with --swf: skip (and count) malformed lines instead of stopping at the first")
    src.add_argument("--db", metavar="PATH", help="store to read jobs from (default: [storage] db_path)")
    src.add_argument("--corpus", metavar="FILE",
                     help="a corpus file (e.g. the lab corpus the package ships) instead of the store")
    src.add_argument("--with-store", action="store_true",
                     help="with --corpus: learn from the corpus and the store (--db or [storage] db_path) "
                          "together; the corpus's job ids, users and nodes get the prefix 'corpus:'")
    src.add_argument("--synthetic", metavar="N", type=int,
                     help="a synthetic history of N jobs (demos, benchmarks)")
    src.add_argument("--data", metavar="FILE", help="prepared dataset (.npz) to write or read")
    src.add_argument("--ticks-per-job", metavar="N", type=int, default=4,
                     help="as-of examples per job, spread over its run (default 4)")
    parser.add_argument("--model", action="append", choices=MODELS,
                        help="train only this model (repeatable; default all three, or no LSTM "
                             "when the data has no samples, as in a trace)")
    add_weights_arguments(parser)
    parser.add_argument("--models-dir", metavar="DIR", help="where model files go (default: [ml] models_dir)")
    parser.add_argument("--starter", action="store_true",
                        help="train the starter model shipped with nomade (into nomade/starter/ unless "
                             "--models-dir), from a lab corpus store (--db); no comparison with the old one")
    parser.add_argument("--submit", action="store_true", help="run this training as a Slurm batch job")
    parser.add_argument("--if-due", action="store_true",
                        help="do nothing (exit 0) unless the models are missing or older than [ml] "
                             "retrain_interval_days; then prepare from the store (or the given source) "
                             "and train: what agent/nomade-train.timer runs daily")
    parser.add_argument("--sbatch-option", action="append", default=[], metavar="OPT",
                        help="extra sbatch option with --submit, e.g. --sbatch-option=--partition=cpu")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--learn-weights`` / ``--config-weights``; neither: learned where the validation
    split is large enough to trust (``ensemble.choose_weights``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--learn-weights", action="store_true",
                       help="always learn the ensemble weights on the validation split (default: learned "
                            "where validation is large enough to trust and they beat [ml.ensemble] in "
                            "cross-validation, else [ml.ensemble])")
    group.add_argument("--config-weights", action="store_true",
                       help="always use the [ml.ensemble] weights")


def weights_mode(args: argparse.Namespace) -> str:
    """``learned``, ``config`` or ``auto`` from :func:`add_weights_arguments`'s options."""
    return "learned" if args.learn_weights else "config" if args.config_weights else "auto"


def _paths(args: argparse.Namespace, cfg: Config) -> tuple[Path, Path]:
    paths = cfg.paths()
    models_dir = Path(args.models_dir).expanduser() if args.models_dir else paths.models_dir
    if args.starter and not args.models_dir:
        from nomade.ml.starter import STARTER_DIR
        models_dir = STARTER_DIR
    data = Path(args.data).expanduser() if args.data else paths.models_dir.parent / "prepared.npz"
    return models_dir, data


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Prepare and/or train; 0 on success."""
    if args.submit:
        return _submit(args, cfg)
    from nomade.ml import train
    models_dir, data = _paths(args, cfg)
    sources = [s for s in (args.swf, args.synthetic, args.corpus,
                           None if args.with_store else args.db) if s is not None]
    if len(sources) > 1:
        raise NomadeError("give at most one of --swf, --synthetic, --db, --corpus "
                          "(--corpus FILE --with-store [--db PATH] mixes a corpus with a store)")
    if args.with_store and not args.corpus:
        raise NomadeError("--with-store mixes a corpus with the store: give --corpus FILE too")
    if args.if_due and not _due(cfg, models_dir):
        return 0
    # --if-due retrains on the history as it is now, never on an old dataset
    if args.prepare or sources or args.if_due:
        prepared = prepare_from_args(args, cfg)
        prepared.save(data)
        if args.prepare:
            _print(args, {"dataset": str(data), **prepared.summary}, _prepared_text(str(data), prepared.summary))
            return 0
    else:
        prepared = train.Prepared.load(data)
    reporter = None if args.quiet else train.stderr_reporter()
    from nomade.ml.starter import COMPARISON, STARTER_DIR
    report = train.fit_and_save(prepared, cfg, models_dir, args.model, weights_mode(args), reporter,
                                starter_dir=None if args.starter or not cfg.ml.starter else STARTER_DIR,
                                pin_weights=args.starter)
    if reporter is not None:
        sys.stderr.write("\n")
    text = train.format_report(report)
    verdict = report.get(COMPARISON)
    if verdict is not None:
        text += (f"\nagainst the starter model on the validation jobs: AUC-ROC {verdict['site_auc']:.3f} (these "
                 f"models) vs {verdict['starter_auc']:.3f} (starter): the agent uses the {verdict['use']}'s")
    _print(args, report, text)
    return 0


def _due(cfg: Config, models_dir: Path) -> bool:
    """Whether ``--if-due`` should train now; says why not on stderr (also with --quiet:
    a timer's log should say why nothing happened)."""
    import time

    from nomade.ml import persist
    meta = persist.read_metadata(models_dir)
    if persist.retrain_due(meta, cfg.ml.retrain_interval_days, time.time()):
        return True
    age = persist.trained_age_days(meta, time.time())
    print(f"models in {models_dir} were trained {age:.1f} days ago; retraining is not due "
          f"([ml] retrain_interval_days = {cfg.ml.retrain_interval_days:g})", file=sys.stderr)
    return False


def tables_from_args(args: argparse.Namespace, cfg: Config) -> tuple[Any, Any, str]:
    """(jobs, samples, source name) from the data options ``--synthetic``, ``--swf`` or
    the store (``--db``, default ``[storage] db_path``), checked; shared with ``nomade
    evaluate``, which replays the tables as well as preparing them."""
    from nomade.ml import train
    if args.ticks_per_job < 1:
        raise NomadeError(f"--ticks-per-job must be at least 1, got {args.ticks_per_job}")
    if args.synthetic is not None:
        if args.synthetic < 10:
            raise NomadeError(f"--synthetic needs at least 10 jobs, got {args.synthetic}")
        return (*train.synthetic_tables(args.synthetic, seed=cfg.ml.seed), f"synthetic:{args.synthetic}")
    if args.swf:
        return (*train.tables_from_swf(args.swf, args.partial), str(args.swf))
    from nomade.features import iowait_max_age_s
    max_age = iowait_max_age_s(cfg.collector.interval_s)
    corpus_file = getattr(args, "corpus", None)
    if corpus_file and not getattr(args, "with_store", False):
        from nomade import corpus, history
        return (*history.tables(corpus.read(Path(corpus_file).expanduser()).rows, max_age), str(corpus_file))
    db = Path(args.db).expanduser() if args.db else cfg.paths().db_path
    if not db.exists():
        raise NomadeError(f"{db}: no store here; run the agent first, or use --swf FILE or --corpus FILE")
    if corpus_file:
        from nomade import corpus, history
        rows = history.rows_from_store(db, max_age)
        rows.extend(corpus.read(Path(corpus_file).expanduser()).rows.prefixed("corpus:"))
        return (*history.tables(rows, max_age), f"{db} + {corpus_file}")
    tables = train.tables_from_store(db, iowait_max_age_s=max_age)
    return (*tables, str(db))


def prepare_from_args(args: argparse.Namespace, cfg: Config):  # -> train.Prepared (torch-free annotation)
    """The dataset ``nomade train --prepare`` makes of the data options."""
    from nomade.ml import train
    jobs, samples, source = tables_from_args(args, cfg)
    return train.prepare(jobs, samples, cfg.collector.interval_s, cfg.ml.sequence_length,
                         max_per_job=args.ticks_per_job, source=source)


def _prepared_text(path: str, s: dict) -> str:
    lines = [f"dataset {path}: {s['jobs']} jobs, {s['examples']} as-of examples from {s['source']}",
             f"{100 * s['with_samples']:.0f}% of examples have samples (LSTM input); "
             f"{s.get('never_ran', 0)} jobs that never ran left out",
             "split      jobs  examples  failed  failure rate"]
    for name, part in s["splits"].items():
        rate = "-" if part["failure_rate"] is None else f"{100 * part['failure_rate']:.1f}%"
        lines.append(f"{name:<10} {part['jobs']:>5} {part['examples']:>9} {part['failed']:>7}  {rate}")
    return "\n".join(lines)


def _print(args: argparse.Namespace, data: dict, text: str) -> None:
    from nomade.ml.persist import clean_json
    print(json.dumps(clean_json(data), indent=2) if args.json else text)


def _submit(args: argparse.Namespace, cfg: Config) -> int:
    """sbatch a job that runs the same command without --submit."""
    from nomade.slurm import Slurm
    models_dir, data = _paths(args, cfg)
    argv = [] if cfg.source is None else ["--config", str(Path(cfg.source).resolve())]
    argv += ["train", "--quiet", f"--models-dir={models_dir.resolve()}", f"--data={data.resolve()}"]
    flags = {"--prepare": args.prepare, "--learn-weights": args.learn_weights,
             "--config-weights": args.config_weights, "--partial": args.partial, "--json": args.json,
             "--if-due": args.if_due, "--starter": args.starter}
    argv += [flag for flag, on in flags.items() if on]
    values = {"--swf": args.swf and str(Path(args.swf).resolve()), "--db": args.db and str(Path(args.db).resolve()),
              "--synthetic": args.synthetic, "--ticks-per-job": args.ticks_per_job}
    argv += [f"{k}={v}" for k, v in values.items() if v is not None]
    argv += [f"--model={m}" for m in args.model or ()]
    command = shlex.join([sys.executable, "-m", "nomade", *argv])
    models_dir.mkdir(parents=True, exist_ok=True)
    script = f"#!/bin/sh\nexec {command}\n"
    options = ["--job-name=nomade-train", "--cpus-per-task=2", f"--output={models_dir}/train-%j.log",
               *args.sbatch_option]
    job_id = Slurm.from_config(cfg).submit(script, options=options)
    _print(args, {"job_id": job_id, "command": command, "log": f"{models_dir}/train-{job_id}.log"},
           f"submitted training as job {job_id}; log: {models_dir}/train-{job_id}.log")
    return 0
