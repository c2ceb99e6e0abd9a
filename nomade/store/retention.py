"""What retention keeps: the policy, the counts of a prune, and the pure decision of
which rows thinning deletes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DAY_S = 86_400.0


@dataclass(frozen=True)
class RetentionPolicy:
    """What ``Store.prune`` keeps (see ``[storage]`` in ``nomade.config``), in seconds.

    Ended jobs younger than ``full_samples_s`` keep every sample; older ones keep at most
    ``thin_samples_to`` per (job, node), the first row at or after each point of an even
    time grid from the first sample to the job's end, plus the first and the last;
    after ``sample_retention_s`` their samples go (the job row stays). Node samples and
    predictions older than their retention go. ``ValueError`` for an inconsistent policy.
    """

    full_samples_s: float = 14 * DAY_S
    thin_samples_to: int = 240
    sample_retention_s: float = 365 * DAY_S
    node_sample_retention_s: float = 30 * DAY_S
    prediction_retention_s: float = 180 * DAY_S

    def __post_init__(self) -> None:
        if self.thin_samples_to < 2:
            raise ValueError(f"thin_samples_to = {self.thin_samples_to}: expected >= 2 "
                             "(the first and the last sample)")
        if not 0 < self.full_samples_s <= self.sample_retention_s:
            raise ValueError("expected 0 < full_samples_s <= sample_retention_s")
        if min(self.node_sample_retention_s, self.prediction_retention_s) <= 0:
            raise ValueError("retention periods must be > 0")

    @classmethod
    def from_config(cls, storage: Any) -> RetentionPolicy:
        """The policy of a ``[storage]`` table (``nomade.config.StorageConfig``)."""
        return cls(full_samples_s=storage.full_samples_days * DAY_S,
                   thin_samples_to=storage.thin_samples_to,
                   sample_retention_s=storage.sample_retention_days * DAY_S,
                   node_sample_retention_s=storage.node_sample_retention_days * DAY_S,
                   prediction_retention_s=storage.prediction_retention_days * DAY_S)


@dataclass
class PruneCounts:
    """Rows one ``Store.prune`` removed (or, dry run, would remove) per step; ``done`` is
    False when ``max_rows`` stopped it with work left."""

    job_samples_thinned: int = 0
    job_samples_dropped: int = 0
    node_samples: int = 0
    predictions: int = 0
    transactions: int = 0
    done: bool = True

    def total(self) -> int:
        """Rows removed in all."""
        return (self.job_samples_thinned + self.job_samples_dropped + self.node_samples
                + self.predictions)


#: Thinning state of one (job, node): [first_ts, prev_ts | None, pend_rowid, pend_ts].
_ThinState = list[Any]


def _grid_hit(first: float, end: float, keep: int, prev: float, ts: float) -> bool:
    """Whether a grid point first + k·step (k = 0 … keep − 2, step = (end − first) /
    (keep − 1)) lies in (prev, ts]: each point keeps the first row at or after it."""
    step = (end - first) / (keep - 1)
    if step <= 0 or ts < first:
        return False
    k = min(keep - 2, math.floor((ts - first) / step))
    return first + k * step > prev


def _thin_rows(rows: Iterable[tuple[int, str, str | None, float]], ends: Mapping[str, float],
               state: dict[tuple[str, str], _ThinState], keep: int
               ) -> tuple[list[int], set[tuple[str, str]]]:
    """Decide a chunk of (rowid, job_id, node, ts) rows in rowid order: the rowids to
    delete and the (job, node) keys whose ``state`` changed. Only jobs in ``ends`` (job
    id -> end ts) are thinned. A row is decided when the next row of its (job, node)
    arrives, so the newest one (the last, for an ended job) is always kept; the first
    is kept; any other row is kept only if a grid point lies between it and the row
    before. At most ``keep`` rows of a (job, node) remain, and running it again over
    what remains deletes nothing."""
    deleted: list[int] = []
    touched: set[tuple[str, str]] = set()
    for rowid, job_id, node, ts in rows:
        end = ends.get(job_id)
        if end is None:
            continue
        key = (job_id, node or "")
        touched.add(key)
        st = state.get(key)
        if st is None:
            state[key] = [ts, None, rowid, ts]
            continue
        first, prev, pend_rowid, pend_ts = st
        if prev is not None and not _grid_hit(first, end, keep, prev, pend_ts):
            deleted.append(pend_rowid)
        st[1], st[2], st[3] = pend_ts, rowid, ts
    return deleted, touched

