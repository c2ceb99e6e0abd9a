"""The job record, declared once: the fields a ``job.start`` and a ``job.end`` carry.

Each field has its name, the wire value type it must have (by name, one of
``nomade.wire.values.BY_NAME``) and whether it may be None, in wire order. The order is
the wire format: append only, never remove or move. ``nomade.wire`` builds the
``job.start``/``job.end`` schemas from these; ``nomade.jobenv`` and ``nomade.traces``
make bodies with these keys (``start_body``, ``end_body``); the store fills its job row
from the ``job.start`` fields it has a column for. A new field is one line here (and a
store column, through a migration, where the store should keep it).

Standard library only: the hook-side code imports it.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class JobField(NamedTuple):
    """One field of a job event body."""

    name: str
    type: str
    nullable: bool = True


#: ``job.start``: who asked for what, where and when the job started.
START: tuple[JobField, ...] = (
    JobField("job_id", "JOB_ID", nullable=False), JobField("user", "NAME"), JobField("uid", "UID"),
    JobField("partition", "NAME"), JobField("account", "NAME"), JobField("nodes", "NAMES"),
    JobField("num_nodes", "COUNT"), JobField("req_cpus", "COUNT"), JobField("req_mem_bytes", "COUNT"),
    JobField("req_gpus", "COUNT"), JobField("time_limit_s", "SECONDS"), JobField("submit_ts", "TS"),
    JobField("start_ts", "TS"), JobField("source", "NAME"), JobField("cluster", "NAME"),
)
#: ``job.end``: when and how the job ended (``state`` only where the sender knows it).
END: tuple[JobField, ...] = (
    JobField("job_id", "JOB_ID", nullable=False), JobField("end_ts", "TS"), JobField("exit_code", "CODE"),
    JobField("signal", "CODE"), JobField("state", "NAME"), JobField("source", "NAME"),
)
START_FIELDS: tuple[str, ...] = tuple(f.name for f in START)
END_FIELDS: tuple[str, ...] = tuple(f.name for f in END)

Body = dict[str, Any]
"""A ``job.start`` or ``job.end`` body: every field of its kind, in wire order, None unknown."""


def _body(fields: tuple[str, ...], kind: str, values: dict[str, Any]) -> Body:
    unknown = set(values).difference(fields)
    if unknown:
        raise ValueError(f"{kind} has no field {sorted(unknown)}; its fields: {list(fields)}")
    return {name: values.get(name) for name in fields}


def start_body(**values: Any) -> Body:
    """A ``job.start`` body of ``values``, the fields not given None; ``ValueError`` names
    a key that is not a ``job.start`` field."""
    return _body(START_FIELDS, "job.start", values)


def end_body(**values: Any) -> Body:
    """A ``job.end`` body of ``values`` (as ``start_body``)."""
    return _body(END_FIELDS, "job.end", values)
