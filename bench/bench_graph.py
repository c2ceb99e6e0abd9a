"""Graph build for 100,000 jobs (DESIGN budget: ≤ 60 s on 2 cores).

Every job is both a reference and a query, time-ordered (each links only to jobs that
ended before it started); 19 features drawn around 50 job "kinds"; 30% of queries know
only the start-time part, 20% lack one runtime feature (three mask patterns).
"""

from __future__ import annotations

import time

import numpy as np

from bench.result import Result
from nomade import features
from nomade.ml.graph import neighbours

BUDGET_S = 60.0


def _jobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, features.N_FEATURES))
    X = (centers[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, features.N_FEATURES))).astype(np.float32)
    start = np.sort(rng.uniform(0, 365 * 86400, n))
    end = start + rng.exponential(4 * 3600, n)
    mask = np.ones((n, features.N_FEATURES), bool)
    r = rng.random(n)
    mask[r < 0.3, 6:] = False
    mask[(r >= 0.3) & (r < 0.5), 15] = False
    return X, start, end, mask


def run(quick: bool) -> list[Result]:
    """Time one full graph build; quick runs 10,000 jobs and scales nothing."""
    n = 10_000 if quick else 100_000
    X, start, end, mask = _jobs(n)
    t0 = time.perf_counter()
    idx, sim, valid = neighbours(X, end, X, start, mask, threshold=0.7, k=10)
    wall = time.perf_counter() - t0
    edges = int(valid.sum())
    note = f"{n} jobs, {edges} edges ({edges / n:.1f} per job), k=10, threshold 0.7"
    return [Result(f"graph build, {n:,} jobs", wall, "s",
                   f"<= {BUDGET_S:.0f} s for 100,000 jobs", wall <= BUDGET_S if not quick else None, note)]
