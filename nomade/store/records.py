"""What the store holds: the column order of each table's rows and the records it
returns (``Job``, ``Prediction``, ``ModelRun``, ``UserHistory``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from nomade import jobrecord


class MessageLike(Protocol):
    """What the store reads of a ``nomade.wire.Message``."""

    @property
    def kind(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def body(self) -> Mapping[str, Any]: ...


JOB_FIELDS: tuple[str, ...] = (
    "job_id", "cluster", "user", "uid", "account", "partition", "nodes", "num_nodes",
    "req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts",
    "end_ts", "exit_code", "signal", "state", "label", "state_source", "updated_ts")

#: Column order of the tuples ``job_samples`` returns (the ``job.sample`` body).
JOB_SAMPLE_FIELDS: tuple[str, ...] = (
    "job_id", "node", "ts", "alloc_cpus", "cpu_user_s", "cpu_system_s", "mem_bytes",
    "mem_peak_bytes", "mem_limit_bytes", "mem_limit_hits", "oom_kills", "page_faults",
    "major_faults", "swap_bytes", "read_bytes", "write_bytes", "nfs_write_bytes",
    "nprocs", "nthreads", "io_pressure", "mem_pressure", "fs_used_pct")

#: Column order of the tuples ``node_samples`` returns (the ``node.sample`` body).
NODE_SAMPLE_FIELDS: tuple[str, ...] = (
    "node", "ts", "cpu_pct", "iowait_pct", "mem_used_bytes", "mem_total_bytes",
    "swap_used_bytes", "load1", "disk_read_Bps", "disk_write_Bps", "net_rx_Bps", "net_tx_Bps")

_PREDICTION_FIELDS = ("job_id", "ts", "risk", "level", "parts", "factors", "model_version")

# job.start fields that the first message that knows them fills in (the times and the
# nodes merge otherwise; a field the jobs table has no column for is not kept).
_START_FILL = tuple(f for f in jobrecord.START_FIELDS
                    if f in JOB_FIELDS and f not in ("job_id", "nodes", "submit_ts", "start_ts"))


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``: what was requested, when it ran, how it ended (None = unknown)."""

    job_id: str
    cluster: str | None
    user: str | None
    uid: int | None
    account: str | None
    partition: str | None
    nodes: tuple[str, ...]
    num_nodes: int | None
    req_cpus: int | None
    req_mem_bytes: int | None
    req_gpus: int | None
    time_limit_s: float | None
    submit_ts: float | None
    start_ts: float | None
    end_ts: float | None
    exit_code: int | None
    signal: int | None
    state: str | None
    label: int | None
    state_source: str | None
    updated_ts: float


@dataclass(frozen=True)
class Prediction:
    """One stored prediction for a job at time ``ts``."""

    job_id: str
    ts: float
    risk: float
    level: str
    parts: dict[str, Any]
    factors: list[Any]
    model_version: str | None


@dataclass(frozen=True)
class ModelRun:
    """One training or evaluation run, with its metadata and metrics (JSON objects)."""

    id: int
    ts: float
    kind: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]


class UserHistory(NamedTuple):
    """A user's labelled jobs that ended before a time; ``last_failed`` None if none."""

    n_ended: int
    n_failed: int
    last_failed: bool | None

