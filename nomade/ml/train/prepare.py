"""Preparing a dataset: as-of examples of ended jobs, the reference set and the split
by start time; the tables read from a store or a trace."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from nomade import features
from nomade.errors import NomadeError
from nomade.ml import persist
from nomade.ml.baselines import time_split

Reporter = Callable[[str, int, int, float], None]
"""``reporter(model, epoch, epochs, validation_score)``."""
SPLITS = ("train", "validation", "test")
REFERENCE_SIZE = 20000
"""Most recently ended jobs kept as the GNN's live reference set (scoring cost, file size)."""
VALIDATION_MAX = 20000
"""Validation examples (a seeded subsample) scored after each epoch for early stopping."""
PARALLEL_MIN_EXAMPLES = 20000
"""LSTM training examples (with samples) from which :func:`fit_models` trains the LSTM
in its own process by default: below, starting it (~2-3 s) saves little."""
THRESHOLD = 0.5
"""Score at which precision/recall/F1 count a prediction as "will fail"."""


@dataclass
class Prepared:
    """A prepared dataset (``.npz``). Examples: ``X``/``mask`` raw as-of features,
    ``S``/``lengths`` sequences, ``y`` label, ``w`` weight, ``job`` row into the
    job arrays, ``t`` as-of time, ``start_ts`` of the job, ``split`` 0/1/2. Reference
    (ended labelled jobs, final features): ``ref_X``, ``ref_mask``, ``ref_start_ts``,
    ``ref_end_ts``, ``ref_y``, ``ref_job`` (job row, sorted), and ``ref_start_X``, the
    start-time features as of the job's start (what its graph neighbours are found
    by). ``summary``: JSON-safe description of the data."""

    X: np.ndarray
    mask: np.ndarray
    S: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    w: np.ndarray
    job: np.ndarray
    t: np.ndarray
    start_ts: np.ndarray
    split: np.ndarray
    ref_X: np.ndarray
    ref_mask: np.ndarray
    ref_start_ts: np.ndarray
    ref_end_ts: np.ndarray
    ref_y: np.ndarray
    ref_job: np.ndarray
    ref_start_X: np.ndarray
    summary: dict[str, Any]

    def save(self, path: str | Path) -> None:
        """Write atomically as a compressed ``.npz`` (no pickles)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "summary"}
        np.savez_compressed(tmp, summary=np.array(json.dumps(persist.clean_json(self.summary))), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Prepared:
        """Read a file written by :meth:`save`; ``NomadeError`` if it is not one."""
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                data = {f.name: z[f.name] for f in fields(cls) if f.name != "summary"}
                summary = json.loads(str(z["summary"]))
        except FileNotFoundError as e:
            raise NomadeError(f"{path}: no prepared dataset; run `nomade train --prepare` first") from e
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
            raise NomadeError(f"{path}: not a prepared dataset ({e}); rerun `nomade train --prepare`") from e
        return cls(**data, summary=summary)

    def rows(self, split: str) -> np.ndarray:
        """Example rows of one split."""
        return np.flatnonzero(self.split == SPLITS.index(split))


# ------------------------------------------------------------------ prepare

def prepare(jobs: features.JobTable, samples: features.SampleTable, interval_s: float,
            sequence_length: int, max_per_job: int = 4, source: str = "", augment: bool = True) -> Prepared:
    """As-of examples (at most ``max_per_job`` ticks per job, ``interval_s`` apart,
    spread over its run), reference set and time split of the labelled ended jobs that
    ran. A job with a final state but no start (cancelled while pending) never ran: the
    live system never scores it, and its missing request would give its label away, so
    it is neither learnt nor judged (``summary["never_ran"]`` counts them); it stays in
    the users' history like any ended job. Sequences are on the fixed grid
    (``features.GRID_STEP_S`` x ``sequence_length``). ``augment``: the training and
    validation examples are also computed from the samples thinned to each coarser
    interval of ``features.AUGMENT_INTERVALS_S`` (:func:`augment_intervals`), weighted so
    that each job still counts once; test examples are the samples as recorded."""
    rows, t, w = features.snapshots(jobs, samples, interval_s, max_per_job=max_per_job)  # started jobs only
    if len(rows) == 0:
        raise NomadeError(f"{source or 'the data'}: no ended job with a known final state and a start to learn from "
                          f"({int(never_ran(jobs).sum())} never ran)")
    ended = np.unique(rows)
    train, val, test = time_split(jobs.start_ts[ended])
    job_split = np.full(len(jobs), -1, np.int8)
    for code, part in enumerate((train, val, test)):
        job_split[ended[part]] = code
    inputs = _example_inputs(jobs, samples, t, rows, sequence_length)
    every = augment_intervals(samples) if augment else []
    if every:
        aug = np.flatnonzero(job_split[rows] < 2)
        w = np.where(job_split[rows] < 2, w / (1 + len(every)), w)
        extra = [_example_inputs(jobs, features.thin(samples, e, seed=k + 1), t[aug], rows[aug], sequence_length)
                 for k, e in enumerate(every)]
        inputs = tuple(np.concatenate([a, *(x[i] for x in extra)]) for i, a in enumerate(inputs))
        rows, t = np.concatenate([rows, *[rows[aug]] * len(every)]), np.concatenate([t, *[t[aug]] * len(every)])
        w = np.concatenate([w, *[w[aug]] * len(every)])
    X, mask, S, lengths = inputs
    ref_X, ref_mask = features.asof_features(jobs, samples, jobs.end_ts[ended], ended)
    start_X = features.start_features(jobs, ended)
    y = jobs.label[rows].astype(np.float32)
    prepared = Prepared(X, mask, S, lengths, y, w.astype(np.float32), rows, t, jobs.start_ts[rows],
                        job_split[rows], ref_X, ref_mask, jobs.start_ts[ended], jobs.end_ts[ended],
                        jobs.label[ended].astype(np.float32), ended, start_X, {})
    prepared.summary = _summary(prepared, jobs, ended, source, interval_s)
    prepared.summary["grid"] = {"step_s": features.GRID_STEP_S, "length": int(sequence_length)}
    prepared.summary["augment_intervals_s"] = every
    prepared.summary["sampling_interval_s"] = features.sampling_interval(samples)
    return prepared


def never_ran(jobs: features.JobTable) -> np.ndarray:
    """bool[n]: jobs with a final state but no start (cancelled while pending)."""
    return np.isfinite(jobs.label) & ~np.isfinite(jobs.start_ts)


def _example_inputs(jobs: features.JobTable, samples: features.SampleTable, t: np.ndarray, rows: np.ndarray,
                    length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X, mask, S, lengths`` of the examples (job ``rows`` as of ``t``), as the agent's tick makes them."""
    X, mask = features.asof_features(jobs, samples, t, rows)
    S, lengths = features.sequences(jobs, samples, t, length, features.GRID_STEP_S, rows)
    return X, mask, S, lengths


def augment_intervals(samples: features.SampleTable) -> list[float]:
    """The intervals of ``features.AUGMENT_INTERVALS_S`` that thin these samples: at
    least 1.5x their median interval (none without samples)."""
    base = features.sampling_interval(samples)
    if not np.isfinite(base):
        return []
    return [e for e in features.AUGMENT_INTERVALS_S if e >= 1.5 * base]


def _summary(p: Prepared, jobs: features.JobTable, ended: np.ndarray, source: str,
             interval_s: float) -> dict[str, Any]:
    parts = {}
    for code, name in enumerate(SPLITS):
        jr = np.unique(p.job[p.split == code])
        parts[name] = {"jobs": int(len(jr)), "examples": int((p.split == code).sum()),
                       "failed": int(np.nansum(jobs.label[jr])),
                       "failure_rate": float(np.nanmean(jobs.label[jr])) if len(jr) else None,
                       "first_start_ts": float(jobs.start_ts[jr].min()) if len(jr) else None,
                       "last_start_ts": float(jobs.start_ts[jr].max()) if len(jr) else None}
    return {"source": source, "jobs": int(len(ended)), "never_ran": int(never_ran(jobs).sum()),
            "examples": int(len(p.y)),
            "interval_s": interval_s, "sequence_length": int(p.S.shape[1]),
            "first_start_ts": float(np.min(jobs.start_ts[ended])),
            "last_end_ts": float(np.max(jobs.end_ts[ended])),
            "with_samples": float(np.mean(p.lengths > 0)), "splits": parts}


def tables_from_store(db_path: str | Path, iowait_max_age_s: float = features.IOWAIT_MAX_AGE_S
                      ) -> tuple[features.JobTable, features.SampleTable]:
    """Every ended job in the store, and their samples (``nomade.history``: the one path
    from stored rows to tables, shared with a corpus file)."""
    from nomade import history
    return history.tables(history.rows_from_store(db_path, iowait_max_age_s), iowait_max_age_s)


def tables_from_swf(path: str | Path, partial: bool = False) -> tuple[features.JobTable, features.SampleTable]:
    """Jobs of an SWF trace (start-time features only: a trace has no samples);
    ``partial``: malformed lines skipped, not an error (``traces.read_swf``)."""
    from nomade.traces import read_swf
    return read_swf(path, partial=partial).jobs, features.SampleTable.empty()


