"""The body of every kind (``SCHEMAS``, append only) and its compiled validator."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from nomade import jobrecord
from nomade.wire.envelope import WireError, _show
from nomade.wire.values import (
    _KEYSETS,
    AMOUNT,
    BY_NAME,
    COUNT,
    FACTORS,
    FRACTION,
    JOB_ID,
    LEVEL,
    NAME,
    NAMES,
    OPT,
    PERCENT,
    REQ,
    SCORES,
    SECONDS,
    TS,
    _compile_body,
    _Field,
    _record,
    _record_to_wire,
)

#: Body fields of every kind in wire order: (name, type, nullable). Append only. The job
#: events' fields are declared once, in ``nomade.jobrecord``.
SCHEMAS: dict[str, tuple[_Field, ...]] = {
    "job.start": tuple((f.name, BY_NAME[f.type], f.nullable) for f in jobrecord.START),
    "job.end": tuple((f.name, BY_NAME[f.type], f.nullable) for f in jobrecord.END),
    "job.sample": (
        ("job_id", JOB_ID, REQ), ("node", NAME, REQ), ("ts", TS, REQ),
        ("alloc_cpus", COUNT, OPT), ("cpu_user_s", SECONDS, OPT),
        ("cpu_system_s", SECONDS, OPT), ("mem_bytes", COUNT, OPT),
        ("mem_peak_bytes", COUNT, OPT), ("mem_limit_bytes", COUNT, OPT),
        ("mem_limit_hits", COUNT, OPT), ("oom_kills", COUNT, OPT),
        ("page_faults", COUNT, OPT), ("major_faults", COUNT, OPT),
        ("swap_bytes", COUNT, OPT), ("read_bytes", COUNT, OPT), ("write_bytes", COUNT, OPT),
        ("nfs_write_bytes", COUNT, OPT), ("nprocs", COUNT, OPT), ("nthreads", COUNT, OPT),
        ("io_pressure", PERCENT, OPT), ("mem_pressure", PERCENT, OPT),
        ("fs_used_pct", PERCENT, OPT),
    ),
    "node.sample": (
        ("node", NAME, REQ), ("ts", TS, REQ), ("cpu_pct", PERCENT, OPT),
        ("iowait_pct", PERCENT, OPT), ("mem_used_bytes", COUNT, OPT),
        ("mem_total_bytes", COUNT, OPT), ("swap_used_bytes", COUNT, OPT),
        ("load1", AMOUNT, OPT), ("disk_read_Bps", AMOUNT, OPT),
        ("disk_write_Bps", AMOUNT, OPT), ("net_rx_Bps", AMOUNT, OPT),
        ("net_tx_Bps", AMOUNT, OPT), ("outbox_dropped", COUNT, OPT),
        ("outbox_write_errors", COUNT, OPT),
    ),
    "prediction": (
        ("job_id", JOB_ID, REQ), ("user", NAME, OPT), ("partition", NAME, OPT),
        ("nodes", NAMES, OPT), ("risk", FRACTION, REQ), ("level", LEVEL, REQ),
        ("parts", SCORES, REQ), ("factors", FACTORS, REQ), ("ts", TS, REQ),
        ("model_version", NAME, OPT),
    ),
    "ack": (("seq", COUNT, REQ),),
}

#: Kinds that may be items of a batch.
ITEM_KINDS: tuple[str, ...] = ("job.start", "job.end", "job.sample", "node.sample", "prediction")
#: Every kind.
KINDS: tuple[str, ...] = (*ITEM_KINDS, "batch", "ack")
#: Body keys of every kind, in wire order.
FIELDS: dict[str, tuple[str, ...]] = {k: tuple(f[0] for f in s) for k, s in SCHEMAS.items()}
FIELDS["batch"] = ("items",)


class _Body:
    """The compiled schema of one kind: validates a wire body array into a dict."""

    def __init__(self, kind: str, fields: tuple[_Field, ...]) -> None:
        self.kind = kind
        self.fields = fields
        self.keys = tuple(f[0] for f in fields)
        self.converts = tuple((name, typ.convert) for name, typ, _ in fields if typ.convert)
        self.to_wires = tuple((i, typ.to_wire) for i, (_, typ, _) in enumerate(fields)
                              if typ.to_wire)
        _KEYSETS[self.keys] = frozenset(self.keys)
        self.fast: Callable[[Any], dict[str, Any] | None] = _compile_body(fields)

    def decode(self, arr: Any) -> dict[str, Any]:
        """The body dict of wire array ``arr``; WireError if it is invalid."""
        try:
            body = _record(self.fast, self.fields, arr)
            for name, convert in self.converts:
                body[name] = convert(body[name])
        except WireError as e:
            raise WireError(f"{self.kind} {e}") from None
        return body

    def to_wire(self, body: Mapping[str, Any]) -> list[Any]:
        """The wire array of a body dict; unknown keys refused, missing ones None."""
        arr = _record_to_wire(body, self.keys, f"{self.kind} body")
        if arr is body:
            raise WireError(f"{self.kind} body: expected a dict, got {_show(body)}")
        for i, to_wire in self.to_wires:
            arr[i] = to_wire(arr[i])
        return cast("list[Any]", arr)


_BODIES: dict[str, _Body] = {k: _Body(k, s) for k, s in SCHEMAS.items()}
_ITEM_BODIES: dict[str, _Body] = {k: _BODIES[k] for k in ITEM_KINDS}
# The generated check alone decodes an item whose body has no nested record to convert.
_FAST_ITEMS = {k: b.fast for k, b in _ITEM_BODIES.items() if not b.converts}
