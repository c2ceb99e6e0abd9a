"""Slurm accounting fields as text: counts, node lists, memory requests, TRES, times
(shared by the sacct readers and ``jobcomp``)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from nomade import slurmfmt, wire

_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)([nc]?)$", re.IGNORECASE)
_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_GPU = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")
_NO_TIME = frozenset({"", "Unknown", "unknown", "None", "N/A"})


def _count(text: str | None, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{name} {text!r} is not a count")
    return int(text)


def _nodes(text: Any) -> str | None:
    """A node list as written (``n[1-2],g1``), or None for Slurm's ``None assigned`` /
    empty; ValueError if it is not a host list of at most ``wire.MAX_NODES`` hosts."""
    if not isinstance(text, str) or not text or text in ("None assigned", "(null)"):
        return None
    slurmfmt.expand_hostlist(text, wire.MAX_NODES)
    return text


def _req_mem(text: str, cpus: int | None, nodes: int | None) -> float | None:
    """``4000M``, ``4G``, ``2Gc`` (per CPU), ``4Gn`` (per node) → bytes; None if unknown."""
    m = _MEM.match(text.strip())
    if not m:
        return None
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    per = m.group(3).lower()
    if per == "c":
        return value * cpus if cpus else None
    return value * (nodes or 1) if per == "n" else value


def tres_mem(tres: str) -> float | None:
    """Bytes of ``mem=`` in a TRES string (``cpu=4,mem=8G,node=1``); None if absent."""
    for part in tres.split(","):
        key, _, value = part.partition("=")
        if key == "mem":
            return _req_mem(value, None, None)
    return None


def tres_gpus(tres: str) -> int:
    """GPUs in a TRES string (``gres/gpu=2``; typed ``gres/gpu:a100=2`` if untyped absent)."""
    m = _GPU.search(tres)
    return int(m.group(1)) if m else 0


_LOCAL_OFFSET: dict[str, float] = {}


def _time(text: str, name: str = "time", utc: bool = False) -> float | None:
    """``2024-01-02T03:04:05`` → POSIX s: local time as sacct and jobcomp/filetxt print
    it, or UTC (``utc``, as jobcomp/elasticsearch writes it) unless the text carries an
    offset; ``Unknown``/``None``/empty → None; anything else is malformed (ValueError)."""
    text = text.strip()
    if text in _NO_TIME:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a time") from None
    if dt.tzinfo is not None or utc:
        return dt.replace(tzinfo=dt.tzinfo or timezone.utc).timestamp()
    naive = (dt - _EPOCH).total_seconds()
    hour = text[:13]  # the local offset is the same all hour (up to a DST change's hour)
    offset = _LOCAL_OFFSET.get(hour)
    if offset is None:
        offset = dt.timestamp() - naive
        if len(_LOCAL_OFFSET) < 100000:
            _LOCAL_OFFSET[hour] = offset
    return naive + offset


_EPOCH = datetime(1970, 1, 1)


