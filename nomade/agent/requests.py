"""Requested resources that no hook sees: ask Slurm once per started job, gently.

The start hooks' environment holds the user, partition, nodes and CPUs of a job, but not
its memory, GPUs or time limit (``/work/shared/slurm/README.md``, "Hooks"); jobcomp has
the time limit only at the end. The agent completes a started job's request from
``squeue --json`` (``nomade.slurm.Slurm.list_jobs``): one batched query per round for
every job that is due, a job first asked as soon as it is seen lacking, then after
doubling delays (2, 4, 8 ... s, capped) while Slurm does not list it or the query fails,
and given up after a bound with a logged reason (as ``nomade.finalstate`` does for final
states, submitit's ``InfoWatcher`` habit).

``RequestTracker`` is the pure decision part: stimuli in (which running jobs lack request
fields, Slurm's answer, a failed query), what to do out; it never touches Slurm, the
store or the job state. ``start_body`` turns one of Slurm's answers into a ``job.start``
body (source ``"slurm"``) that the store and ``nomade.agent.state`` merge like any hook
event: unknown fields are filled, known ones kept, the earliest start kept. The agent
daemon does the I/O.

A job whose answer leaves a field unknown (an unlimited time limit) is not asked again
while it runs. A job that ends before its first round keeps what its hooks gave.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: Where a request completed from Slurm comes from (``job.start`` source).
SOURCE = "slurm"
#: Request fields the node and controller hooks do not give at start: a running job
#: missing any of them is asked about.
NEEDED: tuple[str, ...] = ("req_mem_bytes", "req_gpus", "time_limit_s")


class SlurmJob(Protocol):
    """What ``start_body`` reads of ``nomade.slurm.Job``."""

    job_id: str
    user: str | None
    uid: int | None
    account: str | None
    partition: str | None
    nodes: list[str]
    num_nodes: int | None
    req_cpus: int | None
    req_mem_bytes: int | None
    req_gpus: int
    time_limit_s: float | None
    submit_ts: float | None
    start_ts: float | None


@dataclass(frozen=True)
class Answer:
    """Slurm listed the job: merge ``body`` (a ``job.start`` body) into it."""

    job_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class GiveUp:
    """Stop asking: the fields stay unknown; ``reason`` says why."""

    job_id: str
    reason: str


@dataclass
class _Watch:
    first_ts: float
    next_ts: float
    delay_s: float
    attempts: int = 0
    last_seen: str = ""


def lacking(requests: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Ids of the (job id, request) pairs whose request misses one of ``NEEDED``."""
    return [job_id for job_id, req in requests if any(req.get(k) is None for k in NEEDED)]


def start_body(job: SlurmJob) -> dict[str, Any]:
    """A ``job.start`` body (``nomade.wire`` fields, source ``"slurm"``) from Slurm's view."""
    return {
        "job_id": job.job_id, "user": job.user, "uid": job.uid, "partition": job.partition,
        "account": job.account, "nodes": list(job.nodes) or None, "num_nodes": job.num_nodes,
        "req_cpus": job.req_cpus, "req_mem_bytes": job.req_mem_bytes, "req_gpus": job.req_gpus,
        "time_limit_s": job.time_limit_s, "submit_ts": job.submit_ts, "start_ts": job.start_ts,
        "source": SOURCE, "cluster": None}


class RequestTracker:
    """Which running jobs to ask Slurm about now, and what its answers mean.

    ``observe(job_ids, now)`` takes this round's running jobs that lack request fields:
    new ones are due at once; jobs that left the list (they ended, or another event
    filled their request) are forgotten, so memory stays bounded by the running jobs.
    A job Slurm does not list, or whose query failed, is asked again after
    ``first_delay_s``, then doubling delays capped at ``max_delay_s``, and given up
    ``give_up_after_s`` after it was first seen. A listed job is settled.
    """

    def __init__(self, *, first_delay_s: float = 2.0, max_delay_s: float = 60.0,
                 give_up_after_s: float = 600.0, max_batch: int = 1000) -> None:
        if first_delay_s <= 0 or max_delay_s < first_delay_s or max_batch < 1:
            raise ValueError("need 0 < first_delay_s <= max_delay_s and max_batch >= 1, got "
                             f"{first_delay_s}, {max_delay_s}, {max_batch}")
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.give_up_after_s = give_up_after_s
        self.max_batch = max_batch
        self._watch: dict[str, _Watch] = {}
        self._done: set[str] = set()

    def observe(self, job_ids: Iterable[str], now: float) -> None:
        """Stimulus: these running jobs lack request fields now (the whole list, each round)."""
        current = set(job_ids)
        for job_id in current - self._done - self._watch.keys():
            self._watch[job_id] = _Watch(now, now, self.first_delay_s)
        for job_id in [j for j in self._watch if j not in current]:
            del self._watch[job_id]
        self._done &= current

    def watching(self) -> list[str]:
        """Jobs still waiting for Slurm's answer."""
        return list(self._watch)

    def due(self, now: float) -> list[str]:
        """The jobs to ask about in one batched query now (earliest due first)."""
        ready = sorted((w.next_ts, j) for j, w in self._watch.items() if w.next_ts <= now)
        return [j for _, j in ready[:self.max_batch]]

    def answered(self, now: float, jobs: Mapping[str, SlurmJob | None]) -> list[Answer | GiveUp]:
        """Stimulus: Slurm's answer to a query of ``due`` jobs (None: not listed)."""
        out: list[Answer | GiveUp] = []
        for job_id, job in jobs.items():
            watch = self._watch.get(job_id)
            if watch is None:
                continue
            watch.attempts += 1
            if job is not None:
                out.append(Answer(job_id, start_body(job)))
                self._settle(job_id)
                continue
            watch.last_seen = "not listed by Slurm"
            out += self._backoff(job_id, now)
        return out

    def query_failed(self, now: float, job_ids: Iterable[str]) -> list[GiveUp]:
        """Stimulus: the batched query failed; back off those jobs (some may give up)."""
        out: list[GiveUp] = []
        for job_id in job_ids:
            if job_id in self._watch:
                self._watch[job_id].last_seen = "query failed"
                out += self._backoff(job_id, now)
        return out

    def retry(self, job_ids: Iterable[str]) -> None:
        """Stimulus: what was answered for these jobs could not be kept; ask again when
        ``observe`` next lists them."""
        self._done.difference_update(job_ids)

    def _backoff(self, job_id: str, now: float) -> list[GiveUp]:
        watch = self._watch[job_id]
        if now - watch.first_ts >= self.give_up_after_s:
            self._settle(job_id)
            return [GiveUp(job_id, f"no answer {now - watch.first_ts:.0f} s after it was first "
                                   f"asked ({watch.attempts} tries, last: {watch.last_seen})")]
        watch.next_ts = min(now + watch.delay_s, watch.first_ts + self.give_up_after_s)
        watch.delay_s = min(watch.delay_s * 2, self.max_delay_s)
        return []

    def _settle(self, job_id: str) -> None:
        del self._watch[job_id]
        self._done.add(job_id)


__all__ = ["Answer", "GiveUp", "NEEDED", "RequestTracker", "SOURCE", "lacking", "start_body"]
