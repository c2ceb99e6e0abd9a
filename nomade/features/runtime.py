"""The runtime features (7-19) of jobs as of their last sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nomade.features.columns import FS_HORIZON_H, WINDOW_S
from nomade.features.lookups import _at, _search
from nomade.features.tables import JobTable, SampleTable


def _running_max(samples: SampleTable, name: str) -> np.ndarray:
    """Per-job running maximum of a column (NaN ignored; NaN until a value is seen),
    exact: a cumulative max over integer keys ``job * span + rank(value)``. Computed
    once per table and column (features and sequences of one table share it)."""
    cache: dict[str, np.ndarray] = samples.__dict__.setdefault("_running_max", {})
    if name not in cache:
        vals = samples.cols[name]
        uniq, inv = np.unique(np.where(np.isnan(vals), -np.inf, vals), return_inverse=True)
        span = len(uniq) + 1
        best = np.maximum.accumulate(samples.job_index * span + inv) - samples.job_index * span
        out = uniq[best] if len(vals) else vals.copy()
        cache[name] = np.where(np.isinf(out), np.nan, out)
    return cache[name]


@dataclass
class _Window:
    """The latest usable sample of each example and the window behind it."""

    samples: SampleTable
    last: np.ndarray      # index of the last sample with ts <= t (valid where has)
    base: np.ndarray      # index of the window's first sample (valid where has_base)
    has: np.ndarray
    has_base: np.ndarray

    def now(self, name: str) -> np.ndarray:
        return _at(self.samples.cols[name], self.last, self.has)

    def delta(self, name: str) -> np.ndarray:
        """Counter increase over the window (from 0 at the job start if one sample)."""
        before = _at(self.samples.cols[name], self.base, self.has_base)
        return self.now(name) - np.where(self.has_base, before, 0.0)


def _runtime(jobs: JobTable, samples: SampleTable, rows: np.ndarray,
             last: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The 13 runtime features (NaN unknown) of examples whose latest usable sample
    is ``last`` (-1: none) of job ``rows``; reads samples ``first..last`` only."""
    has = last >= 0
    before = _search(samples.ts, _at(samples.ts, last, has) - WINDOW_S, first, np.maximum(last + 1, first))
    base = np.clip(before, first, np.maximum(last, first))
    w = _Window(samples, last, base, has, has & (base < last))
    start = jobs.start_ts[rows]
    ts = _at(samples.ts, last, has)
    since_start = _positive(ts - start)
    # a window starts at an earlier sample, or at the job start (counters are 0 there)
    dt = _positive(ts - np.where(w.has_base, _at(samples.ts, base, w.has_base), start))
    limit = _positive(np.where(w.now("mem_limit_bytes") > 0, w.now("mem_limit_bytes"),
                               jobs.req_mem_bytes[rows]))
    out = np.column_stack([
        since_start / jobs.time_limit_s[rows],
        *_cpu(jobs, w, rows, since_start, dt),
        *_memory(samples, w, limit, dt),
        *_io(w, dt, limit),
        *_filesystem(w, dt),
    ])
    out[~has] = np.nan
    return out


def _positive(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.nan)


def _cpu(jobs: JobTable, w: _Window, rows: np.ndarray, since_start: np.ndarray,
         dt: np.ndarray) -> list[np.ndarray]:
    """CPU efficiency so far, and efficiency over the window minus that."""
    alloc = _positive(np.where(w.now("alloc_cpus") > 0, w.now("alloc_cpus"), jobs.req_cpus[rows]))
    used = w.now("cpu_user_s") + np.nan_to_num(w.now("cpu_system_s"))
    recent = w.delta("cpu_user_s") + np.nan_to_num(w.delta("cpu_system_s"))
    eff = used / (alloc * since_start)
    return [eff, recent / (alloc * dt) - eff]


def _memory(samples: SampleTable, w: _Window, limit: np.ndarray, dt: np.ndarray) -> list[np.ndarray]:
    """Memory now, peak so far and growth per hour, each over the limit."""
    peak = np.fmax(w.now("mem_peak_bytes"), _at(_running_max(samples, "mem_bytes"), w.last, w.has))
    growth = w.delta("mem_bytes") / np.where(w.has_base, dt, np.nan) * 3600.0  # needs 2 samples
    return [w.now("mem_bytes") / limit, peak / limit, growth / limit]


def _io(w: _Window, dt: np.ndarray, limit: np.ndarray) -> list[np.ndarray]:
    """Read/write rates, NFS write share, I/O pressure and memory pressure."""
    writes, nfs = w.now("write_bytes"), w.now("nfs_write_bytes")
    share = np.where(writes > 0, np.clip(nfs / np.where(writes > 0, writes, 1.0), 0.0, 1.0),
                     np.where(np.isfinite(nfs) & np.isfinite(writes), 0.0, np.nan))
    io = np.where(np.isfinite(w.now("io_pressure")), w.now("io_pressure"), w.now("iowait_pct"))
    events = _nansum_known([w.delta("major_faults"), w.delta("mem_limit_hits"), w.delta("oom_kills")])
    pressure = _nansum_known([np.log1p(np.maximum(events, 0.0) / dt * 60.0),
                              w.now("swap_bytes") / limit])
    return [np.log1p(np.maximum(w.delta("read_bytes"), 0.0) / dt / 1e6),
            np.log1p(np.maximum(w.delta("write_bytes"), 0.0) / dt / 1e6),
            share, io / 100.0, pressure]


def _filesystem(w: _Window, dt: np.ndarray) -> list[np.ndarray]:
    """log1p(hours until the filesystem written to is full at its growth, capped at
    ``FS_HORIZON_H``; 0 when full) and that growth per hour (both need 2 samples)."""
    used = w.now("fs_used_pct") / 100.0
    growth = w.delta("fs_used_pct") / 100.0 / np.where(w.has_base, dt, np.nan) * 3600.0
    with np.errstate(divide="ignore", invalid="ignore"):
        hours = np.where(growth > 0, (1.0 - used) / growth, FS_HORIZON_H)
    hours = np.where(used >= 1.0, 0.0, np.clip(hours, 0.0, FS_HORIZON_H))
    return [np.where(np.isfinite(growth), np.log1p(hours), np.nan), growth]


def _nansum_known(parts: list[np.ndarray]) -> np.ndarray:
    """Sum ignoring NaN parts; NaN only where every part is NaN."""
    stacked = np.stack(parts)
    known = np.isfinite(stacked).any(axis=0)
    return np.where(known, np.nansum(stacked, axis=0), np.nan)


