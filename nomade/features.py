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
 18    fs_used_frac           how full the fullest filesystem the job writes to is, in
                              [0, 1] (``fs_used_pct`` / 100; the collector's ``openfiles``)
 19    fs_fill_frac_h         its growth per hour over the last samples (share of the
                              filesystem per hour): a full disk is ENOSPC for every job
                              writing to it, and a static, nearly full one is not news
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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nomade import states

FEATURES: tuple[str, ...] = (
    "log_req_cpus", "log_req_mem_mb", "log_req_gpus", "log_time_limit_min",
    "user_fail_rate", "user_last_failed",
    "elapsed_frac", "cpu_eff", "cpu_eff_change",
    "mem_frac", "mem_peak_frac", "mem_growth_frac_h",
    "log_read_mbps", "log_write_mbps", "nfs_write_share",
    "io_pressure", "mem_pressure",
    "fs_used_frac", "fs_fill_frac_h",
)
N_FEATURES = len(FEATURES)
N_START = 6
"""Features 1-6 are known at start; 7-19 are runtime features (the LSTM channels)."""
START_PART = np.arange(N_FEATURES) < N_START
"""Mask of the start-time features, by which graph neighbours are found."""
CHANNELS: tuple[str, ...] = FEATURES[N_START:]
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
    final or unknown (any spelling :func:`nomade.states.normalise` accepts)."""
    label = states.label_for(state)
    return math.nan if label is None else float(label)


def _floats(values: Iterable[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


@dataclass
class JobTable:
    """One row per job (ARCHITECTURE "ML arrays"); times in POSIX s, NaN unknown.

    ``cat`` holds optional extra categorical columns known at submit (int codes,
    -1 unknown), e.g. ``group``, ``executable``, ``queue`` from a trace; the
    features do not use them, baselines may.
    """

    job_id: np.ndarray
    user: np.ndarray
    req_cpus: np.ndarray
    req_mem_bytes: np.ndarray
    req_gpus: np.ndarray
    time_limit_s: np.ndarray
    submit_ts: np.ndarray
    start_ts: np.ndarray
    end_ts: np.ndarray
    state: np.ndarray
    label: np.ndarray
    cat: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.job_id)
        for name in ("user", "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s",
                     "submit_ts", "start_ts", "end_ts", "state", "label", *self.cat):
            col = self.cat[name] if name in self.cat else getattr(self, name)
            if len(col) != n:
                raise ValueError(f"JobTable column {name!r} has {len(col)} rows, job_id has {n}")

    def __len__(self) -> int:
        return len(self.job_id)

    def take(self, idx: np.ndarray) -> JobTable:
        """The rows ``idx`` as a new table (history features then see only those rows)."""
        cols = {name: getattr(self, name)[idx] for name in _JOB_COLUMNS}
        return JobTable(**cols, cat={k: v[idx] for k, v in self.cat.items()})

    @classmethod
    def from_records(cls, records: Iterable[Any], users: dict[str, int] | None = None) -> JobTable:
        """Build from records with the ``job.start`` body fields plus optional ``end_ts``
        and ``state`` (``job.end``): dicts, or objects with those attributes (the store's
        ``Job`` rows). ``users`` maps user names to codes and is extended in place, so
        that tables built at different times share codes."""
        users = {} if users is None else users
        rows = list(records)
        def get(key: str) -> list[Any]:
            return [_field(r, key) for r in rows]
        states = np.array(get("state"), dtype=object)
        return cls(
            job_id=np.array([str(j) for j in get("job_id")], dtype=object),
            user=np.array([_code(users, u) for u in get("user")], dtype=np.int64),
            req_cpus=_floats(get("req_cpus")), req_mem_bytes=_floats(get("req_mem_bytes")),
            req_gpus=_floats(get("req_gpus")), time_limit_s=_floats(get("time_limit_s")),
            submit_ts=_floats(get("submit_ts")), start_ts=_floats(get("start_ts")),
            end_ts=_floats(get("end_ts")), state=states,
            label=np.array([label_of(s) for s in states], dtype=np.float64))


_JOB_COLUMNS = ("job_id", "user", "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s",
                "submit_ts", "start_ts", "end_ts", "state", "label")


def _field(record: Any, key: str) -> Any:
    """``record[key]`` of a mapping, else the attribute; None if absent."""
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def _code(codes: dict[str, int], name: Any) -> int:
    if name is None or name == "":
        return -1
    return codes.setdefault(str(name), len(codes))


@dataclass
class SampleTable:
    """Samples of jobs: ``job_index`` (row into a JobTable), ``ts``, and the float
    columns of ``SAMPLE_COLUMNS`` in ``cols`` (cumulative counters as read, NaN
    unknown). Rows are sorted by (job_index, ts) on construction."""

    job_index: np.ndarray
    ts: np.ndarray
    cols: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.job_index = np.asarray(self.job_index, dtype=np.int64)
        self.ts = np.asarray(self.ts, dtype=np.float64)
        n = len(self.ts)
        if len(self.job_index) != n:
            raise ValueError("SampleTable job_index and ts differ in length")
        unknown = set(self.cols) - set(SAMPLE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown sample columns {sorted(unknown)}; known: {SAMPLE_COLUMNS}")
        full = {c: np.asarray(self.cols.get(c, np.full(n, np.nan)), dtype=np.float64)
                for c in SAMPLE_COLUMNS}
        if np.isfinite(self.ts).all() and _time_order(self.job_index, self.ts) is None:
            self.cols = full   # already in order (the agent's tick): no sort, no copy
            return
        keep = np.flatnonzero(np.isfinite(self.ts))  # a sample without a time is unusable
        order = keep[np.lexsort((self.ts[keep], self.job_index[keep]))]
        self.job_index, self.ts = self.job_index[order], self.ts[order]
        self.cols = {c: v[order] for c, v in full.items()}

    def __len__(self) -> int:
        return len(self.ts)

    def __getattr__(self, name: str) -> np.ndarray:
        cols: dict[str, np.ndarray] = self.__dict__.get("cols", {})
        if name in cols:
            return cols[name]
        raise AttributeError(name)

    @classmethod
    def empty(cls) -> SampleTable:
        """No samples at all (e.g. a trace): every runtime feature is masked."""
        return cls(np.zeros(0, np.int64), np.zeros(0), {})

    @classmethod
    def from_records(cls, jobs: JobTable, records: Iterable[Any],
                     fields: Sequence[str] | None = None) -> SampleTable:
        """Build from dicts with the ``job.sample`` body fields (``job_id``, ``ts``, ...),
        or from tuples in the order ``fields`` (the store's ``JOB_SAMPLE_FIELDS``).
        Samples of jobs not in ``jobs`` are skipped."""
        if fields is not None:
            records = (dict(zip(fields, r)) for r in records)
        row_of = {jid: i for i, jid in enumerate(jobs.job_id)}
        rows = [r for r in records if str(r.get("job_id")) in row_of]
        cols = {c: _floats(r.get(c) for r in rows) for c in SAMPLE_COLUMNS}
        job_index = np.array([row_of[str(r["job_id"])] for r in rows], dtype=np.int64)
        ts = _floats(r.get("ts") for r in rows)
        nodes: dict[str, int] = {}
        node = np.array([_code(nodes, r.get("node")) for r in rows], dtype=np.int64)
        by_name = np.argsort(np.argsort(np.array(list(nodes), dtype=object)))
        node = np.where(node >= 0, by_name[np.maximum(node, 0)] if nodes else node, node)
        ok = np.isfinite(ts)
        cols = job_totals(job_index[ok], node[ok], ts[ok], {c: v[ok] for c, v in cols.items()})
        return cls(job_index[ok], ts[ok], cols)


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


# ---------------------------------------------------------------- look-ups

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


# ---------------------------------------------------------------- runtime features

def _at(arr: np.ndarray, idx: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``arr[idx]`` where ``ok``, NaN elsewhere (safe for an empty ``arr``)."""
    if len(arr) == 0:
        return np.full(len(idx), np.nan)
    return np.where(ok, arr[np.clip(idx, 0, len(arr) - 1)], np.nan)


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
    """The 11 runtime features (NaN unknown) of examples whose latest usable sample
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
    """How full the fullest filesystem written to is, and its growth per hour (needs 2 samples)."""
    growth = w.delta("fs_used_pct") / 100.0 / np.where(w.has_base, dt, np.nan) * 3600.0
    return [w.now("fs_used_pct") / 100.0, growth]


def _nansum_known(parts: list[np.ndarray]) -> np.ndarray:
    """Sum ignoring NaN parts; NaN only where every part is NaN."""
    stacked = np.stack(parts)
    known = np.isfinite(stacked).any(axis=0)
    return np.where(known, np.nansum(stacked, axis=0), np.nan)


# ---------------------------------------------------------------- public API

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

    Returns ``(S float32[n, length, 11], lengths int64[n])``; S is NaN at padding and
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


@dataclass
class Normalizer:
    """Per-feature standardisation fitted on known values only; JSON-safe.

    ``transform`` gives ``clip((x - mean) / std, -CLIP, CLIP)`` and 0 where masked,
    after clipping x into the range of the known training values (``lo_``, ``hi_``):
    a model is never asked about values beyond what it learnt from (a starter trained
    on light lab jobs scoring a site's busy ones reads them as the busiest it saw,
    instead of extrapolating). Follows the estimator contract: ``fit`` returns self
    and sets ``mean_``/``std_``/``lo_``/``hi_``.
    """

    CLIP = 10.0
    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None
    lo_: np.ndarray | None = None
    hi_: np.ndarray | None = None

    def fit(self, X: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None) -> Normalizer:
        """Weighted mean and std of each feature over examples where it is known."""
        X, mask = np.asarray(X, np.float64), np.asarray(mask, bool)
        w = np.ones(len(X)) if weight is None else np.asarray(weight, np.float64)
        wm = mask * w[:, None]
        tot = wm.sum(axis=0)
        mean = np.where(tot > 0, (wm * X).sum(axis=0) / np.where(tot > 0, tot, 1.0), 0.0)
        var = np.where(tot > 0, (wm * (X - mean) ** 2).sum(axis=0) / np.where(tot > 0, tot, 1.0), 0.0)
        std = np.sqrt(var)
        self.mean_, self.std_ = mean, np.where(std > 1e-9, std, 1.0)
        known = np.where(mask & (w[:, None] > 0), X, np.nan)
        seen = np.isfinite(known).any(axis=0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # "All-NaN slice": never known
            self.lo_ = np.where(seen, np.nanmin(known, axis=0), -np.inf)
            self.hi_ = np.where(seen, np.nanmax(known, axis=0), np.inf)
        return self

    def _clipped(self, X: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if self.lo_ is None or self.hi_ is None:
            return X
        clipped: np.ndarray = np.clip(X, self.lo_[cols], self.hi_[cols])
        return clipped

    def _check(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("Normalizer is not fitted: call fit() or from_dict() first")
        return self.mean_, self.std_

    def transform(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Normalised float32[n, N_FEATURES]; 0 where ``mask`` is False."""
        mean, std = self._check()
        z = np.clip((self._clipped(X) - mean) / std, -self.CLIP, self.CLIP)
        return np.where(mask, z, 0.0).astype(np.float32)

    def transform_sequences(self, S: np.ndarray) -> np.ndarray:
        """Normalise :func:`sequences` output with the stats of features 7-19; NaN
        (padding, unknown) becomes 0."""
        mean, std = self._check()
        S = self._clipped(S, slice(N_START, None))   # NaN stays NaN
        z = np.clip((S - mean[N_START:]) / std[N_START:], -self.CLIP, self.CLIP)
        out: np.ndarray = np.nan_to_num(z, nan=0.0).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the feature list so a mismatch is caught on load."""
        mean, std = self._check()
        out = {"version": 1, "features": list(FEATURES), "window_s": WINDOW_S,
               "prior_strength": PRIOR_STRENGTH, "mean": mean.tolist(), "std": std.tolist()}
        if self.lo_ is not None and self.hi_ is not None:   # JSON has no infinity: None is "unbounded"
            out["lo"] = [None if not np.isfinite(v) else float(v) for v in self.lo_]
            out["hi"] = [None if not np.isfinite(v) else float(v) for v in self.hi_]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`; ``ValueError`` if written for other features."""
        if data.get("version") != 1 or list(data.get("features", [])) != list(FEATURES):
            raise ValueError("normalisation was saved for another feature set "
                             f"(version {data.get('version')!r}, features {data.get('features')!r})")
        mean, std = np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64)
        if mean.shape != (N_FEATURES,) or std.shape != (N_FEATURES,) or not (std > 0).all():
            raise ValueError(f"normalisation mean/std must be {N_FEATURES} numbers each, std > 0")
        if "lo" not in data:   # saved before the training range was kept: no clipping
            return cls(mean_=mean, std_=std)
        lo = np.array([-np.inf if v is None else float(v) for v in data["lo"]])
        hi = np.array([np.inf if v is None else float(v) for v in data["hi"]])
        if lo.shape != (N_FEATURES,) or hi.shape != (N_FEATURES,) or not (lo <= hi).all():
            raise ValueError(f"normalisation lo/hi must be {N_FEATURES} numbers each, lo <= hi")
        return cls(mean_=mean, std_=std, lo_=lo, hi_=hi)
