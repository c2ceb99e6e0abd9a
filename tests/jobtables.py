"""Small job tables for tests of the replay and the judging (shared helper, not a test)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nomade import features


def job_table(states: Sequence[str], start: np.ndarray, end: np.ndarray) -> features.JobTable:
    """One job per state, user 0, 1 CPU, 1 GiB, a one-hour limit, started at ``start``
    (also its submit time) and ended at ``end``, labelled from its state."""
    n = len(states)
    return features.JobTable(
        job_id=np.array([str(i) for i in range(n)], dtype=object), user=np.zeros(n, np.int64),
        req_cpus=np.ones(n), req_mem_bytes=np.full(n, 2.0**30), req_gpus=np.zeros(n),
        time_limit_s=np.full(n, 3600.0), submit_ts=start.copy(), start_ts=start.copy(), end_ts=end.copy(),
        state=np.array(states, dtype=object), label=np.array([features.label_of(s) for s in states]))
