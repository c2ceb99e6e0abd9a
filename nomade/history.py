"""The job history training learns from, as stored rows, and the one way to tables.

``HistoryRows`` holds what the store keeps of ended jobs: job records (the fields of
``nomade.store.Job``), job samples (tuples in ``JOB_SAMPLE_FIELDS`` order) and node
samples (``NODE_SAMPLE_FIELDS`` order). The store (``rows_from_store``) and a corpus
file (``nomade.corpus``) both give these rows, and ``tables`` turns them into the
``features.JobTable`` / ``SampleTable`` that training and evaluation use, so there is
one feature pipeline whatever the source. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nomade import features
from nomade.store import JOB_SAMPLE_FIELDS, NODE_SAMPLE_FIELDS, Store


@dataclass
class HistoryRows:
    """Ended jobs (dicts of ``store.Job`` fields, by end time) and their sample rows."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    job_samples: list[tuple[Any, ...]] = field(default_factory=list)
    node_samples: list[tuple[Any, ...]] = field(default_factory=list)

    def extend(self, other: HistoryRows) -> None:
        """Append ``other``'s rows (job ids must not collide: see ``prefixed``)."""
        self.jobs += other.jobs
        self.job_samples += other.job_samples
        self.node_samples += other.node_samples

    def prefixed(self, prefix: str) -> HistoryRows:
        """The same rows with ``prefix`` before every job id, user and node name, so a
        history from elsewhere (a corpus) can be mixed with a site's own."""
        def p(v: Any) -> Any:
            return None if v is None else f"{prefix}{v}"
        jobs = [{**j, "job_id": p(j["job_id"]), "user": p(j.get("user")),
                 "nodes": tuple(p(n) for n in j.get("nodes") or ())} for j in self.jobs]
        return HistoryRows(jobs, [(p(r[0]), p(r[1]), *r[2:]) for r in self.job_samples],
                           [(p(r[0]), *r[1:]) for r in self.node_samples])


def rows_from_store(db_path: str | Path, iowait_max_age_s: float = features.IOWAIT_MAX_AGE_S,
                    job_ids: Sequence[str] | None = None) -> HistoryRows:
    """Every ended job in the store (or those of ``job_ids``), their samples, and the node
    samples from ``iowait_max_age_s`` before the first of those samples on."""
    store = Store(db_path, readonly=True)
    try:
        jobs = [asdict(j) for j in store.ended_jobs()]
        if job_ids is not None:
            wanted = set(job_ids)
            jobs = [j for j in jobs if j["job_id"] in wanted]
        rows = store.job_samples([j["job_id"] for j in jobs]) if jobs else []
        first = min((r[2] for r in rows if r[2] is not None), default=None)
        node_rows = [] if first is None else store.node_samples(since_ts=first - iowait_max_age_s)
    finally:
        store.close()
    return HistoryRows(jobs, rows, node_rows)


def tables(rows: HistoryRows, iowait_max_age_s: float = features.IOWAIT_MAX_AGE_S
           ) -> tuple[features.JobTable, features.SampleTable]:
    """The training tables of ``rows``; each sample's ``iowait_pct`` is that of the node
    that sent it as of the sample's time (``features.node_asof`` over the node samples:
    the latest with ts <= the sample's, at most ``iowait_max_age_s`` older, else NaN), as
    the agent's scoring tick takes it."""
    jobs = features.JobTable.from_records(rows.jobs)
    iowait = sample_iowait(rows.job_samples, rows.node_samples, iowait_max_age_s).tolist()
    samples = features.SampleTable.from_records(
        jobs, (r + (w,) for r, w in zip(rows.job_samples, iowait, strict=True)),
        fields=(*JOB_SAMPLE_FIELDS, "iowait_pct"))
    return jobs, samples


def sample_iowait(rows: Sequence[tuple[Any, ...]], node_rows: Sequence[tuple[Any, ...]],
                  max_age_s: float) -> np.ndarray:
    """The as-of iowait of each job sample (node at 1, ts at 2) from the node samples
    (tuples in ``NODE_SAMPLE_FIELDS`` order)."""
    codes: dict[Any, int] = {}
    node = np.fromiter((codes.setdefault(r[1], len(codes)) for r in rows), np.int64, len(rows))
    ts = np.array([r[2] for r in rows], dtype=np.float64)
    k = NODE_SAMPLE_FIELDS.index("iowait_pct")
    ref_node = np.fromiter((codes.get(r[0], -1) for r in node_rows), np.int64, len(node_rows))
    ref = np.array([(r[1], r[k]) for r in node_rows], dtype=np.float64).reshape(len(node_rows), 2)
    return features.node_asof(node, ts, ref_node, ref[:, 0], ref[:, 1], max_age_s)
