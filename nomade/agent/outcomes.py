"""Final state of ended jobs: ask Slurm, gently, until the state is final.

No hook environment holds a job's final state (TIMEOUT and CANCELLED look like exit 0
in the epilogs), so after a job's end event the agent asks slurmctld until the state
is final. Like submitit's ``InfoWatcher`` this asks one batched query for all due jobs,
backs off per job (2, 4, 8 ... s after the end, capped), logs and skips a failed call,
and gives up after a bound with a logged reason.

``FinalStateTracker`` is the pure decision part (dask's ``WorkerState`` habit): it takes
stimuli (a job ended, Slurm answered, the query failed) and returns what to do; it
never touches Slurm or the store, so it is tested without either. ``poll_once`` is the
thin I/O shell that feeds it from the store and ``Slurm.final_states``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from nomade import slurmstates
from nomade.agent.backoff import Backoff, Watch

log = logging.getLogger(__name__)

#: Where a state found by asking Slurm is recorded from (``Job.state_source``).
SOURCE = "slurm"
#: The state a job gets when Slurm never told its final state (label None).
UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Final:
    """Slurm gave a final state: record it with its label."""

    job_id: str
    state: str
    exit_code: int | None
    label: int


@dataclass(frozen=True)
class GiveUp:
    """Stop asking: the state stays UNKNOWN (label None); ``reason`` says why."""

    job_id: str
    reason: str


class FinalStateTracker:
    """Which ended jobs to ask about now, and what their answers mean.

    A job is first asked ``first_delay_s`` after its end, then after doubling delays
    (capped at ``max_delay_s``), and given up ``give_up_after_s`` after its end
    (``nomade.agent.backoff``). Only a final state (``slurmstates.is_final``) settles a job;
    COMPLETING, RUNNING (requeued) or "unknown to Slurm" keep it waiting.
    """

    def __init__(self, *, first_delay_s: float = 2.0, max_delay_s: float = 60.0,
                 give_up_after_s: float = 300.0, max_batch: int = 1000,
                 max_jobs: int = 100_000) -> None:
        self.give_up_after_s = give_up_after_s
        self.full = False
        """Whether the last ``poll_once`` found ``max_jobs`` or more jobs to watch."""
        self.max_jobs = max_jobs
        """Most ended jobs watched (and remembered as settled) at once (``poll_once``)."""
        self._backoff = Backoff(first_delay_s=first_delay_s, max_delay_s=max_delay_s,
                                give_up_after_s=give_up_after_s, max_batch=max_batch)

    def job_ended(self, job_id: str, ended_ts: float) -> None:
        """Stimulus: ``job_id`` ended at ``ended_ts`` with no final state known (idempotent)."""
        self._backoff.add(job_id, ended_ts, wait_first=True)

    def keep_only(self, job_ids: set[str]) -> None:
        """Forget every job, watched or settled, not in ``job_ids`` (bounds the memory)."""
        self._backoff.keep_only(job_ids)

    def watching(self) -> list[str]:
        """Jobs still waiting for a final state."""
        return self._backoff.watching()

    def due(self, now: float) -> list[str]:
        """The jobs to ask about in one batched query now (earliest-due first)."""
        return self._backoff.due(now)

    def next_due_ts(self) -> float | None:
        """When ``due`` will next return something (None: nothing to watch)."""
        return self._backoff.next_due_ts()

    def answered(self, now: float,
                 answers: Mapping[str, tuple[str, int | None] | None]) -> list[Final | GiveUp]:
        """Stimulus: Slurm's answers to a query of ``due`` jobs; returns the settled ones."""
        out: list[Final | GiveUp] = []
        for job_id, answer in answers.items():
            if self._backoff.get(job_id) is None:
                continue
            state = slurmstates.normalise(answer[0]) if answer else None
            label = slurmstates.label_for(state)
            if state is not None and label is not None:
                out.append(Final(job_id, state, answer[1] if answer else None, label))
                self._backoff.settle(job_id)
                continue
            seen = state or "not final or unknown to Slurm"
            gone = self._backoff.retry_later(job_id, now, seen, answered=True)
            out += [] if gone is None else [_give_up(job_id, now, gone)]
        return out

    def query_failed(self, now: float, job_ids: Iterable[str]) -> list[GiveUp]:
        """Stimulus: the batched query failed; back off those jobs (some may give up)."""
        return [_give_up(j, now, w) for j, w in self._backoff.query_failed(now, job_ids)]


def _give_up(job_id: str, now: float, watch: Watch) -> GiveUp:
    return GiveUp(job_id, f"no final state {now - watch.origin_ts:.0f} s after the end "
                           f"({watch.attempts} answers, last: {watch.last_seen})")


class _Store(Protocol):
    def jobs_awaiting_final_state(self, since_ts: float | None = None,
                                  limit: int | None = None) -> list: ...  # type: ignore[type-arg]
    def set_final_state(self, job_id: str, state: str, exit_code: int | None,
                        source: str) -> None: ...


class _Slurm(Protocol):
    def final_states(self, job_ids: list[str]) -> dict[str, tuple[str, int | None] | None]: ...


def poll_once(tracker: FinalStateTracker, store: _Store, slurm: _Slurm,
              now: float) -> list[Final | GiveUp]:
    """One round: watch the store's ended jobs, ask Slurm about the due ones, record states.

    A failed Slurm call is logged and backed off, never raised. Give-ups are logged with
    their reason; their state stays unknown in the store. Only jobs that ended less than
    ``give_up_after_s`` ago are read, at most ``tracker.max_jobs`` (the earliest ended;
    ``tracker.full`` says the bound was hit), and the tracker forgets every other job,
    so its memory and each round's store read are bounded.
    """
    awaiting = store.jobs_awaiting_final_state(since_ts=now - tracker.give_up_after_s,
                                               limit=tracker.max_jobs)
    tracker.full = len(awaiting) >= tracker.max_jobs
    tracker.keep_only({job.job_id for job in awaiting})
    for job in awaiting:
        tracker.job_ended(job.job_id, job.end_ts)
    due = tracker.due(now)
    if not due:
        return []
    try:
        answers = slurm.final_states(due)
    except Exception as e:  # a Slurm outage must not stop the agent: log, back off, go on
        log.warning("final-state query for %d jobs failed: %s", len(due), e)
        decisions: list[Final | GiveUp] = list(tracker.query_failed(now, due))
    else:
        decisions = tracker.answered(now, {j: answers.get(j) for j in due})
    for d in decisions:
        if isinstance(d, Final):
            store.set_final_state(d.job_id, d.state, d.exit_code, SOURCE)
        else:
            log.warning("job %s: giving up on its final state (%s): %s", d.job_id, UNKNOWN,
                        d.reason)
    return decisions
