"""Training pipeline: prepare a dataset, fit the models, evaluate, save.

``prepare(jobs, samples, ...)`` turns a :class:`features.JobTable` and
:class:`features.SampleTable` into a :class:`Prepared` dataset of as-of examples
(every scoring tick of an ended job, weighted so each job counts once), the reference
set (ended jobs' final features, what new jobs attach to in the graph), and a split
by job start time: the earliest 80% of jobs train, the next 10% validate, the last
10% test. ``fit_and_save(prepared, cfg, ...)`` normalises, builds the graph, trains the
chosen models with early stopping on validation AUC, evaluates them and the ensemble
on validation and test, and writes the model files (``persist``).

No leakage by construction: an example's features are as of its tick; its neighbours
ended before its job started; validation/test jobs start after every training job.

The package: ``prepare`` (the dataset), ``fit`` (the models), ``pipeline``
(``fit_and_save``), ``report`` and ``synthetic`` (test data).
"""

from __future__ import annotations

from nomade.ml.ensemble import PARTS
from nomade.ml.train.fit import build_data, estimators, fit_models, fit_one
from nomade.ml.train.pipeline import ensemble_risk, fit_and_save, fit_evidence, save_models, score_splits
from nomade.ml.train.prepare import (
    PARALLEL_MIN_EXAMPLES,
    REFERENCE_SIZE,
    SPLITS,
    THRESHOLD,
    VALIDATION_MAX,
    Prepared,
    Reporter,
    augment_intervals,
    never_ran,
    prepare,
    tables_from_store,
    tables_from_swf,
)
from nomade.ml.train.report import format_report, stderr_reporter
from nomade.ml.train.synthetic import STATES, synthetic_tables

__all__ = ["PARALLEL_MIN_EXAMPLES", "PARTS", "REFERENCE_SIZE", "SPLITS", "STATES", "THRESHOLD", "VALIDATION_MAX",
           "Prepared", "Reporter", "augment_intervals", "build_data", "ensemble_risk", "estimators", "fit_and_save",
           "fit_evidence", "fit_models", "fit_one", "format_report", "never_ran", "prepare", "save_models",
           "score_splits", "stderr_reporter", "synthetic_tables", "tables_from_store", "tables_from_swf"]
