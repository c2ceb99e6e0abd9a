"""Requested resources that no hook sees: ask Slurm once per started job, gently.

The start hooks' environment holds the user, partition, nodes and CPUs of a job, but not
its memory, GPUs or time limit (``/work/shared/slurm/README.md``, "Hooks"); jobcomp has
the time limit only at the end. The agent completes a started job's request from
``squeue --json`` (``nomade.slurm.Slurm.list_jobs``): one batched query per round for
every job that is due, a job first asked as soon as it is seen lacking, then after
doubling delays (2, 4, 8 ... s, capped) while Slurm does not list it or the query fails,
and given up after a bound with a logged reason (as ``nomade.agent.outcomes`` does for final
states, submitit's ``InfoWatcher`` habit).

``RequestTracker`` is the pure decision part: stimuli in (which running jobs lack request
fields, Slurm's answer, a failed query), what to do out; it never touches Slurm, the
store or the job state. ``start_body`` turns one of Slurm's answers into a ``job.start``
body (source ``"slurm"``) that the store and ``nomade.agent.jobstate`` merge like any hook
event: unknown fields are filled, known ones kept, the earliest start kept. The agent
daemon does the I/O.

A job whose answer leaves a field unknown (an unlimited time limit) is not asked again
while it runs. A job that ends before its first round keeps what its hooks gave.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nomade.agent.backoff import Backoff, Watch
from nomade.slurm import Job

#: Where a request completed from Slurm comes from (``job.start`` source).
SOURCE = "slurm"
#: Request fields the node and controller hooks do not give at start: a running job
#: missing any of them is asked about.
NEEDED: tuple[str, ...] = ("req_mem_bytes", "req_gpus", "time_limit_s")


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


def lacking(requests: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Ids of the (job id, request) pairs whose request misses one of ``NEEDED``."""
    return [job_id for job_id, req in requests if any(req.get(k) is None for k in NEEDED)]


def start_body(job: Job) -> dict[str, Any]:
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
        self._backoff = Backoff(first_delay_s=first_delay_s, max_delay_s=max_delay_s,
                                give_up_after_s=give_up_after_s, max_batch=max_batch)

    def observe(self, job_ids: Iterable[str], now: float) -> None:
        """Stimulus: these running jobs lack request fields now (the whole list, each round)."""
        current = set(job_ids)
        for job_id in current:
            self._backoff.add(job_id, now)
        self._backoff.keep_only(current)

    def watching(self) -> list[str]:
        """Jobs still waiting for Slurm's answer."""
        return self._backoff.watching()

    def due(self, now: float) -> list[str]:
        """The jobs to ask about in one batched query now (earliest due first)."""
        return self._backoff.due(now)

    def answered(self, now: float, jobs: Mapping[str, Job | None]) -> list[Answer | GiveUp]:
        """Stimulus: Slurm's answer to a query of ``due`` jobs (None: not listed). The
        answer is about the id asked (an array task's own id, which Slurm lists as
        ``"<array job>_<task>"``)."""
        out: list[Answer | GiveUp] = []
        for job_id, job in jobs.items():
            if self._backoff.get(job_id) is None:
                continue
            if job is not None:
                out.append(Answer(job_id, {**start_body(job), "job_id": job_id}))
                self._backoff.settle(job_id)
                continue
            gone = self._backoff.retry_later(job_id, now, "not listed by Slurm", answered=True)
            out += [] if gone is None else [_give_up(job_id, now, gone)]
        return out

    def query_failed(self, now: float, job_ids: Iterable[str]) -> list[GiveUp]:
        """Stimulus: the batched query failed; back off those jobs (some may give up)."""
        return [_give_up(j, now, w) for j, w in self._backoff.query_failed(now, job_ids)]

    def retry(self, job_ids: Iterable[str]) -> None:
        """Stimulus: what was answered for these jobs could not be kept; ask again when
        ``observe`` next lists them."""
        self._backoff.reopen(job_ids)


def _give_up(job_id: str, now: float, watch: Watch) -> GiveUp:
    return GiveUp(job_id, f"no answer {now - watch.origin_ts:.0f} s after it was first "
                           f"asked ({watch.attempts} tries, last: {watch.last_seen})")


__all__ = ["Answer", "GiveUp", "NEEDED", "RequestTracker", "SOURCE", "lacking", "start_body"]
