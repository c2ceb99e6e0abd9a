"""The runtime rules the models are judged beside (``nomade.ml.rules``)."""

from __future__ import annotations

import numpy as np
import pytest

from nomade.features import FEATURES, N_FEATURES
from nomade.ml import rules


def _row(**values: float) -> tuple[np.ndarray, np.ndarray]:
    X, mask = np.zeros((1, N_FEATURES)), np.zeros((1, N_FEATURES), bool)
    for name, v in values.items():
        X[0, FEATURES.index(name)], mask[0, FEATURES.index(name)] = v, True
    return X, mask


@pytest.mark.parametrize(("values", "memory", "idle"), [
    ({"mem_frac": 0.91, "mem_peak_frac": 0.91}, 1, 0),
    ({"mem_frac": 0.2, "mem_peak_frac": 0.95}, 1, 0),          # the peak reached it
    ({"mem_frac": 0.89, "mem_peak_frac": 0.89}, 0, 0),
    ({"cpu_eff": 0.3, "cpu_eff_change": -0.29, "elapsed_frac": 0.8}, 0, 1),
    ({"cpu_eff": 0.3, "cpu_eff_change": -0.29, "elapsed_frac": 0.5}, 0, 0),   # time left
    ({"cpu_eff": 0.7, "cpu_eff_change": -0.69, "elapsed_frac": 0.9}, 0, 0),   # busy most of the run
    ({"cpu_eff": 0.3, "cpu_eff_change": 0.2, "elapsed_frac": 0.9}, 0, 0),     # busy now
    ({}, 0, 0),                                                               # nothing known yet
])
def test_rules_fire_on_their_evidence_only(values: dict, memory: int, idle: int) -> None:
    X, mask = _row(**values)
    assert rules.fire("rule_memory", X, mask)[0] == memory
    assert rules.fire("rule_idle", X, mask)[0] == idle
    assert rules.fire("rules", X, mask)[0] == max(memory, idle)
    assert rules.RuleScorer("rules").score(X, mask).risk[0] == max(memory, idle)
    with pytest.raises(ValueError, match="unknown rule"):
        rules.fire("rule_magic", X, mask)
