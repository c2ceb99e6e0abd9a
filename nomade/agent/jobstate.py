"""The agent's job state: running jobs, their request, recent samples, and user history.

Pure (dask ``WorkerState`` habit): ``JobState.apply(messages)`` takes decoded wire
messages and returns what changed (jobs that started, jobs that ended); nothing here
touches a socket, Slurm or the store. ``JobState.rebuild(store, now)`` makes the same
state from the store after a restart, so an agent restart forgets nothing it needs.

What is kept, and its bounds:

* ``running``: every job with a ``job.start`` and no ``job.end``, with the merged
  request (the earliest start, the union of nodes) and a ring of its recent samples:
  those within ``horizon_s`` of its newest sample (enough for the LSTM window and the
  as-of "recent" rates), at most ``max_samples`` per job. Samples of a job whose start
  has not arrived yet (the collector can be quicker than the slurmctld spool) are kept
  the same way and join the job when its start arrives; such orphans are forgotten
  ``orphan_ttl_s`` after their newest sample. At most ``max_jobs`` jobs are held, of
  which at most ``max_orphans`` without a start, each with at most ``max_nodes`` nodes
  (checked against a set: a job of 65,536 nodes must not cost 65,536² comparisons);
  what a bound keeps out is counted in ``limit_hits`` (the store still has it).
* ``history``: ended jobs (user, end time, final state once known) from the last
  ``history_s``, for the as-of user-history features.
* ``iowait``: each node's recent ``node.sample`` iowait readings (time, %; unknown ones
  are not kept), in arrival order, at most ``max_readings`` a node. Each tick keeps
  those that a ring's sample on that node may still join (see below), and those within
  ``horizon_s`` of the node's newest, back to ``iowait_max_age_s`` before either.

Counters in a sample are cumulative from the job's start, so dropping old samples
loses nothing the features need except a peak seen only in a dropped sample (the
cgroup's own ``mem_peak_bytes`` keeps that).

For the scoring tick, ``JobState.sample_rows(jobs)`` gives the rings of the given jobs
as one float table. It is kept in step incrementally: each call converts only the
samples that arrived since the previous call (ingest only appends to the rings and
counts), so a tick over 10,000 jobs converts about 10,000 samples, not the 200,000 in
the rings. Beside it comes each row's ``iowait_pct``: the iowait of the node that sent
the sample as of the sample's time, joined by ``features.node_asof`` over the kept
readings, exactly as training joins the store's ``node.sample`` rows
(``nomade.ml.train.tables_from_store``). It is kept in step the same way: joined for
the new rows, and again for a node's rows from the time of a reading that arrived
since (a node sample later than the job samples it belongs to: another batch, a
replayed outbox), so it is always what a join over all rows would give.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

import numpy as np

from nomade import features
from nomade.store import JOB_SAMPLE_FIELDS, NODE_SAMPLE_FIELDS

#: ``job.start`` fields merged into a running job's request (first known value wins).
REQUEST_FIELDS: tuple[str, ...] = (
    "user", "uid", "partition", "account", "num_nodes", "req_cpus", "req_mem_bytes",
    "req_gpus", "time_limit_s", "submit_ts", "start_ts")
#: Columns of ``JobState.sample_rows``: the sample time, the ``job.sample`` fields among
#: ``features.SAMPLE_COLUMNS`` (all but the node's ``iowait_pct``), then a node code.
ROW_FIELDS: tuple[str, ...] = ("ts", *(c for c in features.SAMPLE_COLUMNS if c != "iowait_pct"))
#: The ``ROW_FIELDS`` of a ring's sample (a tuple in ``JOB_SAMPLE_FIELDS`` order).
_ROW = itemgetter(*(JOB_SAMPLE_FIELDS.index(f) for f in ROW_FIELDS))


def options_for(sequence_length: int, sample_interval_s: float) -> dict[str, float]:
    """``JobState`` keyword arguments for samples taken every ``sample_interval_s``
    (``[collector] interval_s``): rings that hold the LSTM window (``sequence_length``
    steps of ``features.GRID_STEP_S``, or of the sampling interval where it is coarser)
    plus ``features.WINDOW_S`` and one sample before it, and node iowait readings up to
    two sampling intervals old (what ``nomade.ml.train.tables_from_store`` joins)."""
    step = max(features.GRID_STEP_S, sample_interval_s)
    return {"horizon_s": (sequence_length + 1) * step + features.WINDOW_S + sample_interval_s,
            "iowait_max_age_s": features.iowait_max_age_s(sample_interval_s)}


@dataclass(frozen=True)
class Explained:
    """The scoring tick's last explanation of a job: the level it was at, the tick's
    time and the prediction's wire factors."""

    level: str
    ts: float
    factors: list[dict[str, Any]]


@dataclass
class RunningJob:
    """One job the agent scores: its request (``job.start`` fields, None unknown), its
    nodes, and its recent ``job.sample`` bodies (oldest first, as tuples in
    ``nomade.store.JOB_SAMPLE_FIELDS`` order, the wire's ``FIELDS["job.sample"]``)."""

    job_id: str
    request: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    samples: deque[tuple[Any, ...]] = field(default_factory=deque)
    newest_ts: float = float("-inf")
    appended: int = 0
    """Samples ever put in the ring (``sample_rows`` converts only the ones since its last call)."""
    explained: Explained | None = None
    """Written by the scoring tick (``nomade.agent.scoring``)."""

    @property
    def started(self) -> bool:
        """True once a ``job.start`` with a start time has been seen."""
        return self.request.get("start_ts") is not None


@dataclass(frozen=True)
class Ended:
    """A job left the running set at ``end_ts``; ``state`` is its final state if the
    end event carried one (else the final-state poller must ask Slurm)."""

    job_id: str
    end_ts: float
    state: str | None


@dataclass(frozen=True)
class HistoryEntry:
    """An ended job as the history features see it."""

    user: str | None
    end_ts: float
    state: str | None


@dataclass
class Changes:
    """What one ``apply`` changed."""

    started: list[str] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    samples: int = 0


class SampleRows(NamedTuple):
    """The rings of some jobs as columns: ``cols[k]`` is ``ROW_FIELDS[k]`` (float64, NaN
    unknown) and ``cols[-1]`` the node code; job i's rows are ``counts[i]`` consecutive
    rows, in ring order, after those of jobs 0..i-1. ``iowait[r]`` is row r's node iowait
    (``features.node_asof``; NaN unknown; None where not joined)."""

    cols: np.ndarray
    counts: np.ndarray
    node_names: list[str]
    iowait: np.ndarray | None = None


class HistoryColumns(NamedTuple):
    """The ended jobs of the history as ``features.JobTable`` columns (``user`` coded by
    ``users``, -1 unknown; ``label`` from the final state, NaN unknown)."""

    job_id: np.ndarray
    user: np.ndarray
    users: dict[str, int]
    end_ts: np.ndarray
    state: np.ndarray
    label: np.ndarray


def _history_columns(history: Mapping[str, HistoryEntry]) -> HistoryColumns:
    users: dict[str, int] = {}
    labels: dict[str | None, float] = {}
    entries = list(history.values())
    states = [h.state for h in entries]
    return HistoryColumns(
        job_id=np.array(list(history), dtype=object),
        user=np.array([-1 if h.user is None else users.setdefault(h.user, len(users)) for h in entries],
                      np.int64),
        users=users,
        end_ts=np.array([h.end_ts for h in entries], np.float64),
        state=np.array(states, dtype=object),
        label=np.array([labels[s] if s in labels else labels.setdefault(s, features.label_of(s))
                        for s in states], np.float64))


class _Mirror:
    """The float table of the last ``sample_rows`` call and where each job's rows are;
    beside it each row's joined iowait (NaN for the rows new in the last call, which
    ``fresh`` marks: ``JobState`` joins them)."""

    def __init__(self) -> None:
        self.cols = np.zeros((len(ROW_FIELDS) + 1, 0))
        self.iowait = np.zeros(0)
        self.fresh = np.zeros(0, bool)
        self.where: dict[str, tuple[RunningJob, int, int, int]] = {}  # job -> (run, start, rows, appended)
        self.nodes: dict[str, int] = {}

    def update(self, jobs: Sequence[RunningJob]) -> SampleRows:
        """The table for ``jobs``: earlier rows that are still in the rings, then the
        samples that arrived since the last call (converted here, in one go)."""
        src: list[int] = []
        keep: list[int] = []
        counts: list[int] = []
        fresh: list[tuple[Any, ...]] = []
        old, where, start = self.where, {}, 0
        for run in jobs:   # one pass, no numpy per job: 10,000 jobs take ~10 ms
            ring, n = run.samples, len(run.samples)
            prev = old.get(run.job_id)
            k = at = 0
            if prev is not None and prev[0] is run:   # its rows from the last call, minus what popped
                k = min(max(n - (run.appended - prev[3]), 0), prev[2])
                at = prev[1] + prev[2] - k if k else 0
            src.append(at)
            keep.append(k)
            if k == 0:
                fresh.extend(ring)
            elif k == n - 1:
                fresh.append(ring[-1])
            elif k < n:
                fresh.extend([ring[j] for j in range(k, n)])
            counts.append(n)
            where[run.job_id] = (run, start, n, run.appended)
            start += n
        counts_arr = np.array(counts, np.int64)
        self.cols = self._gather(np.array(src, np.int64), np.array(keep, np.int64), counts_arr, fresh)
        self.where = where
        return SampleRows(self.cols, counts_arr, list(self.nodes))

    def _gather(self, src: np.ndarray, keep: np.ndarray, counts: np.ndarray,
                fresh: list[tuple[Any, ...]]) -> np.ndarray:
        """Kept rows of the old table and the fresh samples, each job's rows together
        (one gather from the old table with the fresh rows appended)."""
        codes = self.nodes
        new = np.array([(*_ROW(b), codes.setdefault(b[1], len(codes))) for b in fresh],
                       dtype=np.float64).reshape(len(fresh), len(ROW_FIELDS) + 1)
        width = self.cols.shape[1]
        both = np.concatenate([self.cols, new.T], axis=1) if len(fresh) else self.cols
        # per job: its kept rows (from ``src``), then its fresh ones (in ``new`` order)
        fresh_starts = width + np.cumsum(counts - keep) - (counts - keep)
        starts = np.stack([src, fresh_starts], axis=1).ravel()
        lengths = np.stack([keep, counts - keep], axis=1).ravel()
        idx = _ranges(starts, lengths)
        self.fresh = idx >= width
        self.iowait = np.concatenate([self.iowait, np.full(len(fresh), np.nan)])[idx]
        return np.take(both, idx, axis=1)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + n) for s, n in zip(starts, lengths))``, vectorised."""
    ends = np.cumsum(lengths)
    idx: np.ndarray = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths - starts, lengths)
    return idx


class _StoreReader(Protocol):
    def running_jobs(self) -> list[Any]: ...
    def ended_jobs(self, since_ts: float | None = None, until_ts: float | None = None) -> list[Any]: ...
    def job_samples(self, job_ids: Iterable[str] | None = None,
                    since_ts: float | None = None) -> list[tuple[Any, ...]]: ...
    def node_samples(self, node: str | None = None,
                     since_ts: float | None = None) -> list[tuple[Any, ...]]: ...


class JobState:
    """Running jobs and recent history, fed by wire messages (see the module doc)."""

    def __init__(self, *, horizon_s: float = 720.0, max_samples: int = 256,
                 history_s: float = 90 * 86400.0, orphan_ttl_s: float = 3600.0,
                 iowait_max_age_s: float = features.IOWAIT_MAX_AGE_S,
                 max_readings: int = 256, max_jobs: int = 100_000, max_orphans: int = 10_000,
                 max_nodes: int = 16384) -> None:
        if horizon_s <= 0 or max_samples < 2 or iowait_max_age_s < 0 or max_readings < 1:
            raise ValueError("horizon_s must be > 0, max_samples >= 2, iowait_max_age_s >= 0 and "
                             f"max_readings >= 1, got {horizon_s}, {max_samples}, "
                             f"{iowait_max_age_s}, {max_readings}")
        self.horizon_s = horizon_s
        self.max_samples = max_samples
        self.history_s = history_s
        self.orphan_ttl_s = orphan_ttl_s
        self.iowait_max_age_s = iowait_max_age_s
        self.max_readings = max_readings
        self.max_jobs, self.max_orphans, self.max_nodes = max_jobs, max_orphans, max_nodes
        #: Times a bound kept something out, by ``nomade.agent.exporter.LIMITS`` name.
        self.limit_hits: dict[str, int] = {}
        self._orphans: set[str] = set()   # running jobs without a start yet
        self.running: dict[str, RunningJob] = {}
        self.history: dict[str, HistoryEntry] = {}
        self.iowait: dict[str, deque[tuple[float, float]]] = {}
        self._iowait_newest: dict[str, float] = {}
        self._changed_from: dict[str, float] = {}   # node -> oldest reading since the last join
        self._mirror = _Mirror()
        self._history_cols: HistoryColumns | None = None   # None: history changed since

    # -- stimuli

    def apply(self, messages: Iterable[Any]) -> Changes:
        """Take decoded messages (``kind``, ``ts``, ``body``) in order; what changed.

        ``job.start`` adds or completes a running job; ``job.sample`` goes into the job's
        ring; ``job.end`` moves it to the history (a late start or sample of an ended job
        is ignored); a ``node.sample`` with a known iowait goes to its node's readings.
        Other kinds are ignored here.
        """
        changes = Changes()
        for msg in messages:
            kind = msg.kind
            if kind == "job.sample":
                self.apply_rows((tuple(map(msg.body.get, JOB_SAMPLE_FIELDS)),))
                changes.samples += 1
            elif kind == "job.start":
                if self._start(msg.body):
                    changes.started.append(str(msg.body["job_id"]))
            elif kind == "job.end":
                ended = self._end(msg.body, msg.ts)
                if ended is not None:
                    changes.ended.append(ended)
            elif kind == "node.sample":
                body = msg.body
                self._reading(body["node"], body["ts"], body.get("iowait_pct"))
        return changes

    def apply_rows(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """Take job samples as tuples in ``JOB_SAMPLE_FIELDS`` order (``row[0]`` the job
        id, ``row[1]`` the node, ``row[2]`` the time), as ``apply`` takes ``job.sample``
        messages: into the job's ring (held until its start arrives if it has none yet;
        ignored if it ended). How many rows it took (ignored ones included)."""
        # the hot path of ingest (one pass per job sample): no avoidable lookups
        running, history, horizon, n = self.running, self.history, self.horizon_s, 0
        for row in rows:
            n += 1
            job_id = row[0]
            run = running.get(job_id)
            if run is None:
                if job_id in history:   # an ended job is never in ``running``
                    continue
                run = self._job(job_id, orphan=True)
                if run is None:
                    continue
            ring = run.samples
            ring.append(row)
            run.appended += 1
            ts = row[2]
            if ts > run.newest_ts:
                run.newest_ts = ts
            cutoff = run.newest_ts - horizon
            while len(ring) > 2 and ring[0][2] < cutoff:
                ring.popleft()
        return n

    def final_state(self, job_id: str, state: str) -> None:
        """Stimulus: the final state of an ended job became known."""
        entry = self.history.get(job_id)
        if entry is not None:
            self.history[job_id] = HistoryEntry(entry.user, entry.end_ts, state)
            self._history_cols = None

    def expire(self, now: float) -> int:
        """Forget orphan samples and history older than their bounds; how many jobs."""
        old = [j for j, r in self.running.items()
               if not r.started and r.newest_ts < now - self.orphan_ttl_s]
        stale = [j for j, h in self.history.items() if h.end_ts < now - self.history_s]
        for j in old:
            del self.running[j]
            self._orphans.discard(j)
        for j in stale:
            del self.history[j]
        if stale:
            self._history_cols = None
        return len(old) + len(stale)

    # -- reading

    def scorable(self) -> list[RunningJob]:
        """Running jobs with a known start, in job-id order (stable output)."""
        return [r for _, r in sorted(self.running.items()) if r.started]

    def history_columns(self) -> HistoryColumns:
        """``history`` as columns; cached until the history changes (through this class)."""
        if self._history_cols is None:
            self._history_cols = _history_columns(self.history)
        return self._history_cols

    def sample_rows(self, jobs: Sequence[RunningJob]) -> SampleRows:
        """The rings of ``jobs`` (running jobs of this state) as one float table, in the
        order given, with each row's node iowait (module doc); converts only the samples
        that arrived since the last call, and forgets the readings no row needs."""
        rows = self._mirror.update(jobs)
        return rows._replace(iowait=self._join_iowait(rows))

    def _join_iowait(self, rows: SampleRows) -> np.ndarray:
        """Each row's node iowait as of its time (``features.node_asof``): joined for
        the rows new in this call and for those that a reading arrived since the last
        call may change (its node's rows from the reading's time on); kept otherwise."""
        mirror = self._mirror
        codes, iowait = mirror.nodes, mirror.iowait
        ts, node = rows.cols[0], rows.cols[-1].astype(np.int64)
        oldest = np.full(len(codes), np.inf)
        np.fmin.at(oldest, node, ts)
        self._trim_readings({name: oldest[code] for name, code in codes.items()})
        redo = mirror.fresh
        if self._changed_from:
            since = np.full(len(codes), np.inf)
            for name, t in self._changed_from.items():
                if name in codes:
                    since[codes[name]] = t
            redo = redo | (ts >= since[node])
            self._changed_from.clear()
        if redo.any():
            names = [n for n in self.iowait if n in codes]
            series = [self.iowait[n] for n in names]
            counts = [len(s) for s in series]
            ref = np.fromiter(chain.from_iterable(chain.from_iterable(series)), np.float64,
                              2 * sum(counts)).reshape(-1, 2)
            ref_node = np.repeat(np.array([codes[n] for n in names], np.int64), counts)
            iowait[redo] = features.node_asof(node[redo], ts[redo], ref_node, ref[:, 0], ref[:, 1],
                                              self.iowait_max_age_s)
        return iowait

    def _trim_readings(self, oldest_row: Mapping[str, float]) -> None:
        """Drop each node's readings (from the front: oldest arrived first) older than
        ``iowait_max_age_s`` before both its oldest ring row and ``horizon_s`` before its
        newest reading: no row can join them."""
        for name, series in self.iowait.items():
            keep = min(self._iowait_newest[name] - self.horizon_s,
                       oldest_row.get(name, np.inf)) - self.iowait_max_age_s
            while series and series[0][0] < keep:
                series.popleft()

    # -- rebuild

    @classmethod
    def rebuild(cls, store: _StoreReader, now: float, fields: tuple[str, ...],
                **kwargs: Any) -> JobState:
        """The state as the store knows it at ``now`` (after a restart): running jobs,
        their samples of the last ``horizon_s``, ended jobs of the last ``history_s``.
        ``fields`` names the columns of the store's sample tuples (``JOB_SAMPLE_FIELDS``
        is taken as is; another order is rearranged, missing fields None)."""
        state = cls(**kwargs)
        for job in store.running_jobs():
            run = state._job(job.job_id)
            if run is None:
                break
            run.request = {k: v for k in REQUEST_FIELDS if (v := getattr(job, k, None)) is not None}
            run.nodes = list(job.nodes)[:state.max_nodes]
        for job in store.ended_jobs(since_ts=now - state.history_s):
            state.history[job.job_id] = HistoryEntry(job.user, job.end_ts, job.state)
        state._history_cols = None
        if state.running:
            rows = store.job_samples(list(state.running), since_ts=now - state.horizon_s)
            if tuple(fields) != JOB_SAMPLE_FIELDS:
                rows = [tuple(map(dict(zip(fields, row, strict=True)).get, JOB_SAMPLE_FIELDS)) for row in rows]
            state.apply_rows(rows)
        state._rebuild_readings(store, now)
        return state

    def _rebuild_readings(self, store: _StoreReader, now: float) -> None:
        """The node readings that the rebuilt rings' samples may join, from the store
        (one indexed query per node of those samples)."""
        per_node: dict[str, float] = {}
        for run in self.running.values():
            for row in run.samples:
                if row[2] is not None and row[2] < per_node.get(row[1], np.inf):
                    per_node[row[1]] = row[2]
        node_k, ts_k, io_k = (NODE_SAMPLE_FIELDS.index(f) for f in ("node", "ts", "iowait_pct"))
        for name, oldest in sorted(per_node.items()):
            since = min(oldest, now - self.horizon_s) - self.iowait_max_age_s
            for r in store.node_samples(name, since_ts=since):
                self._reading(r[node_k], r[ts_k], r[io_k])

    # -- internals

    def _reading(self, node: str, ts: float | None, iowait: float | None) -> None:
        """A node's iowait reading (ignored when its time or value is unknown)."""
        if ts is None or iowait is None:
            return
        series = self.iowait.get(node)
        if series is None:
            series = self.iowait[node] = deque(maxlen=self.max_readings)
            self._iowait_newest[node] = ts
        series.append((ts, iowait))
        if ts > self._iowait_newest[node]:
            self._iowait_newest[node] = ts
        if ts < self._changed_from.get(node, np.inf):
            self._changed_from[node] = ts

    def _job(self, job_id: str, orphan: bool = False) -> RunningJob | None:
        """The running job ``job_id``, made if new (``orphan``: from a sample, no start
        yet); None, counted, when a bound keeps a new one out."""
        run = self.running.get(job_id)
        if run is None:
            if len(self.running) >= self.max_jobs:
                self._hit("running_jobs")
                return None
            if orphan:
                if len(self._orphans) >= self.max_orphans:
                    self._hit("orphan_jobs")
                    return None
                self._orphans.add(job_id)
            run = self.running[job_id] = RunningJob(job_id, samples=deque(maxlen=self.max_samples))
        return run

    def _hit(self, limit: str) -> None:
        self.limit_hits[limit] = self.limit_hits.get(limit, 0) + 1

    def _start(self, body: Mapping[str, Any]) -> bool:
        job_id = str(body["job_id"])
        if job_id in self.history:
            return False
        run = self._job(job_id)
        if run is None:
            return False
        was_started = run.started
        for key in REQUEST_FIELDS:
            value = body.get(key)
            if value is None:
                continue
            old = run.request.get(key)
            if old is None or (key in ("start_ts", "submit_ts") and value < old):
                run.request[key] = value
        nodes = body.get("nodes")
        if nodes:
            self._add_nodes(run, nodes)
        if run.started:
            self._orphans.discard(job_id)
        return run.started and not was_started

    def _add_nodes(self, run: RunningJob, nodes: Iterable[str]) -> None:
        """Append the new ones of ``nodes`` to ``run.nodes``, up to ``max_nodes``."""
        have = set(run.nodes)
        for n in nodes:
            if n not in have:
                if len(run.nodes) >= self.max_nodes:
                    self._hit("nodes_per_job")
                    return
                run.nodes.append(n)
                have.add(n)

    def _end(self, body: Mapping[str, Any], ts: float) -> Ended | None:
        job_id = str(body["job_id"])
        end_ts = body.get("end_ts")
        end_ts = ts if end_ts is None else end_ts
        state = body.get("state")
        known = self.history.get(job_id)
        if known is not None:
            if state is not None and known.state is None:
                self.history[job_id] = HistoryEntry(known.user, known.end_ts, state)
                self._history_cols = None
            return None
        run = self.running.pop(job_id, None)
        self._orphans.discard(job_id)
        user = run.request.get("user") if run is not None else None
        self.history[job_id] = HistoryEntry(user, end_ts, state)
        self._history_cols = None
        return Ended(job_id, end_ts, state)
