"""From per-node rows to per-job rows: a job's totals over its nodes, and a node's
figure (iowait) as of each job sample."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from nomade.features.columns import IOWAIT_MAX_AGE_S, SAMPLE_COLUMNS
from nomade.features.lookups import _at, _search

SUMMED = frozenset(SAMPLE_COLUMNS) - {"io_pressure", "mem_pressure", "fs_used_pct", "iowait_pct"}
"""Columns that add up over a job's nodes (counters, memory, limits, CPU and task counts)."""


def _time_order(job_index: np.ndarray, ts: np.ndarray) -> np.ndarray | None:
    """The stable (job, ts) sort order of the rows, or None when they are in it already."""
    dj = np.diff(job_index)
    if (dj >= 0).all() and ((dj > 0) | (np.diff(ts) >= 0)).all():
        return None
    return np.lexsort((ts, job_index))


def job_totals(job_index: np.ndarray, node: np.ndarray, ts: np.ndarray,
               cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-node samples → job totals, in input row order (times must be finite).

    A ``SUMMED`` column at a row becomes the sum over the job's nodes of each node's
    latest known value at or before the row's time (NaN until some node has reported
    one); for a job on one node that is its latest known value. Other columns are kept
    as they are. ``node`` holds integer node codes; the order of a job's codes only
    breaks ties between its samples of equal time (``from_records`` codes by name).
    Training (``SampleTable.from_records``) and the agent's tick both go through this.
    """
    n = len(ts)
    summed = [c for c in cols if c in SUMMED]
    if n == 0:
        return dict(cols)
    order = _time_order(job_index, ts)
    perm: Callable[[np.ndarray], np.ndarray] = (lambda a: a) if order is None else (lambda a: a[order])
    job, nd = perm(job_index), perm(np.asarray(node, np.int64))
    starts = np.concatenate([[True], job[1:] != job[:-1]])
    seg = np.flatnonzero(starts)
    multi = np.flatnonzero(np.repeat(np.minimum.reduceat(nd, seg) != np.maximum.reduceat(nd, seg),
                                     np.diff(np.append(seg, n))))
    sorted_cols = {c: perm(cols[c]) for c in summed}
    combined = {} if not len(multi) else _combine_nodes(
        job[multi], nd[multi], perm(ts)[multi], {c: v[multi] for c, v in sorted_cols.items()})
    out = dict(cols)
    for name, v in sorted_cols.items():
        if order is None and not len(multi) and not np.isnan(v).any():
            continue   # one node per job, nothing unknown: the column is its own total
        total = _ffill_within(v, starts)
        if len(multi):
            total[multi] = combined[name]
        if order is not None:
            total[order] = total.copy()
        out[name] = total
    return out


def _combine_nodes(job: np.ndarray, node: np.ndarray, ts: np.ndarray,
                   cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-node samples → job totals at each sample, in input row order.

    Each summed column becomes the sum over the job's nodes of each node's latest known
    value at or before the row's time: the per-(job, node) increments, added up in time
    order within the job. Unknown (NaN) values keep the node's previous value; a total
    is NaN until some node has reported a value.
    """
    by_node = np.lexsort((ts, node, job))
    series = np.concatenate([[True], (np.diff(job[by_node]) != 0) | (np.diff(node[by_node]) != 0)])
    by_time = np.lexsort((node, ts, job))
    job_start = np.concatenate([[True], np.diff(job[by_time]) != 0])
    out = {}
    for name, raw in cols.items():
        if name not in SUMMED:
            out[name] = raw
            continue
        v = raw[by_node]
        filled = _ffill_within(v, series)
        prev = np.concatenate([[np.nan], filled[:-1]])
        inc = np.where(series, 0.0, np.nan_to_num(prev))
        inc = np.nan_to_num(filled) - inc
        inc_t = np.empty_like(inc)
        inc_t[by_node] = inc  # back to input order
        known_t = np.empty(len(v), bool)
        known_t[by_node] = np.isfinite(filled)
        total = _cumsum_within(inc_t[by_time], job_start)
        seen = _cumsum_within(known_t[by_time].astype(np.float64), job_start) > 0
        res = np.empty(len(v))
        res[by_time] = np.where(seen, total, np.nan)
        out[name] = res
    return out


def _ffill_within(v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Forward-fill NaN within segments that begin where ``starts`` is True."""
    idx = np.where(np.isfinite(v), np.arange(len(v)), -1)
    idx = np.maximum.accumulate(idx) if len(idx) else idx
    seg = np.maximum.accumulate(np.where(starts, np.arange(len(v)), 0)) if len(v) else idx
    return np.where(idx >= seg, v[np.maximum(idx, 0)] if len(v) else v, np.nan)


def _cumsum_within(v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting where ``starts`` is True."""
    c = np.cumsum(v)
    seg = np.maximum.accumulate(np.where(starts, np.arange(len(v)), 0)) if len(v) else v.astype(np.int64)
    out: np.ndarray = c - (c[seg] - v[seg])
    return out


def node_asof(node: np.ndarray, ts: np.ndarray, ref_node: np.ndarray, ref_ts: np.ndarray,
              ref_value: np.ndarray, max_age_s: float = IOWAIT_MAX_AGE_S) -> np.ndarray:
    """As-of join of node readings onto samples: for each sample ``(node[i], ts[i])`` the
    ``ref_value`` of the latest reading of the same node with ``ref_ts <= ts[i]`` and
    ``ts[i] - ref_ts <= max_age_s``; NaN where there is none (never a later reading).

    Node codes are integers (any, negative included) shared by both sides. Readings with
    an unknown (NaN) value or time are ignored, so a known older one within the bound
    still counts; of readings of one node at the same time the largest value is taken
    (the result never depends on the input order). Vectorised: one sort of the readings
    and one binary search per sample, over its node's readings only.
    """
    node, ts = np.asarray(node, np.int64), np.asarray(ts, np.float64)
    ref_value, ref_ts = np.asarray(ref_value, np.float64), np.asarray(ref_ts, np.float64)
    ok = np.isfinite(ref_value) & np.isfinite(ref_ts)
    r_node, r_ts, r_val = np.asarray(ref_node, np.int64)[ok], ref_ts[ok], ref_value[ok]
    order = np.lexsort((r_val, r_ts, r_node))
    r_node, r_ts, r_val = r_node[order], r_ts[order], r_val[order]
    first, end = _code_runs(r_node, node)
    last = _search(r_ts, ts, first, end)
    found = last >= 0
    age = ts - _at(r_ts, last, found)
    return np.where(found & (age <= max_age_s), _at(r_val, last, found), np.nan)


def _code_runs(sorted_codes: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``codes`` runs in ``sorted_codes``: ``first``, ``end`` (exclusive;
    equal where absent). Dense codes (node codes are) go through a table, one gather
    each, instead of a binary search per code."""
    if not len(sorted_codes):
        return np.zeros(len(codes), np.int64), np.zeros(len(codes), np.int64)
    lo, hi = int(sorted_codes[0]), int(sorted_codes[-1])
    if hi - lo > 4 * len(sorted_codes) + 4096:
        return (np.searchsorted(sorted_codes, codes, side="left"),
                np.searchsorted(sorted_codes, codes, side="right"))
    bounds = np.searchsorted(sorted_codes, np.arange(lo, hi + 2))
    inside = (codes >= lo) & (codes <= hi)
    k = np.where(inside, codes - lo, 0)
    return np.where(inside, bounds[k], 0), np.where(inside, bounds[k + 1], 0)


