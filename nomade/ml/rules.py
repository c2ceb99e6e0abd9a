"""Runtime rules an admin could write without any model: the floor the models must beat.

* **memory**: memory now (or its peak) at 90 % of the limit or more;
* **idle**: the CPU idle now (recent efficiency below ``features.IDLE_EFF``), idle for at
  least half of the run so far (efficiency since the start at most 0.5), and little
  time left (at least 75 % of the time limit gone);
* **rules**: either.

A rule's score is 1 where it fires and 0 where it does not (0 where its inputs are not
known yet), from the same raw as-of features the models read. :class:`RuleScorer` gives
a rule the interface of ``nomade.ml.inference.Scorer`` that ``nomade.ml.replay`` needs,
so a rule is replayed tick by tick exactly as the models are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nomade import features

MEMORY_FRAC = 0.9
"""Share of the memory limit from which the memory rule fires."""
IDLE_SO_FAR = 0.5
"""Largest CPU efficiency since the start (idle at least half the run) for the idle rule."""
LATE_FRAC = 0.75
"""Least share of the time limit gone for the idle rule ("little time left")."""
RULES = ("rule_memory", "rule_idle", "rules")

_F = {name: k for k, name in enumerate(features.FEATURES)}


def known(X: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """float[n]: raw feature ``name`` of each example, NaN where it is not known."""
    return np.where(mask[:, _F[name]], X[:, _F[name]], np.nan)


def fire(name: str, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64[n]: 1 where rule ``name`` (of ``RULES``) fires for raw features ``X``, else 0."""
    X, mask = np.asarray(X, np.float64), np.asarray(mask, bool)
    with np.errstate(invalid="ignore"):
        memory = (np.fmax(known(X, mask, "mem_frac"), known(X, mask, "mem_peak_frac")) >= MEMORY_FRAC)
        recent = known(X, mask, "cpu_eff") + known(X, mask, "cpu_eff_change")
        idle = ((recent < features.IDLE_EFF) & (known(X, mask, "cpu_eff") <= IDLE_SO_FAR)
                & (known(X, mask, "elapsed_frac") >= LATE_FRAC))
    out = {"rule_memory": memory, "rule_idle": idle, "rules": memory | idle}
    if name not in out:
        raise ValueError(f"unknown rule {name!r}; expected one of {RULES}")
    return out[name].astype(np.float64)


@dataclass
class _Risk:
    risk: np.ndarray


class RuleScorer:
    """A rule with the scorer interface the replay uses (no graph, no models)."""

    def __init__(self, name: str) -> None:
        fire(name, np.zeros((0, features.N_FEATURES)), np.zeros((0, features.N_FEATURES), bool))
        self.name = name
        self.models: dict[str, Any] = {}

    def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool = False, neighbours: Any = None) -> _Risk:
        """The rule's 0/1 score of each job as its risk."""
        return _Risk(fire(self.name, X, mask))

    def neighbours(self, X: np.ndarray, mask: np.ndarray, start_ts: np.ndarray | None) -> Any:
        raise ValueError("a rule has no graph neighbours")
