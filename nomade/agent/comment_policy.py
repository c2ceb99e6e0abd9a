"""When to write NØMADE's segment of a job's Comment (a pure policy) and how to apply it.

:class:`CommentPolicy` keeps, per running job, the level it last wrote, and turns each
scored prediction into a decision (a :class:`CommentUpdate`) or nothing:
``decide(predictions, running)`` for one tick's ``prediction`` bodies (what
``nomade.agent.daemon`` calls), ``decide_job`` for one job:

- ``[ml.alerts] alert_on_prediction`` off: never writes.
- risk >= ``high_risk_threshold`` in ``confirm_predictions`` consecutive predictions
  (default 2): writes the advice segment when the level differs from the one last
  written (so a rewrite happens only on a level change, never each tick). One tick's
  spike is not confirmed: a job's first tick, before any sample, is scored from its
  request and history alone, and a model that never saw such a history may say 1.0.
- risk below the threshold after a write: writes a "risk fell below the alert threshold" mark, once; a
  later rise above the threshold writes advice again.
- jobs no longer running are forgotten (``running`` of ``decide``, or ``retain``).

After an agent restart :meth:`CommentPolicy.restore` reads the level back from a job's
current Comment, so a job at the same level is not rewritten.

:func:`apply` is the I/O edge: it reads the Comment, merges the segment with
``nomade.agent.comment_segment.merge`` (the user's text, which they may have changed since, is kept)
and writes it only if it changed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nomade.agent import advice, comment_segment
from nomade.config import AlertsConfig
from nomade.wire import LEVELS

log = logging.getLogger(__name__)

#: The reason of an update: advice written at a (new) level, or the fall-back mark.
ALERT, FELL = "alert", "fell"
_FELL_STATE = "fell"
_LEVEL_IN_SEGMENT = re.compile(r"risk (" + re.escape(advice.FELL_PREFIX[len("risk "):]) + r")?("
                               + "|".join(LEVELS) + r") ")


@dataclass(frozen=True)
class CommentUpdate:
    """Set job ``job_id``'s NØMADE segment to ``segment`` (``reason``: ALERT or FELL)."""

    job_id: str
    segment: str
    level: str
    reason: str


class SlurmComments(Protocol):
    """What :func:`apply` needs of ``nomade.slurm.Slurm``."""

    def get_comment(self, job_id: str) -> str: ...
    def set_comment(self, job_id: str, text: str) -> None: ...


class CommentPolicy:
    """Per-job memory of the last written level; decisions without any I/O."""

    def __init__(self, alerts: AlertsConfig) -> None:
        self.threshold = alerts.high_risk_threshold
        self.enabled = alerts.alert_on_prediction
        self.confirm = alerts.confirm_predictions
        self._written: dict[str, str] = {}   # job id -> level written, or _FELL_STATE
        self._above: dict[str, int] = {}     # job id -> consecutive predictions >= threshold

    def decide(self, predictions: Iterable[Mapping[str, Any]],
               running: Iterable[str] | None = None) -> list[CommentUpdate]:
        """The updates one scoring tick calls for. ``predictions`` are ``prediction``
        bodies (job_id, risk, level, ts, factors as ``nomade.agent.advice.wire_factors`` makes
        them); with ``running`` (the ids of the running jobs), ended jobs are forgotten."""
        out = []
        for p in predictions:
            factors = [advice.Factor.from_wire(f) for f in p.get("factors") or ()]
            update = self.decide_job(str(p["job_id"]), float(p["risk"]), str(p["level"]),
                                     float(p["ts"]), factors)
            if update is not None:
                out.append(update)
        if running is not None:
            self.retain(running)
        return out

    def decide_job(self, job_id: str, risk: float, level: str, ts: float,
               factors: Iterable[advice.Factor | Mapping[str, Any]] = (),
               values: Mapping[str, float] | None = None) -> CommentUpdate | None:
        """The update that job ``job_id``'s new prediction calls for, or None.

        ``factors`` and ``values`` are the scorer's top factors and the job's known raw
        feature values (see ``nomade.agent.advice.segment_text``). Records the decision as
        written: call :func:`apply` with it (a failed write is not retried until the
        level changes again).
        """
        if not self.enabled:
            return None
        last = self._written.get(job_id)
        if risk >= self.threshold:
            above = self._above[job_id] = self._above.get(job_id, 0) + 1
            if last == level or above < self.confirm:
                return None
            self._written[job_id] = level
            return CommentUpdate(job_id, advice.segment_text(risk, level, factors, ts, values),
                                 level, ALERT)
        self._above.pop(job_id, None)
        if last is None or last == _FELL_STATE:
            return None
        self._written[job_id] = _FELL_STATE
        return CommentUpdate(job_id, advice.fell_text(level, risk, ts, last), level, FELL)

    def restore(self, job_id: str, existing_comment: str) -> None:
        """Take job ``job_id``'s state from its Comment as it stands (after a restart):
        the level of NØMADE's segment, or the fall-back mark; nothing if there is none."""
        segment = comment_segment.extract(existing_comment)[1]
        found = _LEVEL_IN_SEGMENT.match(segment or "")
        if found is not None:
            self._written[job_id] = _FELL_STATE if found.group(1) else found.group(2)

    def retain(self, running: Iterable[str]) -> int:
        """Forget every job not in ``running`` (they ended); returns how many."""
        keep = set(running)
        gone = [j for j in self._written if j not in keep]
        for job_id in gone:
            del self._written[job_id]
        for job_id in [j for j in self._above if j not in keep]:
            del self._above[job_id]
        return len(gone)

    def forget(self, job_id: str) -> None:
        """Forget one job (it ended)."""
        self._written.pop(job_id, None)
        self._above.pop(job_id, None)

    def written(self, job_id: str) -> str | None:
        """The level last written for the job, ``"fell"`` after the mark, None if nothing."""
        return self._written.get(job_id)


def apply(slurm: SlurmComments, update: CommentUpdate) -> bool:
    """Write ``update`` into the job's Comment, keeping the user's text. Returns True if
    the Comment was changed, False if it already held exactly that. Slurm errors
    (``SlurmError``: the job ended, is unknown, Slurm is down) propagate to the caller."""
    existing = slurm.get_comment(update.job_id)
    merged = comment_segment.merge(existing, update.segment)
    if merged == existing:
        return False
    slurm.set_comment(update.job_id, merged)
    log.debug("job %s: comment segment set (%s, %s)", update.job_id, update.reason, update.level)
    return True


__all__ = ["ALERT", "FELL", "CommentPolicy", "CommentUpdate", "SlurmComments", "apply"]
