"""Sorted look-ups shared by the feature code: the last sample at or before a time,
a user's history before a time (``searchsorted`` over sorted keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nomade.features.columns import PRIOR_STRENGTH

if TYPE_CHECKING:   # the tables import this module
    from nomade.features.tables import JobTable, SampleTable


def _ranked_keys(group_a: np.ndarray, time_a: np.ndarray,
                 group_b: np.ndarray, time_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer keys ``group * span + rank(time)`` over both sets, order-preserving
    within a group, exact (no float precision loss). NaN times rank last."""
    times = np.concatenate([time_a, time_b])
    _, inv = np.unique(times, return_inverse=True)
    span = int(inv.max(initial=0)) + 2
    ka = group_a.astype(np.int64) * span + inv[: len(time_a)]
    kb = group_b.astype(np.int64) * span + inv[len(time_a):]
    return ka, kb, span


def _runs(samples: SampleTable, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each job row's samples: indices ``first`` to ``end`` (exclusive)."""
    return (np.searchsorted(samples.job_index, rows, side="left"),
            np.searchsorted(samples.job_index, rows, side="right"))


def _search(ts: np.ndarray, t: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per example, the index of the last ``ts <= t`` among ``ts[first:end]`` (sorted
    there), -1 where there is none (also where t is NaN). One binary search for all
    examples at once: exact comparisons, no sort, log2 of the longest run in steps."""
    lo, n = first.copy(), end - first
    top = max(len(ts) - 1, 0)
    for _ in range(int(n.max(initial=0)).bit_length()):
        half = n >> 1
        mid = lo + half
        right = (ts[np.minimum(mid, top)] <= t) & (n > 0)
        lo = np.where(right, mid + 1, lo)
        n = np.where(right, n - half - 1, half)
    return np.where(lo > first, lo - 1, -1)


def _last_sample(samples: SampleTable, rows: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each example, the index of the job's last sample with ts <= t and the index
    of its first sample; ``last = -1`` where there is none."""
    first, end = _runs(samples, rows)
    return _search(samples.ts, t, first, end), first


def _history(jobs: JobTable, rows: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """User failure rate (smoothed) and last-job-failed (NaN: no ended job) as of t,
    from jobs with a known label and end_ts < t."""
    done = np.isfinite(jobs.end_ts) & np.isfinite(jobs.label) & (jobs.user >= 0)
    ev_user, ev_end, ev_lab = jobs.user[done], jobs.end_ts[done], jobs.label[done]
    # global prior as of t (Laplace-smoothed), from all users' ended jobs
    g_order = np.argsort(ev_end, kind="stable")
    g_cum = np.concatenate([[0.0], np.cumsum(ev_lab[g_order])])
    g_n = np.searchsorted(ev_end[g_order], t, side="left")
    prior = (g_cum[g_n] + 1.0) / (g_n + 2.0)
    # per user: events sorted by (user, end); queries at (user, t), strictly before t
    q_user = jobs.user[rows]
    ke, kq, span = _ranked_keys(ev_user, ev_end, q_user, t)
    order = np.argsort(ke, kind="stable")
    ke, lab = ke[order], ev_lab[order]
    cum = np.concatenate([[0.0], np.cumsum(lab)])
    pos = np.searchsorted(ke, kq, side="left")
    start = np.searchsorted(ke, q_user.astype(np.int64) * span, side="left")
    n = pos - start
    failed = cum[pos] - cum[start]
    rate = (failed + PRIOR_STRENGTH * prior) / (n + PRIOR_STRENGTH)
    last = np.where(n > 0, lab[np.maximum(pos - 1, 0)] if len(lab) else 0.0, np.nan)
    rate = np.where(q_user >= 0, rate, np.nan)
    return rate, last


def _at(arr: np.ndarray, idx: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``arr[idx]`` where ``ok``, NaN elsewhere (safe for an empty ``arr``)."""
    if len(arr) == 0:
        return np.full(len(idx), np.nan)
    return np.where(ok, arr[np.clip(idx, 0, len(arr) - 1)], np.nan)


