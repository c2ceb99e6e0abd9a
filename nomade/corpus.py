"""A job corpus in one compact, versioned file: what a store holds of ended jobs.

Format (``FORMAT`` version ``VERSION``): a NumPy ``.npz`` (zip, deflated), read with
``allow_pickle=False``, of plain columns:

- ``header``: UTF-8 JSON (uint8): ``format``, ``version``, ``created``, ``counts``
  (jobs, job_samples, node_samples, by final state, by shape) and what the maker adds
  (``made_by``: how it was recorded, seed, the re-record command).
- ``jobs/<field>`` for every field of ``nomade.store.Job`` (``nodes`` as a JSON list);
- ``samples/<field>`` in ``nomade.store.JOB_SAMPLE_FIELDS`` (version 2 added
  ``fs_used_pct``: a version-1 file reads it as unknown);
- ``nodes/<field>`` in ``nomade.store.NODE_SAMPLE_FIELDS``;
- ``meta/<field>`` per job: ``job_id``, ``shape``, ``variant``, ``plan_index``, ``seed``,
  ``user`` (metadata for evaluation per shape, never a feature).

Text columns are unicode arrays ("" = unknown); numbers are float64 (NaN = unknown).
``read`` gives back ``nomade.history.HistoryRows``, which ``history.tables`` turns into
the training tables exactly as it does the store's rows. A truncated or corrupt file, a
missing column or a column of the wrong length raises ``CorpusError`` naming the file
and the column.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from nomade.errors import NomadeError
from nomade.history import HistoryRows, rows_from_store
from nomade.store import JOB_SAMPLE_FIELDS, NODE_SAMPLE_FIELDS, Job

FORMAT = "nomade-corpus"
VERSION = 2
#: Columns added after version 1, with the version that added them: a file older than
#: that reads them as unknown.
ADDED_IN = {"samples/fs_used_pct": 2}
JOB_FIELDS = tuple(f.name for f in fields(Job))
META_FIELDS = ("job_id", "shape", "variant", "plan_index", "seed", "user")
_TEXT_JOB = frozenset({"job_id", "cluster", "user", "account", "partition", "state", "state_source", "nodes"})
_TEXT_SAMPLE = frozenset({"job_id", "node"})
_TEXT_META = frozenset({"job_id", "shape", "variant", "user"})
_INT_JOB = frozenset({"uid", "num_nodes", "req_cpus", "req_mem_bytes", "req_gpus", "exit_code", "signal", "label"})
#: Job sample columns that are counts or bytes in the store (read back as int).
_INT_SAMPLE = frozenset(JOB_SAMPLE_FIELDS) - {"job_id", "node", "ts", "alloc_cpus", "cpu_user_s",
                                              "cpu_system_s", "io_pressure", "mem_pressure", "fs_used_pct"}
_INT_NODE = frozenset({"mem_used_bytes", "mem_total_bytes", "swap_used_bytes"})


class CorpusError(NomadeError):
    """A corpus file that cannot be read (names the file and what is wrong)."""


@dataclass
class Corpus:
    """A read corpus: its header, its rows and the per-job metadata (job id -> dict)."""

    header: dict[str, Any]
    rows: HistoryRows
    meta: dict[str, dict[str, Any]]


# ------------------------------------------------------------------ columns
def _text(values: Iterable[Any]) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=str)


def _num(values: Iterable[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _columns(prefix: str, names: Sequence[str], rows: Sequence[Sequence[Any]], text: frozenset[str]
             ) -> dict[str, np.ndarray]:
    out = {}
    for i, name in enumerate(names):
        col = [r[i] for r in rows]
        out[f"{prefix}/{name}"] = _text(col) if name in text else _num(col)
    return out


def _back(col: np.ndarray, text: bool, integer: bool) -> list[Any]:
    """A column as the store gives it: None for unknown, int where the store has ints."""
    if text:
        return [None if v == "" else str(v) for v in col.tolist()]
    if integer:
        return [None if math.isnan(v) else int(v) for v in col.tolist()]
    return [None if math.isnan(v) else v for v in col.tolist()]


# ------------------------------------------------------------------ write
def counts(rows: HistoryRows, meta: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Rows, final states and shapes (shape -> state -> jobs) of a corpus."""
    by_shape: dict[str, Counter[str]] = {}
    for j in rows.jobs:
        shape = meta.get(j["job_id"], {}).get("shape") or "unknown"
        by_shape.setdefault(shape, Counter())[j.get("state") or "UNKNOWN"] += 1
    return {"jobs": len(rows.jobs), "job_samples": len(rows.job_samples),
            "node_samples": len(rows.node_samples),
            "by_state": dict(Counter(j.get("state") or "UNKNOWN" for j in rows.jobs).most_common()),
            "by_shape": {s: dict(c.most_common()) for s, c in sorted(by_shape.items())}}


def write(path: str | Path, rows: HistoryRows, meta: Mapping[str, Mapping[str, Any]],
          made_by: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``rows`` and ``meta`` (job id -> ``META_FIELDS`` values) to ``path``; the header."""
    header = {"format": FORMAT, "version": VERSION,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "counts": counts(rows, meta), "made_by": dict(made_by or {})}
    job_rows = [[json.dumps(list(j.get("nodes") or ())) if f == "nodes" else j.get(f) for f in JOB_FIELDS]
                for j in rows.jobs]
    meta_rows = [[jid if f == "job_id" else meta[jid].get(f) for f in META_FIELDS]
                 for jid in (j["job_id"] for j in rows.jobs) if jid in meta]
    cols = {"header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
            **_columns("jobs", JOB_FIELDS, job_rows, _TEXT_JOB),
            **_columns("samples", JOB_SAMPLE_FIELDS, rows.job_samples, _TEXT_SAMPLE),
            **_columns("nodes", NODE_SAMPLE_FIELDS, rows.node_samples, frozenset({"node"})),
            **_columns("meta", META_FIELDS, meta_rows, _TEXT_META)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **cols)
    tmp.replace(path)
    return header


def export_store(db_path: str | Path, path: str | Path, meta: Mapping[str, Mapping[str, Any]],
                 made_by: Mapping[str, Any] | None = None, iowait_max_age_s: float = 600.0,
                 after: Corpus | None = None) -> dict[str, Any]:
    """Write the ended jobs of the store that ``meta`` describes (with their samples and the
    node samples of their time) to ``path``, after the rows of the corpus ``after`` when
    given (a recording that continued it); the header. ``CorpusError`` when a job id of the
    store is already in ``after``."""
    rows = rows_from_store(db_path, iowait_max_age_s, job_ids=list(meta))
    ends = [j["end_ts"] for j in rows.jobs if j.get("end_ts") is not None]
    if ends:
        last = max(ends) + iowait_max_age_s
        rows.node_samples = [r for r in rows.node_samples if r[1] <= last]
    if after is not None:
        both = {j["job_id"] for j in after.rows.jobs} & {j["job_id"] for j in rows.jobs}
        if both:
            raise CorpusError(f"{db_path}: job ids already in the earlier corpus: {sorted(both)[:5]}")
        merged = HistoryRows(list(after.rows.jobs), list(after.rows.job_samples), list(after.rows.node_samples))
        merged.extend(rows)
        rows, meta = merged, {**after.meta, **meta}
    return write(path, rows, meta, made_by)


# ------------------------------------------------------------------ read
def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such corpus file") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as e:
        raise CorpusError(f"{path}: not a readable corpus file (truncated or corrupt: {e})") from None


def _header(path: Path, z: Mapping[str, np.ndarray]) -> dict[str, Any]:
    if "header" not in z:
        raise CorpusError(f"{path}: no 'header' column; not a {FORMAT} file")
    try:
        header = json.loads(z["header"].tobytes().decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: unreadable header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorpusError(f"{path}: header format is {header.get('format') if isinstance(header, dict) else header!r}, "
                          f"expected {FORMAT!r}")
    if header.get("version") not in range(1, VERSION + 1):
        raise CorpusError(f"{path}: corpus version {header.get('version')!r}; "
                          f"this NØMADE reads versions 1 to {VERSION}")
    return header


def _table(path: Path, z: Mapping[str, np.ndarray], prefix: str, names: Sequence[str],
           version: int = VERSION) -> list[np.ndarray]:
    cols = []
    for name in names:
        key = f"{prefix}/{name}"
        if key not in z and ADDED_IN.get(key, 1) > version:
            cols.append(np.full(len(cols[0]) if cols else 0, math.nan))
            continue
        if key not in z:
            raise CorpusError(f"{path}: column {key!r} is missing")
        if z[key].ndim != 1:
            raise CorpusError(f"{path}: column {key!r} is not one-dimensional")
        cols.append(z[key])
    n = {len(c) for c in cols}
    if len(n) > 1:
        lengths = {f"{prefix}/{name}": len(c) for name, c in zip(names, cols, strict=True)}
        raise CorpusError(f"{path}: the {prefix} columns differ in length: {lengths}")
    return cols


def read(path: str | Path) -> Corpus:
    """The corpus in ``path``; ``CorpusError`` when it cannot be read."""
    path = Path(path)
    z = _load(path)
    header = _header(path, z)
    jobs_cols = _table(path, z, "jobs", JOB_FIELDS)
    jobs_vals = [_back(c, f in _TEXT_JOB, f in _INT_JOB) for f, c in zip(JOB_FIELDS, jobs_cols, strict=True)]
    jobs = [dict(zip(JOB_FIELDS, r, strict=True)) for r in zip(*jobs_vals, strict=True)]
    for j in jobs:
        try:
            j["nodes"] = tuple(json.loads(j["nodes"] or "[]"))
        except ValueError:
            raise CorpusError(f"{path}: job {j['job_id']}: column 'jobs/nodes' is not a JSON list") from None
    s_cols = _table(path, z, "samples", JOB_SAMPLE_FIELDS, header["version"])
    samples = list(zip(*[_back(c, f in _TEXT_SAMPLE, f in _INT_SAMPLE)
                         for f, c in zip(JOB_SAMPLE_FIELDS, s_cols, strict=True)], strict=True))
    n_cols = _table(path, z, "nodes", NODE_SAMPLE_FIELDS)
    nodes = list(zip(*[_back(c, f == "node", f in _INT_NODE)
                       for f, c in zip(NODE_SAMPLE_FIELDS, n_cols, strict=True)], strict=True))
    m_cols = _table(path, z, "meta", META_FIELDS)
    meta_vals = [_back(c, f in _TEXT_META, f in ("plan_index", "seed"))
                 for f, c in zip(META_FIELDS, m_cols, strict=True)]
    meta = {r[0]: dict(zip(META_FIELDS[1:], r[1:], strict=True)) for r in zip(*meta_vals, strict=True)}
    return Corpus(header, HistoryRows(jobs, samples, nodes), meta)
