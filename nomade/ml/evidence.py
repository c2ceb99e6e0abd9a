"""Calibrated runtime evidence: what a job's own measurements say, in an admin's terms,
with the failure rate each such condition had among the training jobs.

A model learns what usually happens to jobs like this one; the evidence says what is
about to happen to this one. Conditions, from the raw as-of features only:

* ``memory_<level>_<a>_<b>min``: the job's memory (what the kernel cannot reclaim) is
  at ``level`` or more of its limit (``MEMORY_LEVELS``, from ``MIN_MEM_FRAC``) and, at
  its growth over the last samples, reaches the limit in ``a`` to ``b`` minutes, before
  its time limit (or is at the limit already): the nearer the limit in both senses,
  the likelier the kill, and one grid learns how much;
* ``disk_<a>_<b>min``: the fullest filesystem the job writes to is full in ``a`` to
  ``b`` minutes at its fill rate (``log_fs_full_h``), before the time limit: a disk
  that fills is ENOSPC, one nearly full but not filling is not news;
* ``idle_late``: the runtime rule ``rules.fire("rule_idle")`` (CPU idle now and for
  half the run, three quarters of the time limit gone).

:meth:`Evidence.fit` gives each condition its weighted failure rate over the training
jobs it held for (each job once), shrunk toward the overall rate by ``PRIOR_JOBS``
pseudo jobs; the rates of each grid (memory, disk) are then made monotone (a higher
level or a nearer limit never reads safer). A condition that holds for fewer than
``MIN_JOBS`` training jobs keeps no rate. The evidence risk of an example is the highest
rate of the conditions that hold (NaN where none does), and the live risk is the higher
of the models' ensemble and an evidence of at least ``MIN_RAISE`` (:func:`raise_risk`):
evidence can raise a risk to an alert, never lower it, so a site whose models learnt a
failure better keeps their answer; a weaker rate would only blur the models' ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from nomade import features
from nomade.ml import rules

EVIDENCE_KEY = "evidence"
"""Key of the rates in the models' metadata and in training reports."""
MIN_MEM_FRAC = 0.5
"""Share of the memory limit from which a projection counts (below it, a job's start-up
growth projects to the limit within minutes and says nothing)."""
MEMORY_LEVELS = (MIN_MEM_FRAC, 0.8, 0.9)
"""Lower edges (share of the limit held now) of the memory conditions' levels."""
MEMORY_BINS_MIN = (0.0, 1.0, 3.0, 10.0)
"""Edges (minutes to the memory limit) of the memory conditions."""
PRIOR_JOBS = 5.0
"""Pseudo jobs at the overall failure rate added to each condition's weight."""
MIN_JOBS = 5
"""Training jobs a condition must hold for to get a rate."""
MIN_RAISE = 0.6
"""Least rate (the "high" level) at which a condition raises the models' risk: below it,
the models' ranking of the job knows more than one condition's rate."""


GRIDS = ("memory", "disk")
"""The evidence grids: memory (levels x minutes to ``--mem``) and disk (minutes until
the filesystem written to is full: no levels, since how full a disk that does not fill
is says nothing)."""


def minutes_to_limit(X: np.ndarray, mask: np.ndarray, grid: str) -> np.ndarray:
    """float64[n]: minutes until the ``grid``'s limit (``--mem``; a full disk) at the
    current growth, 0 at it, inf when not growing, not known, (memory) below
    ``MIN_MEM_FRAC``, or when the time limit comes first."""
    X, mask = np.asarray(X, np.float64), np.asarray(mask, bool)
    left_min = (1.0 - rules.known(X, mask, "elapsed_frac")) * np.expm1(rules.known(X, mask, "log_time_limit_min"))
    with np.errstate(divide="ignore", invalid="ignore"):
        if grid == "memory":
            mem, growth_h = rules.known(X, mask, "mem_frac"), rules.known(X, mask, "mem_growth_frac_h")
            minutes = np.where(growth_h > 0, (1.0 - mem) / growth_h * 60.0, np.inf)
            minutes = np.where(mem >= 1.0, 0.0, minutes)
            near = mem >= MIN_MEM_FRAC
        else:
            hours = np.expm1(rules.known(X, mask, "log_fs_full_h"))
            minutes = np.where(hours < features.FS_HORIZON_H, hours * 60.0, np.inf)
            near = np.isfinite(minutes)
        soon = near & ~(minutes > left_min)   # an unknown time left does not veto
    return np.where(soon, np.maximum(minutes, 0.0), np.inf)


def _grid_names(grid: str) -> list[list[str]]:
    """Names of a grid's conditions, ``[level][minutes bin]``, lowest level and nearest
    limit first (the disk grid has one row)."""
    bins = [f"{a:g}_{b:g}min" for a, b in pairwise(MEMORY_BINS_MIN)]
    if grid == "disk":
        return [[f"disk_{b}" for b in bins]]
    return [[f"{grid}_{lv:g}_{b}" for b in bins] for lv in MEMORY_LEVELS]


def conditions(X: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Name -> bool[n]: which conditions hold for each example."""
    out = {}
    mem = rules.known(np.asarray(X, np.float64), np.asarray(mask, bool), "mem_frac")
    tops = (*MEMORY_LEVELS[1:], np.inf)
    for grid in GRIDS:
        minutes = minutes_to_limit(X, mask, grid)
        levels = [np.ones(len(minutes), bool)] if grid == "disk" else \
            [(mem >= lo) & (mem < hi) for lo, hi in zip(MEMORY_LEVELS, tops, strict=True)]
        for names, at in zip(_grid_names(grid), levels, strict=True):
            for name, (a, b) in zip(names, pairwise(MEMORY_BINS_MIN), strict=True):
                out[name] = at & (minutes >= a) & (minutes < b)
    out["idle_late"] = rules.fire("rule_idle", X, mask) > 0
    return out


@dataclass
class Evidence:
    """The conditions' failure rates learnt from training examples (:meth:`fit`)."""

    rates: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)
    """Training jobs each condition held for."""

    def fit(self, X: np.ndarray, mask: np.ndarray, y: np.ndarray, job: np.ndarray) -> Evidence:
        """Rates from training examples ``X``/``mask`` with labels ``y`` and job rows
        ``job``; returns self. A condition's rate is the share of failures among the
        jobs it held for at any of their examples, each job counted once: an alert is
        raised once a job, and a job that sits near its limit for an hour must not
        outweigh ten that were killed a minute after reaching it."""
        y, job = np.asarray(y, np.float64), np.asarray(job)
        first = np.unique(job, return_index=True)[1]
        prior = float(y[first].mean()) if len(first) else 0.0
        self.rates, self.support = {}, {}
        for name, on in conditions(X, mask).items():
            jobs, at = np.unique(job[on], return_index=True)
            self.support[name] = len(jobs)
            if len(jobs) >= MIN_JOBS:
                failed = float(y[on][at].sum())
                self.rates[name] = (failed + prior * PRIOR_JOBS) / (len(jobs) + PRIOR_JOBS)
        for grid in GRIDS:
            self._monotone(_grid_names(grid))
        return self

    def _monotone(self, grid: list[list[str]]) -> None:
        """Each rate of a grid at least those of the lower level and of the farther limit."""
        floor = [[0.0] * len(row) for row in grid]
        for lv, row in enumerate(grid):
            for b in reversed(range(len(row))):        # farthest limit first
                below = floor[lv - 1][b] if lv else 0.0
                farther = floor[lv][b + 1] if b + 1 < len(row) else 0.0
                floor[lv][b] = max(below, farther, self.rates.get(row[b], 0.0))
                if row[b] in self.rates:
                    self.rates[row[b]] = floor[lv][b]

    def risk(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """float64[n]: the highest rate of the conditions that hold, NaN where none does."""
        out = np.full(len(X), np.nan)
        for name, on in conditions(X, mask).items():
            if name in self.rates:
                out = np.where(on, np.fmax(out, self.rates[name]), out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (stored in the models' metadata)."""
        return {"rates": dict(self.rates), "support": dict(self.support)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Evidence:
        """The inverse of :meth:`to_dict`; empty (no rates) for None or models without one."""
        if not d:
            return cls()
        return cls({str(k): float(v) for k, v in d.get("rates", {}).items()},
                   {str(k): int(v) for k, v in d.get("support", {}).items()})


def raise_risk(risk: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """The live risk: the models' ``risk``, raised to the ``evidence`` where that is higher
    and at least ``MIN_RAISE``."""
    evidence = np.where(np.asarray(evidence) >= MIN_RAISE, evidence, np.nan)
    return np.fmax(np.asarray(risk, np.float64), evidence)
