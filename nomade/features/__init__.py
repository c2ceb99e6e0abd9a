"""As-of feature vectors, LSTM channels and normalisation (numpy only).

A job's features are computed *as of* a time ``t``: runtime parts from its samples
stamped ``ts <= t`` only, history parts from jobs that ended strictly before ``t``.
Nothing known only at the end of a job (final runtime, state, totals) is a feature.

The 19 features (DESIGN.md's 17, and the filesystem pair 18-19), in this order (``FEATURES``):

====  =====================  ==========================================================
 #     name                   value (raw, before normalisation)
====  =====================  ==========================================================
 1     log_req_cpus           log1p(requested CPUs)
 2     log_req_mem_mb         log1p(requested memory in MiB)
 3     log_req_gpus           log1p(requested GPUs)
 4     log_time_limit_min     log1p(time limit in minutes)
 5     user_fail_rate         (failed + a*prior) / (ended + a) over the user's jobs that
                              ended before t; prior = global rate before t (Laplace)
 6     user_last_failed       1 if the user's last job ended before t failed
 7     elapsed_frac           (ts of last sample - start) / time limit
 8     cpu_eff                CPU seconds so far / (alloc CPUs * seconds since start)
 9     cpu_eff_change         CPU efficiency over the last ``WINDOW_S`` seconds - cpu_eff
 10    mem_frac               memory now / memory limit
 11    mem_peak_frac          peak memory so far / memory limit
 12    mem_growth_frac_h      memory growth per hour over the last samples / limit
 13    log_read_mbps          log1p(read MB/s over the last samples)
 14    log_write_mbps         log1p(write MB/s over the last samples)
 15    nfs_write_share        NFS write bytes / write bytes so far, in [0, 1]
 16    io_pressure            job io PSI "some avg10" / 100, else node iowait / 100
 17    mem_pressure           log1p((major faults + limit hits + OOM kills) per minute
                              over the last samples) + swap / limit
 18    log_fs_full_h          log1p(hours until the fullest filesystem the job writes to
                              is full, at its fill rate over the last samples), capped
                              at ``FS_HORIZON_H``; 0 when full (``fs_used_pct`` of the
                              collector's ``openfiles``). Not how full it is: a site's
                              scratch that sits at 95 % is not news, one that fills is
                              ENOSPC for every job writing there
 19    fs_fill_frac_h         that filesystem's growth per hour over the last samples
                              (share of the filesystem per hour)
====  =====================  ==========================================================

``mask[i, j]`` is True where feature j is known for example i at its as-of time.
Runtime features (7-19) need at least one sample at or before t; any feature whose
inputs are unknown (NaN) is masked. Masked entries are 0 in the raw matrix and stay
0 after :meth:`Normalizer.transform`.

Cumulative counters (CPU seconds, bytes, faults, limit hits) are taken to start at 0
when the job starts (a job cgroup is created with the job), so a rate is defined from
the first sample on. A "recent" rate or change is taken between the last sample and
the latest one at least ``WINDOW_S`` before it (else the job's first sample; with a
single sample, the job start).

A multi-node job reports one sample per node: ``SampleTable.from_records`` turns them
into job totals (each row: the sum over nodes of every node's latest value; pressure
signals stay per sample).

Everything is vectorised: one call handles many (job, t) examples; per-user history
and per-job sample look-ups use sorted keys and ``searchsorted``.

The package: ``columns`` (the names and constants above), ``tables`` (``JobTable``,
``SampleTable``), ``nodes`` (totals over a job's nodes, node figures as of a sample),
``lookups`` (sorted searches), ``runtime`` (features 7-19), ``asof`` (the public
functions) and ``normalize`` (``Normalizer``).
"""

from __future__ import annotations

from nomade.features.asof import (
    IDLE_EFF,
    asof_features,
    idle_minutes,
    sampling_interval,
    sequences,
    snapshots,
    start_features,
    thin,
)
from nomade.features.columns import (
    AUGMENT_INTERVALS_S,
    CHANNELS,
    FEATURES,
    FS_HORIZON_H,
    GRID_STEP_S,
    IOWAIT_MAX_AGE_S,
    N_FEATURES,
    N_START,
    PRIOR_STRENGTH,
    SAMPLE_COLUMNS,
    START_PART,
    WINDOW_S,
    iowait_max_age_s,
    label_of,
)
from nomade.features.nodes import SUMMED, job_totals, node_asof
from nomade.features.normalize import Normalizer
from nomade.features.tables import JobTable, SampleTable

__all__ = [
    "AUGMENT_INTERVALS_S", "CHANNELS", "FEATURES", "FS_HORIZON_H", "GRID_STEP_S", "IDLE_EFF", "IOWAIT_MAX_AGE_S",
    "N_FEATURES", "N_START", "PRIOR_STRENGTH", "SAMPLE_COLUMNS", "START_PART", "SUMMED",
    "WINDOW_S", "JobTable", "Normalizer", "SampleTable", "asof_features", "idle_minutes",
    "iowait_max_age_s", "job_totals", "label_of", "node_asof", "sampling_interval",
    "sequences", "snapshots", "start_features", "thin",
]
