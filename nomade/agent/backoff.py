"""Per-job backoff for batched Slurm queries: who is due now, when to ask again, when to stop.

The agent asks slurmctld about jobs it watches (final states, requested resources) the way
submitit's ``InfoWatcher`` does: one batched query for every due job, doubling delays per
job while the answer is not yet useful (2, 4, 8 ... s, capped), and a bound after which it
gives up. ``Backoff`` is that policy alone, pure and stdlib-only: keyed by job id, it
never asks Slurm, logs or knows what an answer means; ``nomade.agent.outcomes`` and
``nomade.agent.requests`` feed it their stimuli and word their own give-up reasons.

A settled job (answered, or given up) is remembered so that it is not watched again until
``reopen`` or ``keep_only`` forgets it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Watch:
    """One watched job: asked from ``origin_ts`` on, next at ``next_ts``.

    ``delay_s`` is the wait after the next unhelpful ask; ``attempts`` counts answers
    Slurm gave (failed queries not counted); ``last_seen`` says what the last ask found.
    """

    origin_ts: float
    next_ts: float
    delay_s: float
    attempts: int = 0
    last_seen: str = ""


class Backoff:
    """Which watched jobs are due, and their doubling, capped, bounded delays.

    A job added with ``wait_first`` is first due ``first_delay_s`` after its origin, else
    at its origin. Each unhelpful ask (``retry_later``) waits the next delay of
    ``first_delay_s``, doubling, capped at ``max_delay_s``, but never past
    ``origin + give_up_after_s``; an unhelpful ask at or after that bound gives up.
    ``due`` returns at most ``max_batch`` jobs, earliest due first.
    """

    def __init__(self, *, first_delay_s: float, max_delay_s: float, give_up_after_s: float,
                 max_batch: int) -> None:
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.give_up_after_s = give_up_after_s
        self.max_batch = max_batch
        self._watch: dict[str, Watch] = {}
        self._done: set[str] = set()

    def add(self, job_id: str, origin_ts: float, *, wait_first: bool = False) -> None:
        """Watch ``job_id`` from ``origin_ts``; a job watched or settled already is kept as is."""
        if job_id in self._watch or job_id in self._done:
            return
        if wait_first:
            watch = Watch(origin_ts, origin_ts + self.first_delay_s,
                          min(self.first_delay_s * 2, self.max_delay_s))
        else:
            watch = Watch(origin_ts, origin_ts, self.first_delay_s)
        self._watch[job_id] = watch

    def get(self, job_id: str) -> Watch | None:
        """The watch of ``job_id`` (None: not watched)."""
        return self._watch.get(job_id)

    def watching(self) -> list[str]:
        """Jobs still watched, in the order they were added."""
        return list(self._watch)

    def due(self, now: float) -> list[str]:
        """The jobs to ask about in one batched query now (earliest due first)."""
        ready = sorted((w.next_ts, j) for j, w in self._watch.items() if w.next_ts <= now)
        return [j for _, j in ready[:self.max_batch]]

    def next_due_ts(self) -> float | None:
        """When ``due`` will next return something (None: nothing watched)."""
        return min((w.next_ts for w in self._watch.values()), default=None)

    def settle(self, job_id: str) -> None:
        """Stop watching ``job_id`` (it was answered) and do not watch it again."""
        del self._watch[job_id]
        self._done.add(job_id)

    def retry_later(self, job_id: str, now: float, last_seen: str, *,
                    answered: bool) -> Watch | None:
        """The ask at ``now`` did not settle watched ``job_id``: back off, or give up.

        ``answered``: Slurm answered (counted in ``attempts``), else the query failed.
        Returns None when the job is asked again later, or its final ``Watch`` when it
        was given up (and settled).
        """
        watch = self._watch[job_id]
        watch.attempts += answered
        watch.last_seen = last_seen
        if now - watch.origin_ts >= self.give_up_after_s:
            self.settle(job_id)
            return watch
        watch.next_ts = min(now + watch.delay_s, watch.origin_ts + self.give_up_after_s)
        watch.delay_s = min(watch.delay_s * 2, self.max_delay_s)
        return None

    def query_failed(self, now: float, job_ids: Iterable[str]) -> list[tuple[str, Watch]]:
        """The batched query at ``now`` failed: back off the watched ones of ``job_ids``.

        Returns (job id, final ``Watch``) of those given up; ids not watched are ignored.
        """
        gone = [(j, self.retry_later(j, now, "query failed", answered=False))
                for j in job_ids if j in self._watch]
        return [(j, w) for j, w in gone if w is not None]

    def keep_only(self, job_ids: set[str]) -> None:
        """Forget watched and settled jobs not in ``job_ids`` (a job seen again starts afresh)."""
        for job_id in [j for j in self._watch if j not in job_ids]:
            del self._watch[job_id]
        self._done &= job_ids

    def reopen(self, job_ids: Iterable[str]) -> None:
        """Let these settled jobs be watched again by a later ``add``."""
        self._done.difference_update(job_ids)
