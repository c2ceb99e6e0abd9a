"""Turning wire messages into table rows, and merging job events into a job's row:
everything is checked here, before a write starts."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from nomade import slurmstates
from nomade.store.records import (
    _PREDICTION_FIELDS,
    _START_FILL,
    JOB_FIELDS,
    JOB_SAMPLE_FIELDS,
    NODE_SAMPLE_FIELDS,
    Job,
    MessageLike,
)


def _min(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional numbers (None = unknown)."""
    if a is None:
        return b
    return a if b is None or a <= b else b


_GET_JOB_SAMPLE = itemgetter(*JOB_SAMPLE_FIELDS)
_GET_JOB_ID, _GET_TS = itemgetter(0), itemgetter(2)
_GET_NODE_SAMPLE = itemgetter(*NODE_SAMPLE_FIELDS)


def _sample_row(msg: MessageLike, fields: tuple[str, ...], get: itemgetter[Any],
                ts_at: int) -> tuple[Any, ...]:
    """The row of a job/node sample in ``fields`` order (absent keys are None); ts falls
    back to the envelope's."""
    try:
        row: tuple[Any, ...] = get(msg.body)  # every key present: the common case, and the fast one
    except KeyError:
        row = tuple(map(msg.body.get, fields))
    if row[0] is None:
        raise ValueError(f"{msg.kind} from {msg.sender} seq {msg.seq} has no {fields[0]}")
    if row[ts_at] is None:
        row = row[:ts_at] + (msg.ts,) + row[ts_at + 1:]
    return row


def _prediction_row(p: Mapping[str, Any], default_ts: float | None = None) -> tuple[Any, ...]:
    """The ``predictions`` row of a prediction body (parts and factors as JSON text)."""
    missing = [k for k in ("job_id", "risk", "level") if p.get(k) is None]
    ts = default_ts if p.get("ts") is None else p["ts"]
    if missing or ts is None:
        raise ValueError(f"prediction lacks {', '.join(missing or ['ts'])}: {dict(p)!r:.200}")
    try:
        factors = p.get("factors")   # most predictions have none: skip the encoder (tick budget)
        parts, factors = json.dumps(p.get("parts") or {}), json.dumps(factors) if factors else "[]"
    except (TypeError, ValueError) as e:
        raise ValueError(f"prediction for job {p['job_id']}: parts/factors not JSON: {e}") from None
    return (str(p["job_id"]), ts, p["risk"], p["level"], parts, factors, p.get("model_version"))


@dataclass
class _Rows:
    """Rows of one or more message lists, grouped per table, checked before any write."""

    job_samples: list[tuple[Any, ...]] = field(default_factory=list)
    node_samples: list[tuple[Any, ...]] = field(default_factory=list)
    predictions: list[tuple[Any, ...]] = field(default_factory=list)
    job_events: list[tuple[str, Mapping[str, Any], float]] = field(default_factory=list)

    @classmethod
    def of(cls, messages: Iterable[MessageLike],
           job_sample_rows: list[tuple[Any, ...]] | None = None) -> _Rows:
        """Group ``messages`` by kind; ``ValueError`` names the first one the store cannot
        keep. With ``job_sample_rows`` (the job samples' rows, already in column order) the
        ``job.sample`` messages are skipped."""
        rows = cls()
        if job_sample_rows is not None:
            rows.job_samples = job_sample_rows
        for msg in messages:
            kind = msg.kind
            if kind == "job.sample":
                if job_sample_rows is None:
                    rows.job_samples.append(_sample_row(msg, JOB_SAMPLE_FIELDS, _GET_JOB_SAMPLE, 2))
            elif kind == "node.sample":
                rows.node_samples.append(_sample_row(msg, NODE_SAMPLE_FIELDS, _GET_NODE_SAMPLE, 1))
            elif kind in ("job.start", "job.end"):
                if msg.body.get("job_id") is None:
                    raise ValueError(f"{kind} from {msg.sender} seq {msg.seq} has no job_id")
                rows.job_events.append((kind, msg.body, msg.ts))
            elif kind == "prediction":
                rows.predictions.append(_prediction_row(msg.body, msg.ts))
            else:
                raise ValueError(f"the store keeps no {kind!r} message "
                                 f"(from {msg.sender} seq {msg.seq})")
        return rows

    def extend(self, other: _Rows) -> None:
        """Append ``other``'s rows to these."""
        self.job_samples += other.job_samples
        self.node_samples += other.node_samples
        self.predictions += other.predictions
        self.job_events += other.job_events


_BLANK_JOB: dict[str, Any] = {**dict.fromkeys(JOB_FIELDS), "nodes": ()}


def _blank_job(job_id: str) -> dict[str, Any]:
    """A jobs row that knows nothing but its id."""
    job = _BLANK_JOB.copy()
    job["job_id"] = job_id
    return job


def _merge_start(job: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """job.start: fill unknown fields, keep the earliest submit/start, union the nodes."""
    new = dict(job)
    get = body.get
    for f in _START_FILL:
        if new[f] is None:
            new[f] = get(f)
    new["submit_ts"] = _min(new["submit_ts"], get("submit_ts"))
    new["start_ts"] = _min(new["start_ts"], get("start_ts"))
    new["nodes"] = tuple(dict.fromkeys((*new["nodes"], *(get("nodes") or ()))))
    return new


def _merge_end(job: dict[str, Any], body: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """job.end: keep the earliest end; a final state (first one wins) sets state and label."""
    new = dict(job)
    get = body.get
    end_ts = get("end_ts")
    new["end_ts"] = _min(new["end_ts"], ts if end_ts is None else end_ts)
    state = slurmstates.normalise(get("state"))
    if new["state"] is None and state in slurmstates.FINAL_STATES:
        new.update(state=state, label=slurmstates.LABELS.get(state), state_source=get("source"))
        for f in ("exit_code", "signal"):
            if get(f) is not None:
                new[f] = body[f]
    for f in ("exit_code", "signal"):
        if new[f] is None:
            new[f] = get(f)
    return new


_GET_JOB = itemgetter(*JOB_FIELDS)
_NODES_AT = JOB_FIELDS.index("nodes")
_UPDATED_AT = JOB_FIELDS.index("updated_ts")


def _job_of(row: Sequence[Any]) -> Job:
    """A ``Job`` from a ``SELECT`` of ``JOB_FIELDS``."""
    values = list(row)
    values[_NODES_AT] = tuple(json.loads(values[_NODES_AT]))
    return Job(*values)


def _job_row(job: Mapping[str, Any], now: float) -> list[Any]:
    """The parameters of ``_UPSERT_JOB`` for a merged job dict."""
    row = list(_GET_JOB(job))
    row[_NODES_AT] = _nodes_json(job["nodes"])
    row[_UPDATED_AT] = now
    return row


@functools.lru_cache(maxsize=4096)
def _nodes_json(nodes: tuple[str, ...]) -> str:
    """The ``nodes`` column of a job's node names (remembered: many jobs share a list)."""
    return json.dumps(nodes)


_JOB_COLS = ", ".join(JOB_FIELDS)
_UPSERT_JOB = (f"INSERT INTO jobs ({_JOB_COLS}) VALUES ({', '.join('?' * len(JOB_FIELDS))}) "
               "ON CONFLICT (job_id) DO UPDATE SET "
               + ", ".join(f"{f} = excluded.{f}" for f in JOB_FIELDS[1:]))
_INSERT_JOB_SAMPLE = (f"INSERT INTO job_samples ({', '.join(JOB_SAMPLE_FIELDS)}) "
                      f"VALUES ({', '.join('?' * len(JOB_SAMPLE_FIELDS))})")
_INSERT_NODE_SAMPLE = (f"INSERT INTO node_samples ({', '.join(NODE_SAMPLE_FIELDS)}) "
                       f"VALUES ({', '.join('?' * len(NODE_SAMPLE_FIELDS))})")
_INSERT_PREDICTION = (f"INSERT INTO predictions ({', '.join(_PREDICTION_FIELDS)}) "
                      f"VALUES ({', '.join('?' * len(_PREDICTION_FIELDS))})")
_IN_JSON = "IN (SELECT value FROM json_each(?))"
