"""Write each ended job's summary (``nomade.agent.summary``) into its Slurm AdminComment.

The agent feeds :class:`SummaryWriter` three stimuli: each tick's predictions
(``observe``: the highest risk of each job, when, its advice, the first time each level
was reached), the jobs that ended (``ended``), and a periodic ``round`` that writes the
due ones. A job is due once its final state is in the store, or ``wait_s`` after its end
without one (the summary then says ``state=-``): Slurm keeps an ended job in slurmctld
only for MinJobAge (300 s by default), so the summary is written promptly.

Writing (``round``): the job's row and last samples from the store give the use of its
resources; its AdminComment is read from ``squeue`` (one batched query for the round),
NØMADE's summary is merged in (other tools' text kept) and set with ``scontrol update``.
When slurmctld refuses (the job has finished, or is no longer known) it goes to the
accounting record with ``sacctmgr modify job`` instead, merged with what ``sacct``
shows. Rewriting the same summary changes nothing (idempotent). A failed write is
retried ``max_attempts`` times, ``retry_s`` apart, then counted and dropped; a round
writes at most ``max_per_round`` jobs and stops after ``budget_s`` seconds, so the
agent's loop is never held long. Jobs the agent never scored get a summary too (their
risk is ``-``), jobs that never started get none; after an agent restart, the risk of a
job scored before it is the newest one in the store, and jobs that ended before it
and were not written yet get no summary.

Each job whose summary is written with a final state also leaves its alert outcome in
``outcomes`` (failed or not, and the seconds from its first "high" or "critical"
prediction to its end: None when the risk never got there), which the agent drains into
its ``ended_jobs_total`` and ``alert_lead_seconds`` metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nomade import slurmstates
from nomade.agent import summary
from nomade.slurm import JobFinished, JobNotFound
from nomade.store import JOB_SAMPLE_FIELDS
from nomade.wire import LEVELS

log = logging.getLogger(__name__)

#: Seconds of samples read before a job's end: each node's last one is among them.
SAMPLE_WINDOW_S = 900.0


@dataclass
class Peak:
    """The highest prediction of a running job so far, and the first time each level
    above ``low`` was reached."""

    risk: float
    ts: float
    level: str
    advice: str | None
    crossed: dict[str, float] = field(default_factory=dict)


@dataclass
class _Pending:
    ended_ts: float
    next_ts: float
    attempts: int = 0


class _Store(Protocol):
    def get_job(self, job_id: str) -> Any: ...
    def job_samples(self, job_ids: Iterable[str] | None = None,
                    since_ts: float | None = None) -> list[tuple[Any, ...]]: ...
    def latest_predictions(self, job_ids: Iterable[str] | None = None) -> Mapping[str, Any]: ...


class _Slurm(Protocol):
    def list_jobs(self, job_ids: Iterable[str] | None = None) -> list[Any]: ...
    def set_admin_comment(self, job_id: str, text: str) -> None: ...
    def set_accounting_admin_comment(self, job_id: str, text: str) -> None: ...
    def accounting_admin_comment(self, job_id: str) -> str: ...


def advice_of(factors: Iterable[Mapping[str, Any]] | None) -> str | None:
    """The advice of a prediction: its factors' phrases, each once, joined by "; "."""
    phrases: list[str] = []
    for f in factors or ():
        text = f.get("text")
        if text and text not in phrases:
            phrases.append(str(text))
    return "; ".join(phrases) or None


class SummaryWriter:
    """Per-job peaks of running jobs and the queue of ended jobs to summarise (module doc).

    Holds at most ``max_jobs`` peaks and ``max_jobs`` queued jobs; what a bound keeps out
    is counted in ``dropped``."""

    def __init__(self, *, wait_s: float = 60.0, retry_s: float = 10.0, max_attempts: int = 5,
                 max_per_round: int = 50, budget_s: float = 2.0, max_jobs: int = 100_000) -> None:
        self.wait_s, self.retry_s, self.max_attempts = wait_s, retry_s, max_attempts
        self.max_per_round, self.budget_s, self.max_jobs = max_per_round, budget_s, max_jobs
        self.peaks: dict[str, Peak] = {}
        self.pending: dict[str, _Pending] = {}
        self.written = 0
        self.failed = 0
        self.dropped = 0
        #: (failed, lead seconds or None) of each job written with a final state, until drained.
        self.outcomes: list[tuple[bool, float | None]] = []

    # -- stimuli

    def observe(self, predictions: Iterable[Mapping[str, Any]], running: Iterable[str] | None = None) -> None:
        """Take one tick's ``prediction`` bodies (job_id, risk, level, ts, factors); with
        ``running``, forget the peaks of jobs neither running nor queued."""
        if running is not None:
            keep = set(running) | self.pending.keys()
            for job_id in [j for j in self.peaks if j not in keep]:
                del self.peaks[job_id]
        for p in predictions:
            job_id, risk, level, ts = str(p["job_id"]), float(p["risk"]), str(p["level"]), float(p["ts"])
            peak = self.peaks.get(job_id)
            if peak is None:
                if len(self.peaks) >= self.max_jobs:
                    self.dropped += 1
                    continue
                peak = self.peaks[job_id] = Peak(risk, ts, level, advice_of(p.get("factors")))
            elif risk > peak.risk:
                peak.risk, peak.ts, peak.level = risk, ts, level
                peak.advice = advice_of(p.get("factors")) or peak.advice
            if level != LEVELS[0] and level not in peak.crossed:
                peak.crossed[level] = ts

    def ended(self, job_ids: Iterable[str], now: float) -> None:
        """Stimulus: these jobs ended (idempotent)."""
        for job_id in job_ids:
            if job_id in self.pending:
                continue
            if len(self.pending) >= self.max_jobs:
                self.dropped += 1
                self.peaks.pop(job_id, None)
                continue
            self.pending[job_id] = _Pending(now, now)

    # -- the I/O round

    def round(self, store: _Store, slurm: _Slurm, now: float) -> int:
        """Write the due summaries (module doc); how many were written. Never raises."""
        t0 = time.monotonic()
        due = self._due(store, now)
        if not due:
            return 0
        try:
            listed = {}
            for j in slurm.list_jobs(job_ids=[job_id for job_id, _, _ in due]):   # array tasks: "A_T" or own id
                listed[j.job_id] = listed[j.own_id or j.job_id] = j
        except Exception as e:  # slurmctld busy or down: try these again later
            log.warning("AdminComment of %d ended jobs not read: %s", len(due), e)
            for job_id, _, _ in due:
                self._failed(job_id, now, e)
            return 0
        written = 0
        for job_id, s, end_ts in due:
            if time.monotonic() - t0 > self.budget_s:
                break
            try:
                self._write(slurm, job_id, s, listed.get(job_id))
            except Exception as e:  # one job's failure must not stop the others
                self._failed(job_id, now, e)
                continue
            written += 1
            if (outcome := _outcome(s, end_ts)) is not None:
                self.outcomes.append(outcome)
            self.pending.pop(job_id, None)
            self.peaks.pop(job_id, None)
        self.written += written
        return written

    def _due(self, store: _Store, now: float) -> list[tuple[str, summary.Summary, float | None]]:
        """The queued jobs to write now with their summaries and end times (at most
        ``max_per_round``)."""
        out: list[tuple[str, summary.Summary, float | None]] = []
        for job_id, p in list(self.pending.items()):
            if len(out) >= self.max_per_round:
                break
            if p.next_ts > now:
                continue
            try:
                job = store.get_job(job_id)
                if job is None or job.start_ts is None:   # it never ran (cancelled while pending)
                    del self.pending[job_id]
                    self.peaks.pop(job_id, None)
                    continue
                if job.state is None and now - p.ended_ts < self.wait_s:
                    p.next_ts = now + 1.0   # the final-state poller is about to tell
                    continue
                out.append((job_id, self.summarise(store, job_id, job), job.end_ts))
            except Exception as e:  # a locked store: try again later
                self._failed(job_id, now, e)
        return out

    def summarise(self, store: _Store, job_id: str, job: Any) -> summary.Summary:
        """The summary of ended job ``job_id`` (its store row ``job``)."""
        peak = self.peaks.get(job_id)
        if peak is None:
            latest = store.latest_predictions([job_id]).get(job_id)
            if latest is not None:
                peak = Peak(latest.risk, latest.ts, latest.level, advice_of(latest.factors))
        eff = mem = used = None
        if job.end_ts is not None:
            samples = store.job_samples([job_id], since_ts=job.end_ts - SAMPLE_WINDOW_S)
            eff, mem, used = summary.usage(job, samples, JOB_SAMPLE_FIELDS)
        return summary.Summary(
            state=job.state,
            max_risk=None if peak is None else peak.risk, max_risk_ts=None if peak is None else peak.ts,
            level=None if peak is None else peak.level,
            crossed=() if peak is None else tuple(sorted(peak.crossed.items(), key=lambda c: c[1])),
            eff_cpu=eff, mem_peak=mem, time_used=used, advice=None if peak is None else peak.advice)

    def _write(self, slurm: _Slurm, job_id: str, s: summary.Summary, listed: Any) -> None:
        """Merge ``s`` into the job's AdminComment in slurmctld, else in the accounting."""
        if listed is not None:
            text = _merged(listed.admin_comment, s, job_id)
            if text == listed.admin_comment:
                return
            try:
                slurm.set_admin_comment(job_id, text)
                return
            except (JobFinished, JobNotFound) as e:
                log.debug("job %s: slurmctld keeps no AdminComment (%s); writing the accounting", job_id, e)
        existing = slurm.accounting_admin_comment(job_id)
        text = _merged(existing, s, job_id)
        if text != existing:
            slurm.set_accounting_admin_comment(job_id, text)

    def _failed(self, job_id: str, now: float, error: Exception) -> None:
        p = self.pending.get(job_id)
        if p is None:
            return
        p.attempts += 1
        if p.attempts < self.max_attempts:
            p.next_ts = now + self.retry_s * p.attempts
            log.debug("job %s: summary not written (attempt %d): %s", job_id, p.attempts, error)
            return
        log.warning("job %s: summary not written after %d attempts, dropped: %s", job_id, p.attempts, error)
        self.failed += 1
        del self.pending[job_id]
        self.peaks.pop(job_id, None)


def _outcome(s: summary.Summary, end_ts: float | None) -> tuple[bool, float | None] | None:
    """(failed, seconds from the first high-or-critical prediction to the end, None when
    there was none) of a summarised job; None when its final state is not known."""
    label = slurmstates.label_for(s.state) if s.state else None
    if label is None:
        return None
    alerts = [ts for level, ts in s.crossed if level in ("high", "critical")]
    if not alerts or end_ts is None:
        return bool(label), None
    return bool(label), end_ts - min(alerts)


def _merged(existing: str, s: summary.Summary, job_id: str) -> str:
    text = summary.merge(existing, s)
    if text is None:
        raise ValueError(f"job {job_id}: its AdminComment leaves no room for the summary")
    return text


__all__ = ["Peak", "SummaryWriter", "advice_of"]
