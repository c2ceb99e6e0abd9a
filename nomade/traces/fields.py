"""Slurm accounting fields as text: counts, node lists, memory requests, TRES, times
(shared by the sacct readers and ``jobcomp``)."""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone
from typing import Any

from nomade import slurmfmt, wire

_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)([nc]?)$", re.IGNORECASE)
_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_GPU = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")
_NO_TIME = frozenset({"", "Unknown", "unknown", "None", "N/A"})


def _count(text: str | None, name: str) -> int | None:
    """A count of at most 18 ASCII digits (more could not be stored), None if empty;
    ValueError otherwise."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ValueError(f"{name} {text!r} is not a count")
    return int(text)


def _nodes(text: Any) -> str | None:
    """A node list as written (``n[1-2],g1``), or None for Slurm's ``None assigned`` /
    empty; ValueError if it is not a host list of at most ``wire.MAX_NODES`` hosts."""
    if not isinstance(text, str) or not text or text in ("None assigned", "(null)"):
        return None
    hosts(text)
    return text


_HOSTS: dict[str, tuple[str, ...]] = {}
_HOSTS_CACHED = 50_000
"""Node lists remembered by :func:`hosts` (a history names the same few again and again)."""


def hosts(text: str) -> tuple[str, ...]:
    """The host names of a node list (``n[1-2]`` -> n1 n2), at most ``wire.MAX_NODES``;
    ValueError if it is not a host list. Remembered: parsing is the import's cost."""
    got = _HOSTS.get(text)
    if got is None:
        got = tuple(slurmfmt.expand_hostlist(text, wire.MAX_NODES))
        if len(_HOSTS) < _HOSTS_CACHED and len(got) <= 64:
            _HOSTS[text] = got
    return got


@functools.lru_cache(maxsize=4096)
def _req_mem(text: str, cpus: int | None, nodes: int | None) -> float | None:
    """``4000M``, ``4G``, ``2Gc`` (per CPU), ``4Gn`` (per node) → bytes; None if unknown.
    Remembered: a history repeats a few requests."""
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
    return _gpu_count(tres) or 0


@functools.lru_cache(maxsize=4096)
def _gpu_count(tres: str) -> int | None:
    """GPUs in a TRES string as :func:`tres_gpus`, None if it names none (remembered: a
    history repeats a few TRES strings)."""
    m = _GPU.search(tres)
    return int(m.group(1)) if m else None


_time_limit_s = functools.lru_cache(maxsize=4096)(slurmfmt.time_limit_s)
"""``slurmfmt.time_limit_s``, remembered (a history has few distinct time limits)."""


_HOUR_STARTS: dict[str, float] = {}
"""POSIX time of the start of a local hour, by its text (``2024-01-02T03``)."""
_CLOCK = {f":{m:02d}:{s:02d}": 60.0 * m + s for m in range(60) for s in range(60)}
"""Seconds into the hour of every valid ``:MM:SS``."""


def _time(text: str, name: str = "time", utc: bool = False) -> float | None:
    """``2024-01-02T03:04:05`` → POSIX s: local time as sacct and jobcomp/filetxt print
    it, or UTC (``utc``, as jobcomp/elasticsearch writes it) unless the text carries an
    offset; ``Unknown``/``None``/empty → None; anything else is malformed (ValueError).

    A local ``YYYY-MM-DDTHH:MM:SS`` in an hour seen before is its hour's start plus the
    seconds of ``:MM:SS`` (two lookups): the local offset is taken as the same all hour
    (up to a DST change's hour), as the first time read in that hour has it."""
    if not utc and len(text) == 19:
        hour, clock = _HOUR_STARTS.get(text[:13]), _CLOCK.get(text[13:])
        if hour is not None and clock is not None:
            return hour + clock
    text = text.strip()
    if text in _NO_TIME:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a time") from None
    if dt.tzinfo is not None or utc:
        return dt.replace(tzinfo=dt.tzinfo or timezone.utc).timestamp()
    ts = dt.timestamp()
    clock = _CLOCK.get(text[13:]) if len(text) == 19 else None
    if clock is not None and len(_HOUR_STARTS) < 100000:
        _HOUR_STARTS[text[:13]] = ts - clock
    return ts
