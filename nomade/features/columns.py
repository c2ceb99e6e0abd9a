"""The feature vector's columns, the sample columns it is computed from, and the
constants that fix its meaning (window, grid step, iowait age)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nomade import slurmstates

FEATURES: tuple[str, ...] = (
    "log_req_cpus", "log_req_mem_mb", "log_req_gpus", "log_time_limit_min",
    "user_fail_rate", "user_last_failed",
    "elapsed_frac", "cpu_eff", "cpu_eff_change",
    "mem_frac", "mem_peak_frac", "mem_growth_frac_h",
    "log_read_mbps", "log_write_mbps", "nfs_write_share",
    "io_pressure", "mem_pressure",
    "log_fs_full_h", "fs_fill_frac_h",
)
N_FEATURES = len(FEATURES)
N_START = 6
"""Features 1-6 are known at start; 7-19 are runtime features (the LSTM channels)."""
START_PART = np.arange(N_FEATURES) < N_START
"""Mask of the start-time features, by which graph neighbours are found."""
CHANNELS: tuple[str, ...] = FEATURES[N_START:]
FS_HORIZON_H = 1000.0
"""Hours until a filesystem is full beyond which it is as good as never (the cap of
feature 18)."""
WINDOW_S = 90.0
"""How far back a "recent" rate or change looks (3 samples at the 30 s interval)."""
GRID_STEP_S = 15.0
"""Step of the LSTM's time grid, whatever the sampling interval (saved with the models:
``Prepared.summary["grid"]``). A job of 30 s spans two steps and the default 30 s
sampling loses nothing to it; 3 s samples (the demo) are read every fifth, so the
LSTM sees one time scale at every site. With ``[ml] sequence_length`` steps (32) the
window is 8 minutes: the start of a stall, or a leak's whole climb, in a job of hours."""
AUGMENT_INTERVALS_S: tuple[float, ...] = (6.0, 15.0, 30.0)
"""Sampling intervals that training thins its samples to (:func:`thin`), beside the
samples as recorded, so that one model serves 3 s and 30 s sampling alike."""
PRIOR_STRENGTH = 5.0
"""Pseudo-jobs of the global failure rate added to each user's history."""

SAMPLE_COLUMNS: tuple[str, ...] = (
    "alloc_cpus", "cpu_user_s", "cpu_system_s", "mem_bytes", "mem_peak_bytes",
    "mem_limit_bytes", "mem_limit_hits", "oom_kills", "page_faults", "major_faults",
    "swap_bytes", "read_bytes", "write_bytes", "nfs_write_bytes", "nprocs", "nthreads",
    "io_pressure", "mem_pressure", "fs_used_pct", "iowait_pct",
)
"""Float columns of :class:`SampleTable`: the ``job.sample`` body fields, plus
``iowait_pct`` (the node's iowait at that time, from ``node.sample``; NaN unknown)."""
IOWAIT_MAX_AGE_S = 60.0
"""Oldest ``node.sample`` (2 collector intervals of 30 s) whose iowait a job sample takes
(:func:`node_asof`); an older one says nothing about the job's moment."""


def iowait_max_age_s(sample_interval_s: float) -> float:
    """The iowait bound for samples taken every ``sample_interval_s``: two intervals
    (``IOWAIT_MAX_AGE_S`` at the default 30 s)."""
    return 2.0 * float(sample_interval_s)


def label_of(state: Any) -> float:
    """The DESIGN label of a Slurm state as a float: 0 COMPLETED, 1 a failure, NaN not
    final or unknown (any spelling :func:`nomade.slurmstates.normalise` accepts)."""
    label = slurmstates.label_for(state)
    return math.nan if label is None else float(label)

