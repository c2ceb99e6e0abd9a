"""The public feature API: start and as-of feature vectors, LSTM sequences, thinning
and the snapshots training and evaluation take."""

from __future__ import annotations

import math

import numpy as np

from nomade.features.columns import CHANNELS, START_PART
from nomade.features.lookups import _history, _last_sample, _runs, _search
from nomade.features.runtime import _runtime
from nomade.features.tables import JobTable, SampleTable


def _rows(jobs: JobTable, t: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=np.float64)
    rows = np.arange(len(jobs)) if rows is None else np.asarray(rows, dtype=np.int64)
    if t.shape != rows.shape:
        raise ValueError(f"t has shape {t.shape}, expected one time per example {rows.shape}")
    if not np.isfinite(t).all():
        raise ValueError("every as-of time t must be a finite POSIX time")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(jobs)):
        raise ValueError(f"rows must index the {len(jobs)} jobs")
    return t, rows


def start_features(jobs: JobTable, rows: np.ndarray) -> np.ndarray:
    """float32[n, N_FEATURES]: the start-time features of jobs ``rows`` as of each one's start
    (0 where unknown, the runtime part 0): what a job's graph neighbours are found by,
    in training, in the agent's tick and in the replay alike."""
    rows = np.asarray(rows, np.int64)
    X, known = asof_features(jobs, SampleTable.empty(), jobs.start_ts[rows], rows)
    return np.where(known & START_PART, X, 0.0).astype(np.float32)


def asof_features(jobs: JobTable, samples: SampleTable, t: np.ndarray,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw features of each example as of its time ``t[e]``.

    Examples are ``rows[e]`` (job rows; default every job once, ``t`` per job). Returns
    ``(X float32[n, N_FEATURES], mask bool[n, N_FEATURES])`` with X = 0 where the mask is False.
    Uses only samples with ``ts <= t[e]`` and history of jobs with ``end_ts < t[e]``.
    """
    t, rows = _rows(jobs, t, rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        start = np.stack([
            np.log1p(jobs.req_cpus[rows]), np.log1p(jobs.req_mem_bytes[rows] / 2**20),
            np.log1p(jobs.req_gpus[rows]), np.log1p(jobs.time_limit_s[rows] / 60.0),
            *_history(jobs, rows, t)], axis=1)
        last, first = _last_sample(samples, rows, t)
        runtime = _runtime(jobs, samples, rows, last, first)
    raw = np.concatenate([start, runtime], axis=1)
    mask = np.isfinite(raw)
    return np.where(mask, raw, 0.0).astype(np.float32), mask


def sequences(jobs: JobTable, samples: SampleTable, t: np.ndarray, length: int,
              interval_s: float, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The runtime channels (features 7-19, ``CHANNELS``) on a grid of ``length`` steps
    every ``interval_s`` ending at ``t[e]``, each step as of the last sample at or
    before it. Left-padded: steps before the job's first sample are padding. The grid
    step is the model's (``GRID_STEP_S`` for models of this version, saved in their
    metadata), never the sampling interval: a model reads one time scale everywhere.

    Returns ``(S float32[n, length, len(CHANNELS)], lengths int64[n])``; S is NaN at padding and
    where a channel is unknown (see :meth:`Normalizer.transform_sequences`). Working
    memory is about ``n * length * 200`` bytes: give big example sets in batches.
    """
    t, rows = _rows(jobs, t, rows)
    if length < 1 or not interval_s > 0:
        raise ValueError(f"length must be >= 1 and interval_s > 0, got {length}, {interval_s}")
    steps = (np.arange(length) - (length - 1)) * float(interval_s)
    grid = (t[:, None] + steps[None, :]).ravel()
    grid_rows = np.repeat(rows, length)
    with np.errstate(divide="ignore", invalid="ignore"):
        first, end = (np.repeat(b, length) for b in _runs(samples, rows))
        last = _search(samples.ts, grid, first, end)
        vals = _runtime(jobs, samples, grid_rows, last, first)
    seq = vals.reshape(len(rows), length, len(CHANNELS)).astype(np.float32)
    lengths = (last >= 0).reshape(len(rows), length).sum(axis=1).astype(np.int64)
    return seq, lengths


def thin(samples: SampleTable, every_s: float, seed: int = 0) -> SampleTable:
    """The samples as a collector sampling every ``every_s`` would have sent them: of
    each job, the first sample in each ``every_s`` bucket of time from a random phase
    (seeded; one per job). Counters are cumulative, so the kept samples are exact."""
    if not every_s > 0:
        raise ValueError(f"every_s must be > 0, got {every_s}")
    if not len(samples):
        return samples
    phase = np.random.default_rng(seed).uniform(0.0, every_s, int(samples.job_index.max()) + 1)
    bucket = np.floor((samples.ts + phase[samples.job_index]) / every_s)
    new = np.concatenate([[True], (np.diff(samples.job_index) != 0) | (np.diff(bucket) != 0)])
    keep = np.flatnonzero(new)
    return SampleTable(samples.job_index[keep], samples.ts[keep],
                       {c: v[keep] for c, v in samples.cols.items()})


def sampling_interval(samples: SampleTable) -> float:
    """The median time between a job's consecutive samples (NaN with none)."""
    if len(samples) < 2:
        return math.nan
    same = np.diff(samples.job_index) == 0
    gaps = np.diff(samples.ts)[same]
    return float(np.median(gaps)) if len(gaps) else math.nan


IDLE_EFF = 0.05
"""CPU efficiency over the recent window below which a job's CPU counts as idle."""


def idle_minutes(S: np.ndarray, lengths: np.ndarray, step_s: float) -> np.ndarray:
    """float64[n]: how long each job's CPU has been idle (recent efficiency, ``cpu_eff``
    + ``cpu_eff_change``, below ``IDLE_EFF``) up to its last step, read from its
    :func:`sequences` output on a grid of ``step_s``: the trailing idle steps of its
    window (0 when the last step is not idle; at most the window)."""
    S = np.asarray(S, np.float64)
    n, T = S.shape[:2]
    if not n:
        return np.zeros(0)
    recent = S[:, :, CHANNELS.index("cpu_eff")] + S[:, :, CHANNELS.index("cpu_eff_change")]
    valid = np.arange(T)[None, :] >= (T - np.clip(np.asarray(lengths, np.int64), 0, T))[:, None]
    idle = valid & (recent < IDLE_EFF)
    busy_after = np.cumsum(~idle[:, ::-1], axis=1) == 0   # reversed: still in the trailing run
    minutes: np.ndarray = busy_after.sum(axis=1) * float(step_s) / 60.0
    return minutes


def snapshots(jobs: JobTable, samples: SampleTable, interval_s: float,
              max_per_job: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The as-of training examples of ended, labelled, started jobs: one per scoring
    tick ``start, start + interval_s, ... < end`` (at most ``max_per_job``, spread
    evenly over the run), each weighted ``1 / ticks`` so every job counts once.

    Returns ``(rows int64[m], t float64[m], weight float64[m])``. ``samples`` is not
    read (ticks come from the job's run, as in live scoring); it is accepted so the
    signature matches the other as-of functions.
    """
    del samples
    if not interval_s > 0 or max_per_job < 1:
        raise ValueError(f"interval_s must be > 0 and max_per_job >= 1, got {interval_s}, {max_per_job}")
    ok = np.isfinite(jobs.start_ts) & np.isfinite(jobs.end_ts) & np.isfinite(jobs.label)
    idx = np.flatnonzero(ok)
    run = np.maximum(jobs.end_ts[idx] - jobs.start_ts[idx], 0.0)
    n_ticks = np.maximum(np.ceil(run / interval_s), 1).astype(np.int64)
    used = np.minimum(n_ticks, max_per_job)
    rows = np.repeat(idx, used)
    offsets = np.arange(used.sum()) - np.repeat(np.cumsum(used) - used, used)
    # spread `used` ticks evenly over the job's `n_ticks` ticks
    tick = np.floor(offsets * np.repeat(n_ticks / used, used)).astype(np.int64)
    t = jobs.start_ts[rows] + tick * float(interval_s)
    return rows, t, np.repeat(1.0 / used, used)


