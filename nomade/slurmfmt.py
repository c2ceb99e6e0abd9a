"""Slurm's value formats, parsed once (standard library only): host lists, durations and
time limits, and the numbers of Slurm's JSON output.

Every reader of Slurm text (hook environments, ``squeue``/``scontrol``/``sacct`` output,
accounting files) goes through these, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_HOSTS = 100_000
"""Most hosts one host list may expand to (a larger one is refused, not truncated)."""
NO_VAL = frozenset({0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF})
"""Slurm's NO_VAL / INFINITE sentinels (32 and 64 bit) as they appear in plain JSON numbers."""

_HOST = re.compile(r"[A-Za-z0-9_.@+-]{1,256}")
_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")
_DURATION = re.compile(r"(?:([0-9]{1,5})-([0-9]{1,2})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?"
                       r"|([0-9]{1,9})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?)")


def expand_hostlist(text: str, max_hosts: int = MAX_HOSTS) -> list[str]:
    """Expand a host list: ``"n[1-3,5],gpu[01-02]"`` -> n1 n2 n3 n5 gpu01 gpu02.

    Zero padding is kept and several bracket groups multiply (``r[1-2]n[1-2]``); an empty
    list is ``[]``. Raises ValueError on unbalanced brackets, a bad range, a host name
    of unsafe characters, or more than ``max_hosts`` hosts.
    """
    hosts: list[str] = []
    for part in _split_top(text.strip()):
        hosts.extend(_expand_one(part, max_hosts - len(hosts)))
    return hosts


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "[") - (c == "]")
        if depth not in (0, 1):
            raise ValueError(f"bad host list {text!r}")
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"bad host list {text!r}")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_one(pattern: str, room: int) -> list[str]:
    head, bracket, rest = pattern.partition("[")
    if not bracket:
        if not _HOST.fullmatch(pattern):
            raise ValueError(f"bad host name {pattern!r}")
        return _bounded([pattern], room)
    body, _, tail = rest.partition("]")
    if head and not _HOST.fullmatch(head):
        raise ValueError(f"bad host name {head!r} in host list")
    numbers = _bounded(_expand_ranges(body, room), room)
    tails = _expand_one(tail, max(1, room // len(numbers))) if tail else [""]
    return _bounded([head + n + t for n in numbers for t in tails], room)


def _expand_ranges(body: str, room: int) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.fullmatch(item)
        if not m:
            raise ValueError(f"bad range {item!r} in host list")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or len(out) + hi - lo >= room:
            raise ValueError(f"bad range {item!r} in host list (reversed, or over {MAX_HOSTS} hosts)")
        width = len(m.group(1)) if m.group(1).startswith("0") else 0
        out.extend(str(i).zfill(width) for i in range(lo, hi + 1))
    return out


def _bounded(hosts: list[str], room: int) -> list[str]:
    if len(hosts) > room:
        raise ValueError(f"host list expands to more than {MAX_HOSTS} hosts")
    return hosts


def duration_s(text: str | None) -> float | None:
    """A Slurm duration in seconds: ``MM`` (a bare number is minutes), ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``. ``"0"`` is 0.0; ``UNLIMITED``,
    ``Partition_Limit``, ``INVALID`` and anything else are None."""
    m = _DURATION.fullmatch(text.strip()) if text else None
    if m is None:
        return None
    days, d_hours, d_minutes, d_seconds, first, second, third = m.groups()
    if days is not None:
        seconds = (int(days) * 86400 + int(d_hours) * 3600
                   + int(d_minutes or 0) * 60 + int(d_seconds or 0))
    elif third is not None:
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:
        seconds = int(first) * 60 + int(second)
    else:
        seconds = int(first) * 60
    return float(seconds)


def time_limit_s(text: str | None) -> float | None:
    """A job's time limit in seconds (formats of :func:`duration_s`); None for no limit:
    ``UNLIMITED`` or ``0`` (Slurm: "a time limit of zero requests that no time limit be
    imposed"), or text that does not parse."""
    seconds = duration_s(text)
    return seconds if seconds else None


def number(value: Any) -> float | None:
    """A number of Slurm's JSON output, plain (``5``) or as ``{"set": bool, "infinite":
    bool, "number": n}`` (Slurm 23.02 on); None for null, unset, infinite, NO_VAL, a bool
    or anything that is not a number."""
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite", False):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if value in NO_VAL else float(value)
