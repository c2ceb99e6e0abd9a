"""Mail a job's user when its risk reaches ``[mail] min_level`` (opt-in per site and per job).

:class:`MailPolicy` is the pure decision: from each tick's predictions, which jobs
reached a level at or above ``min_level`` in ``confirm`` consecutive predictions (the
Comment's rule: one tick's spike is no reason to mail) at a level above every level
mailed for that job before: one message per level reached on the way up, never two for
the same level, none for a fall (a job that falls back and rises again gets no second one).

:class:`Mailer` is the I/O edge the agent calls each tick: for each alert it asks
Slurm (``scontrol show job``, once per job, remembered) whether the job wants mail:
its MailType must include one of ``[mail] job_mail_types`` (default ALL and FAIL: a
warning that a job may fail is what FAIL asks for; a job with no ``--mail-type`` gets
nothing; scontrol shows ALL as its parts, so BEGIN, END, FAIL and REQUEUE together count as
ALL). The address is its MailUser, else its user's name (as Slurm does). The message
goes through the site's MTA with ``smtplib``, or through ``[mail] mail_prog`` (Slurm's
MailProg, as ``PROG -s SUBJECT ADDRESS``, the text on stdin, an argument list, never a
shell). At most ``max_per_tick`` messages a tick, each within ``timeout_s``; after a
failed send the tick sends no more (the rest wait for the next tick) and a message that
failed ``MAX_ATTEMPTS`` times is counted and dropped.
"""

from __future__ import annotations

import logging
import re
import smtplib
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

from nomade.agent.summaries import advice_of
from nomade.agent.summary import clean_advice
from nomade.config import MailConfig
from nomade.wire import LEVELS

log = logging.getLogger(__name__)

#: Sends of one message before it is dropped.
MAX_ATTEMPTS = 3
#: Jobs whose mail settings are remembered at once (running jobs that reached the level).
MAX_JOBS = 100_000
_ADDRESS = re.compile(r"[^\s@,;<>()\"']+(@[A-Za-z0-9.-]+)?")
_USER = re.compile(r"^([^(]+)\(")
_ALL_PARTS = frozenset({"BEGIN", "END", "FAIL", "REQUEUE"})


@dataclass(frozen=True)
class Alert:
    """Job ``job_id`` reached ``level`` (``risk`` at ``ts``), to be mailed once."""

    job_id: str
    level: str
    risk: float
    ts: float
    advice: str | None
    user: str | None
    partition: str | None


class MailPolicy:
    """Per running job: the levels mailed and the count of consecutive predictions at or
    above ``min_level``; decisions without I/O (module doc)."""

    def __init__(self, min_level: str, confirm: int) -> None:
        self.min_rank = LEVELS.index(min_level)
        self.confirm = confirm
        self._mailed: dict[str, int] = {}   # job id -> index in LEVELS of the highest level done
        self._above: dict[str, int] = {}

    def decide(self, predictions: Iterable[Mapping[str, Any]],
               running: Iterable[str] | None = None) -> list[Alert]:
        """The alerts one tick's ``prediction`` bodies call for (not yet recorded: call
        ``sent`` for each one that is done); with ``running``, ended jobs are forgotten."""
        out = []
        for p in predictions:
            job_id, level = str(p["job_id"]), str(p["level"])
            if LEVELS.index(level) < self.min_rank:
                self._above.pop(job_id, None)
                continue
            above = self._above[job_id] = self._above.get(job_id, 0) + 1
            if above >= self.confirm and LEVELS.index(level) > self._mailed.get(job_id, -1):
                out.append(Alert(job_id, level, float(p["risk"]), float(p["ts"]),
                                 advice_of(p.get("factors")), p.get("user"), p.get("partition")))
        if running is not None:
            self.retain(running)
        return out

    def sent(self, job_id: str, level: str) -> None:
        """Record that ``level`` of ``job_id`` is done (mailed, or never to be)."""
        self._mailed[job_id] = max(self._mailed.get(job_id, -1), LEVELS.index(level))

    def mailed(self, job_id: str) -> str | None:
        """The highest level done for the job (None: none)."""
        rank = self._mailed.get(job_id)
        return None if rank is None else LEVELS[rank]

    def retain(self, running: Iterable[str]) -> None:
        """Forget every job not in ``running`` (they ended)."""
        keep = set(running)
        for table in (self._mailed, self._above):
            for job_id in [j for j in table if j not in keep]:
                del table[job_id]


def recipient(record: Mapping[str, str], wanted: Iterable[str]) -> str | None:
    """The address to mail about a job from its ``scontrol show job`` fields, or None
    when its MailType has none of ``wanted`` (or no usable address)."""
    types = {t.strip().upper() for t in record.get("MailType", "").split(",")}
    if _ALL_PARTS <= types:   # scontrol shows --mail-type=ALL as its parts
        types.add("ALL")
    if not types & {w.upper() for w in wanted}:
        return None
    address = record.get("MailUser", "")
    if address in ("", "(null)"):
        user = _USER.match(record.get("UserId", ""))
        address = user.group(1) if user else ""
    return address if _ADDRESS.fullmatch(address) and len(address) <= 254 else None


def message(alert: Alert, to: str, sender: str, now: float | None = None) -> EmailMessage:
    """The mail about ``alert`` for ``to``."""
    msg = EmailMessage()
    msg["Subject"] = f"NOMADE: job {alert.job_id} at {alert.level} risk of failing ({alert.risk:.2f})"
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(alert.ts))
    who = ", ".join(x for x in (f"user {alert.user}" if alert.user else "",
                                f"partition {alert.partition}" if alert.partition else "") if x)
    lines = [f"Job {alert.job_id}{f' ({who})' if who else ''} is at {alert.level} risk of failing: "
             f"{alert.risk:.2f} at {when}.", ""]
    if alert.advice:
        lines += [f"Advice: {clean_advice(alert.advice)}", ""]
    lines += ["NOMADE predicts, while a job runs, how likely it is to fail. You get this mail because",
              "the job asked Slurm for mail (--mail-type); one message per risk level, none again",
              f"for this one. The job's Comment holds the latest advice: squeue -j {alert.job_id} -o %k"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class _Slurm(Protocol):
    def show_job(self, job_id: str) -> dict[str, str]: ...


class Mailer:
    """The policy, the jobs' mail settings and the transport (module doc); ``sent`` and
    ``failed`` count messages sent and dropped."""

    def __init__(self, cfg: MailConfig, confirm: int) -> None:
        self.cfg = cfg
        self.policy = MailPolicy(cfg.min_level, confirm)
        self._to: dict[str, str | None] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self.sent = 0
        self.failed = 0

    def tick(self, predictions: Iterable[Mapping[str, Any]], running: Iterable[str],
             slurm: _Slurm) -> int:
        """Mail what this tick's predictions call for; how many were sent. A Slurm or
        mail failure is logged and counted, never raised."""
        running = set(running)
        alerts = self.policy.decide(predictions, running)
        for job_id in [j for j in self._to if j not in running]:
            del self._to[job_id]
        for key in [k for k in self._attempts if k[0] not in running]:
            del self._attempts[key]
        sent = 0
        for alert in alerts[:self.cfg.max_per_tick]:
            try:
                to = self._address(alert.job_id, slurm)
            except Exception as e:  # Slurm is down, or the job just ended: try again next tick
                self._retry_or_drop(alert, "(unknown)", e)
                continue
            if to is None:
                self.policy.sent(alert.job_id, alert.level)   # the job asked for no mail
                continue
            try:
                self._send(message(alert, to, self.cfg.from_address, time.time()))
            except Exception as e:  # the MTA is down or slow: the others wait for the next tick
                self._retry_or_drop(alert, to, e)
                break
            self.policy.sent(alert.job_id, alert.level)
            sent += 1
            log.info("job %s: mailed %s about its %s risk", alert.job_id, to, alert.level)
        self.sent += sent
        return sent

    def _address(self, job_id: str, slurm: _Slurm) -> str | None:
        """Where to mail about the job (None: it asked for no mail); asks Slurm once."""
        if job_id in self._to:
            return self._to[job_id]
        to = recipient(slurm.show_job(job_id), self.cfg.job_mail_types)
        if len(self._to) < MAX_JOBS:
            self._to[job_id] = to
        return to

    def _retry_or_drop(self, alert: Alert, to: str, error: Exception) -> None:
        key = (alert.job_id, alert.level)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        if self._attempts[key] < MAX_ATTEMPTS:
            log.warning("job %s: mail to %s failed (attempt %d), retried next tick: %s",
                        alert.job_id, to, self._attempts[key], error)
            return
        log.error("job %s: mail to %s failed %d times, dropped: %s", alert.job_id, to, MAX_ATTEMPTS, error)
        self.failed += 1
        self.policy.sent(alert.job_id, alert.level)

    def _send(self, msg: EmailMessage) -> None:
        cfg = self.cfg
        if cfg.mail_prog:
            body = msg.get_content()
            subprocess.run([cfg.mail_prog, "-s", str(msg["Subject"]), str(msg["To"])], input=body,
                           text=True, capture_output=True, timeout=cfg.timeout_s, check=True)
            return
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_s) as smtp:
            smtp.send_message(msg)


__all__ = ["MAX_ATTEMPTS", "Alert", "MailPolicy", "Mailer", "message", "recipient"]
