"""A job's end summary as it is kept in Slurm's accounting (AdminComment): format, parse, merge.

Pure string and arithmetic functions (no Slurm, no store); ``nomade.agent.summaries``
writes the text, ``nomade job`` and the tests read it back with :func:`parse`. A
summary of version 1 is one line of printable ASCII, for example::

    nomade/1 state=FAILED maxrisk=0.91@2026-12-04T14:03:20Z level=critical
    crossed=moderate@2026-12-04T13:50:00Z,high@2026-12-04T13:58:30Z,critical@2026-12-04T14:03:20Z
    eff_cpu=0.35 mem_peak=0.94 time=0.50 advice=[Memory use near its limit (94%): ...]

(on one line; wrapped here). Grammar: the tag ``nomade/<version>``, then space-separated
``key=value`` fields in this order, every key always present, ``-`` for unknown:

* ``state``: the job's final Slurm state (``COMPLETED``, ``TIMEOUT`` ...).
* ``maxrisk``: the highest predicted failure risk (0-1, two decimals) and when, ``R@TIME``.
* ``level``: the level of that prediction (``low`` .. ``critical``).
* ``crossed``: each level above ``low`` the job reached, with the first time, comma-separated.
* ``eff_cpu``: CPU time over allocated CPUs x elapsed time (can exceed 1 with hyper-threads).
* ``mem_peak``: the highest memory peak over the memory limit, of the job's nodes.
* ``time``: elapsed time over the time limit.
* ``advice``: last, in square brackets: the advice of the highest-risk prediction, or ``-``.
  Printable ASCII without quotes, backslashes, brackets or ``|``: ``sacctmgr`` turns
  quotes into backticks, and ``sacct --parsable2`` separates fields with ``|``.

Times are UTC, ISO 8601 to the second with ``Z``. A reader ignores keys it does not know
(a later minor addition); a new major version changes the tag. The whole AdminComment
stays within ``MAX_BYTES`` (Slurm's limit on a job's comment strings): text of other
tools in the AdminComment is kept, before NØMADE's summary, and the advice is shortened
(ending in ``~``) when the two would not fit.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nomade.errors import NomadeError
from nomade.wire import LEVELS

#: The summary format's version (the tag is ``nomade/<VERSION>``).
VERSION = 1
TAG = f"nomade/{VERSION}"
#: Slurm's limit on a job's comment strings, in bytes (the whole AdminComment).
MAX_BYTES = 1024
#: Longest advice written (characters); shorter when the AdminComment holds other text.
MAX_ADVICE = 300
#: Keys of version 1, in the order they are written.
KEYS: tuple[str, ...] = ("state", "maxrisk", "level", "crossed", "eff_cpu", "mem_peak", "time", "advice")
UNKNOWN = "-"
_TRUNCATED = "~"
_TAG_RE = re.compile(r"(?:^|(?<=\s))nomade/(\d+)(?=\s|$)")
_FIELD_RE = re.compile(r" ([a-z_]+)=(\[[^\[\]]*\]|[^\s\[\]]+)")
_ADVICE_SAFE = str.maketrans({"[": "(", "]": ")", "|": "/", "\\": "/", '"': None, "'": None, "`": None})
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class SummaryError(NomadeError, ValueError):
    """A summary that cannot be read: an unknown version or a malformed field (named)."""


@dataclass(frozen=True)
class Summary:
    """What NØMADE says of a job that ended (None: unknown); see the module doc."""

    state: str | None = None
    max_risk: float | None = None
    max_risk_ts: float | None = None
    level: str | None = None
    crossed: tuple[tuple[str, float], ...] = ()
    eff_cpu: float | None = None
    mem_peak: float | None = None
    time_used: float | None = None
    advice: str | None = None


# ------------------------------------------------------------------ writing

def _time(ts: float) -> str:
    return time.strftime(_TIME_FORMAT, time.gmtime(ts))


def _ratio(x: float | None) -> str:
    return UNKNOWN if x is None or not math.isfinite(x) else f"{max(x, 0.0):.2f}"


def _word(text: str | None) -> str:
    """A value without spaces, quotes or separators (Slurm states, levels), or ``-``."""
    cleaned = "".join(c for c in (text or "") if "!" <= c <= "~" and c not in "\"'`[]|=,@\\")
    return cleaned or UNKNOWN


def clean_advice(text: str) -> str:
    """``text`` as printable ASCII without quotes, backslashes, brackets or ``|`` (module
    doc), spaces collapsed."""
    text = text.translate(_ADVICE_SAFE)
    return " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())


def format_summary(s: Summary, max_advice: int = MAX_ADVICE) -> str:
    """The one-line text of ``s`` with its advice cut to ``max_advice`` characters
    (ending in ``~``; none at all below 8)."""
    risk = UNKNOWN
    if s.max_risk is not None and s.max_risk_ts is not None:
        risk = f"{s.max_risk:.2f}@{_time(s.max_risk_ts)}"
    crossed = ",".join(f"{_word(level)}@{_time(ts)}" for level, ts in s.crossed) or UNKNOWN
    advice = clean_advice(s.advice or "")
    if len(advice) > max_advice:
        advice = advice[:max(max_advice - len(_TRUNCATED), 0)].rstrip() + _TRUNCATED
    quoted = f"[{advice}]" if advice and max_advice >= 8 else UNKNOWN
    values = (_word(s.state), risk, _word(s.level), crossed, _ratio(s.eff_cpu), _ratio(s.mem_peak),
              _ratio(s.time_used), quoted)
    # lower case: sacctmgr, the write path of a finished job, stores it so; both paths then agree
    return " ".join([TAG, *(f"{k}={v}" for k, v in zip(KEYS, values, strict=True))]).lower()


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def merge(existing: str, s: Summary) -> str | None:
    """The AdminComment ``existing`` with NØMADE's summary set to ``s``: other text kept
    (before it), any earlier NØMADE summary replaced, the advice shortened to fit in
    ``MAX_BYTES``; None when the other text leaves no room even without advice.
    Idempotent: merging the same summary into the result gives the result."""
    other = remove(existing)
    prefix = f"{other} " if other else ""
    room = MAX_BYTES - _nbytes(prefix)
    text = format_summary(s)
    if len(text) > room:   # the text is ASCII: characters are bytes
        advice = min(len(clean_advice(s.advice or "")), MAX_ADVICE)
        text = format_summary(s, advice - (len(text) - room))
    return prefix + text if len(text) <= room else None


# ------------------------------------------------------------------ reading

def _span(text: str) -> tuple[int, int, int] | None:
    """(start, end, version) of the last NØMADE summary in ``text``: from its tag to the
    end of its last ``key=value`` field; None without a tag."""
    tags = list(_TAG_RE.finditer(text))
    if not tags:
        return None
    tag = tags[-1]
    end = tag.end()
    while (field := _FIELD_RE.match(text, end)) is not None:
        end = field.end()
    return tag.start(), end, int(tag.group(1))


def remove(existing: str) -> str:
    """``existing`` without NØMADE's summaries (the other tools' text), spaces trimmed."""
    while (span := _span(existing)) is not None:
        existing = f"{existing[:span[0]].rstrip()} {existing[span[1]:].lstrip()}".strip()
    return existing.strip()


def parse(text: str) -> Summary | None:
    """The NØMADE summary in ``text`` (an AdminComment, which may hold other text), or
    None when it has none. SummaryError for an unknown version or a malformed field."""
    span = _span(text)
    if span is None:
        return None
    start, end, version = span
    if version != VERSION:
        raise SummaryError(f"nomade/{version}: summary version {version} is not known to this "
                           f"nomade (it reads version {VERSION})")
    fields = {m.group(1): m.group(2) for m in _FIELD_RE.finditer(text, start, end)}
    return _summary(fields)


def _summary(fields: Mapping[str, str]) -> Summary:
    def get(key: str) -> str | None:
        value = fields.get(key, UNKNOWN)
        return None if value == UNKNOWN else value

    risk, risk_ts = None, None
    if (raw := get("maxrisk")) is not None:
        value, _, when = raw.partition("@")
        risk, risk_ts = _float("maxrisk", value), _parse_time("maxrisk", when)
    crossed = []
    for item in (get("crossed") or "").split(","):
        if item:
            name, _, when = item.partition("@")
            crossed.append((_level("crossed", name), _parse_time("crossed", when)))
    advice = get("advice")
    if advice is not None:
        if len(advice) < 2 or not (advice[0] == "[" and advice[-1] == "]"):
            raise SummaryError(f"advice={advice}: expected text in square brackets or -")
        advice = advice[1:-1]
    level = get("level")
    return Summary(
        state=None if (state := get("state")) is None else state.upper(), max_risk=risk, max_risk_ts=risk_ts,
        level=None if level is None else _level("level", level), crossed=tuple(crossed),
        eff_cpu=_opt_float(fields, "eff_cpu"), mem_peak=_opt_float(fields, "mem_peak"),
        time_used=_opt_float(fields, "time"), advice=advice)


def _float(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SummaryError(f"{key}={text}: expected a number") from None
    if not math.isfinite(value) or value < 0:
        raise SummaryError(f"{key}={text}: expected a finite number >= 0")
    return value


def _opt_float(fields: Mapping[str, str], key: str) -> float | None:
    value = fields.get(key, UNKNOWN)
    return None if value == UNKNOWN else _float(key, value)


def _parse_time(key: str, text: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(text.upper(), _TIME_FORMAT)))
    except ValueError:
        raise SummaryError(f"{key}: time {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from None


def _level(key: str, text: str) -> str:
    if text not in LEVELS:
        raise SummaryError(f"{key}: level {text!r} is not one of {', '.join(LEVELS)}")
    return text


# ------------------------------------------------------------------ use of the resources

def usage(job: Any, samples: Sequence[Sequence[Any]], fields: Sequence[str]) -> tuple[
        float | None, float | None, float | None]:
    """(CPU efficiency, memory peak over limit, elapsed over time limit) of an ended job.

    ``job`` has ``start_ts``, ``end_ts``, ``req_cpus``, ``req_mem_bytes``, ``num_nodes``
    and ``time_limit_s`` (a ``nomade.store.Job``); ``samples`` are its last job samples
    as tuples in ``fields`` order (time order), at least each node's last. Counters in a
    sample are cumulative from the job's start, so each node's last sample holds its
    CPU time and its peak. None where a figure is unknown."""
    at = {name: k for k, name in enumerate(fields)}
    last: dict[Any, Sequence[Any]] = {}
    for row in samples:
        last[row[at["node"]]] = row
    elapsed = None
    if job.start_ts is not None and job.end_ts is not None and job.end_ts > job.start_ts:
        elapsed = job.end_ts - job.start_ts
    time_used = elapsed / job.time_limit_s if elapsed and job.time_limit_s else None
    return _cpu_eff(job, list(last.values()), at, elapsed), _mem_peak(job, list(last.values()), at), time_used


def _cpu_eff(job: Any, rows: list[Sequence[Any]], at: Mapping[str, int],
             elapsed: float | None) -> float | None:
    seconds = [r[at["cpu_user_s"]] for r in rows if r[at["cpu_user_s"]] is not None]
    if not seconds or not elapsed:
        return None
    used = sum(seconds) + sum(r[at["cpu_system_s"]] or 0.0 for r in rows)
    alloc = [r[at["alloc_cpus"]] for r in rows]
    cpus = sum(alloc) if all(a for a in alloc) else job.req_cpus
    return used / (cpus * elapsed) if cpus else None


def _mem_peak(job: Any, rows: list[Sequence[Any]], at: Mapping[str, int]) -> float | None:
    per_node = job.req_mem_bytes / max(job.num_nodes or 1, 1) if job.req_mem_bytes else None
    fractions = []
    for r in rows:
        peak = r[at["mem_peak_bytes"]] if r[at["mem_peak_bytes"]] is not None else r[at["mem_bytes"]]
        limit = r[at["mem_limit_bytes"]] or per_node
        if peak is not None and limit:
            fractions.append(peak / limit)
    return max(fractions) if fractions else None


__all__ = ["KEYS", "MAX_BYTES", "TAG", "VERSION", "Summary", "SummaryError", "clean_advice",
           "format_summary", "merge", "parse", "remove", "usage"]
