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
  ``orphan_ttl_s`` after their newest sample.
* ``history``: ended jobs (user, end time, final state once known) from the last
  ``history_s``, for the as-of user-history features.

Counters in a sample are cumulative from the job's start, so dropping old samples
loses nothing the features need except a peak seen only in a dropped sample (the
cgroup's own ``mem_peak_bytes`` keeps that).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: ``job.start`` fields merged into a running job's request (first known value wins).
REQUEST_FIELDS: tuple[str, ...] = (
    "user", "uid", "partition", "account", "num_nodes", "req_cpus", "req_mem_bytes",
    "req_gpus", "time_limit_s", "submit_ts", "start_ts")


@dataclass
class RunningJob:
    """One job the agent scores: its request (``job.start`` fields, None unknown), its
    nodes, and its recent ``job.sample`` bodies (oldest first, read-only dicts)."""

    job_id: str
    request: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    samples: deque[Mapping[str, Any]] = field(default_factory=deque)
    newest_ts: float = float("-inf")

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


class _StoreReader(Protocol):
    def running_jobs(self) -> list[Any]: ...
    def ended_jobs(self, since_ts: float | None = None, until_ts: float | None = None) -> list[Any]: ...
    def job_samples(self, job_ids: Iterable[str] | None = None,
                    since_ts: float | None = None) -> list[tuple[Any, ...]]: ...


class JobState:
    """Running jobs and recent history, fed by wire messages (see the module doc)."""

    def __init__(self, *, horizon_s: float = 720.0, max_samples: int = 256,
                 history_s: float = 90 * 86400.0, orphan_ttl_s: float = 3600.0) -> None:
        if horizon_s <= 0 or max_samples < 2:
            raise ValueError(f"horizon_s must be > 0 and max_samples >= 2, got {horizon_s}, {max_samples}")
        self.horizon_s = horizon_s
        self.max_samples = max_samples
        self.history_s = history_s
        self.orphan_ttl_s = orphan_ttl_s
        self.running: dict[str, RunningJob] = {}
        self.history: dict[str, HistoryEntry] = {}

    # -- stimuli

    def apply(self, messages: Iterable[Any]) -> Changes:
        """Take decoded messages (``kind``, ``ts``, ``body``) in order; what changed.

        ``job.start`` adds or completes a running job; ``job.sample`` goes into the job's
        ring; ``job.end`` moves it to the history (a late start or sample of an ended job
        is ignored). Other kinds are ignored here.
        """
        changes = Changes()
        sample = self._sample
        for msg in messages:
            kind = msg.kind
            if kind == "job.sample":
                sample(msg.body)
                changes.samples += 1
            elif kind == "job.start":
                if self._start(msg.body):
                    changes.started.append(str(msg.body["job_id"]))
            elif kind == "job.end":
                ended = self._end(msg.body, msg.ts)
                if ended is not None:
                    changes.ended.append(ended)
        return changes

    def final_state(self, job_id: str, state: str) -> None:
        """Stimulus: the final state of an ended job became known."""
        entry = self.history.get(job_id)
        if entry is not None:
            self.history[job_id] = HistoryEntry(entry.user, entry.end_ts, state)

    def expire(self, now: float) -> int:
        """Forget orphan samples and history older than their bounds; how many jobs."""
        old = [j for j, r in self.running.items()
               if not r.started and r.newest_ts < now - self.orphan_ttl_s]
        stale = [j for j, h in self.history.items() if h.end_ts < now - self.history_s]
        for j in old:
            del self.running[j]
        for j in stale:
            del self.history[j]
        return len(old) + len(stale)

    # -- reading

    def scorable(self) -> list[RunningJob]:
        """Running jobs with a known start, in job-id order (stable output)."""
        return [r for _, r in sorted(self.running.items()) if r.started]

    # -- rebuild

    @classmethod
    def rebuild(cls, store: _StoreReader, now: float, fields: tuple[str, ...],
                **kwargs: Any) -> JobState:
        """The state as the store knows it at ``now`` (after a restart): running jobs,
        their samples of the last ``horizon_s``, ended jobs of the last ``history_s``.
        ``fields`` names the columns of the store's sample tuples."""
        state = cls(**kwargs)
        for job in store.running_jobs():
            run = state.running[job.job_id] = RunningJob(job.job_id)
            run.request = {k: v for k in REQUEST_FIELDS if (v := getattr(job, k, None)) is not None}
            run.nodes = list(job.nodes)
        for job in store.ended_jobs(since_ts=now - state.history_s):
            state.history[job.job_id] = HistoryEntry(job.user, job.end_ts, job.state)
        if state.running:
            for row in store.job_samples(list(state.running), since_ts=now - state.horizon_s):
                state._sample(dict(zip(fields, row)))
        return state

    # -- internals

    def _job(self, job_id: str) -> RunningJob:
        run = self.running.get(job_id)
        if run is None:
            run = self.running[job_id] = RunningJob(job_id, samples=deque(maxlen=self.max_samples))
        return run

    def _start(self, body: Mapping[str, Any]) -> bool:
        job_id = str(body["job_id"])
        if job_id in self.history:
            return False
        run = self._job(job_id)
        was_started = run.started
        for key in REQUEST_FIELDS:
            value = body.get(key)
            if value is None:
                continue
            old = run.request.get(key)
            if old is None or (key in ("start_ts", "submit_ts") and value < old):
                run.request[key] = value
        run.nodes.extend(n for n in body.get("nodes") or () if n not in run.nodes)
        return run.started and not was_started

    def _sample(self, body: Mapping[str, Any]) -> None:
        # the hot path of ingest (one call per job sample): no avoidable lookups
        job_id = body["job_id"]
        run = self.running.get(job_id)
        if run is None:
            if job_id in self.history:   # an ended job is never in ``running``
                return
            run = self._job(job_id)
        ring = run.samples
        ring.append(body)
        ts = body["ts"]
        if ts > run.newest_ts:
            run.newest_ts = ts
        cutoff = run.newest_ts - self.horizon_s
        while len(ring) > 2 and ring[0]["ts"] < cutoff:
            ring.popleft()

    def _end(self, body: Mapping[str, Any], ts: float) -> Ended | None:
        job_id = str(body["job_id"])
        end_ts = body.get("end_ts")
        end_ts = ts if end_ts is None else end_ts
        state = body.get("state")
        known = self.history.get(job_id)
        if known is not None:
            if state is not None and known.state is None:
                self.history[job_id] = HistoryEntry(known.user, known.end_ts, state)
            return None
        run = self.running.pop(job_id, None)
        user = run.request.get("user") if run is not None else None
        self.history[job_id] = HistoryEntry(user, end_ts, state)
        return Ended(job_id, end_ts, state)
