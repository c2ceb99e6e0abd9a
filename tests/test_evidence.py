"""Calibrated runtime evidence (nomade.ml.evidence): the projection, the rates, the raise."""

from __future__ import annotations

import numpy as np
import pytest

from nomade import features
from nomade.ml import evidence

F = {name: k for k, name in enumerate(features.FEATURES)}


def _x(mem: float, growth_h: float, elapsed: float = 0.2, limit_min: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    X = np.zeros((1, features.N_FEATURES))
    X[0, F["mem_frac"]], X[0, F["mem_growth_frac_h"]] = mem, growth_h
    X[0, F["elapsed_frac"]], X[0, F["log_time_limit_min"]] = elapsed, np.log1p(limit_min)
    X[0, F["cpu_eff"]] = 0.9
    mask = np.ones_like(X, bool)
    mask[0, [F["log_fs_full_h"], F["fs_fill_frac_h"]]] = False    # writes to no disk
    return X, mask


@pytest.mark.parametrize(("mem", "growth_h", "elapsed", "expected"), [
    (0.8, 0.6, 0.2, 20.0),       # 20 % of the limit left at 60 % an hour
    (1.02, 0.0, 0.2, 0.0),       # at the limit already
    (0.4, 60.0, 0.2, np.inf),    # below MIN_MEM_FRAC: start-up growth says nothing
    (0.8, -0.5, 0.2, np.inf),    # shrinking
    (0.8, 0.6, 0.9, np.inf),     # 6 min of the time limit left: the time limit comes first
])
def test_minutes_to_the_memory_limit(mem: float, growth_h: float, elapsed: float, expected: float) -> None:
    X, mask = _x(mem, growth_h, elapsed)
    assert evidence.minutes_to_limit(X, mask, "memory")[0] == pytest.approx(expected)


def test_unknown_memory_is_no_evidence() -> None:
    X, mask = _x(0.95, 10.0)
    mask[0, F["mem_frac"]] = False
    assert evidence.minutes_to_limit(X, mask, "memory")[0] == np.inf


def _examples(rng: np.random.Generator, n_jobs: int, mem: float, growth_h: float, fail: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, mask = (np.repeat(a, n_jobs, axis=0) for a in _x(mem, growth_h))
    return X, mask, (rng.random(n_jobs) < fail).astype(float)


def test_rates_are_learnt_shrunk_monotone_and_need_support() -> None:
    rng = np.random.default_rng(0)
    parts = [_examples(rng, 200, 0.95, 30.0, 0.9),     # >= 90 %, 10 s to the limit: mostly fail
             _examples(rng, 100, 0.7, 9.0, 0.95),      # 70 %, 2 min to the limit: fail even more often
             _examples(rng, 60, 0.6, 40.0, 0.3),       # 60 %, 36 s: fails less
             _examples(rng, 3, 0.6, 3.0, 1.0),          # 8 min: only 3 jobs, no rate
             _examples(rng, 400, 0.2, 0.0, 0.1)]        # ordinary jobs
    X = np.concatenate([p[0] for p in parts])
    mask = np.concatenate([p[1] for p in parts])
    y = np.concatenate([p[2] for p in parts])
    ev = evidence.Evidence().fit(X, mask, y, np.arange(len(y)))
    assert {k: v for k, v in ev.support.items() if v} == {
        "memory_0.9_0_1min": 200, "memory_0.5_1_3min": 100, "memory_0.5_0_1min": 60, "memory_0.5_3_10min": 3}
    assert set(ev.rates) == {k for k, v in ev.support.items() if v >= evidence.MIN_JOBS}
    prior = y.mean()
    raw_far = y[200:300].mean()
    assert prior < ev.rates["memory_0.5_1_3min"] < raw_far              # shrunk toward the overall rate
    # a nearer limit never reads safer: 36 s to the limit is raised to the 2 min rate
    assert ev.rates["memory_0.5_0_1min"] == ev.rates["memory_0.5_1_3min"] > y[300:360].mean()
    assert ev.rates["memory_0.9_0_1min"] >= ev.rates["memory_0.5_0_1min"]  # nor a higher level
    risk = ev.risk(X, mask)
    assert risk[0] == ev.rates["memory_0.9_0_1min"] and np.isnan(risk[-1])
    assert evidence.Evidence.from_dict(ev.to_dict()) == ev
    # a job counts once, however long it sits in a condition: 300 more examples of one
    # completed job near its limit change the 0.9 rate by one job's worth
    many = np.repeat(X[:1], 300, axis=0)
    again = evidence.Evidence().fit(np.concatenate([X, many]), np.concatenate([mask, mask[:1].repeat(300, 0)]),
                                    np.concatenate([y, np.zeros(300)]), np.concatenate([np.arange(len(y)),
                                                                                      np.full(300, -1)]))
    assert again.support["memory_0.9_0_1min"] == 201
    raised = evidence.raise_risk(np.array([0.2, 0.95, np.nan, 0.2]), np.array([0.8, 0.8, np.nan, 0.5]))
    assert raised[0] == 0.8 and raised[1] == 0.95 and np.isnan(raised[2])
    assert raised[3] == 0.2          # a rate below MIN_RAISE leaves the models' ranking alone


def test_a_filling_disk_has_its_own_grid() -> None:
    X, mask = _x(0.2, 0.0)
    X[0, F["log_fs_full_h"]], X[0, F["fs_fill_frac_h"]] = np.log1p(2 / 60), 2.4   # 2 min to full
    mask[0, [F["log_fs_full_h"], F["fs_fill_frac_h"]]] = True
    on = {name for name, held in evidence.conditions(X, mask).items() if held[0]}
    assert on == {"disk_1_3min"}
    assert evidence.minutes_to_limit(X, mask, "disk")[0] == pytest.approx(2.0)
    X[0, F["log_fs_full_h"]] = np.log1p(features.FS_HORIZON_H)               # nearly full, not filling
    assert not any(held[0] for held in evidence.conditions(X, mask).values())
    X[0, F["log_fs_full_h"]] = np.log1p(2.0)                                  # 2 h, the time limit first
    assert not any(held[0] for held in evidence.conditions(X, mask).values())
    mask[0, F["log_fs_full_h"]] = False
    assert evidence.minutes_to_limit(X, mask, "disk")[0] == np.inf
