"""Advice text for a job's Comment from its strongest contributing factors (pure, stdlib only).

The scorer (``nomade.ml.inference.Scores.factors``) names the features that raise a job's
risk most, with the job's raw value and the median of completed jobs of the same shape
(``normal``). This module turns them into short, printable advice, one rule per feature
family, for example::

    risk high 0.74 at 14:32: High NFS write ratio (0.89), 3x normal: consider local
    scratch: export TMPDIR=/scratch/$USER; Low CPU efficiency (23%), normal 78%: request
    fewer cores

A factor is cited only when its phrase is true of the job (:func:`cited`): its
contribution raises the risk (> 0; None means a factor already cited, read back from a
``prediction``), and the direction its phrase states matches the value against normal.
A model may well raise a job's risk for a value *below* normal (few failures, little
memory); "failed often" or "request more memory" would then be false advice, so such a
factor is left out rather than worded wrongly. Phrases that only state a high value
(memory, I/O, NFS, time, pressure, history) need value > normal; CPU efficiency and its
change say "high"/"low", "rose"/"dropped" as the value is; the request is "unusual"
either way.

Families: memory (use, peak, growth), CPU efficiency, NFS share, I/O (wait/pressure and
read/write rates), disk (how full the filesystem written to is, and filling), time limit
(elapsed near the limit, progress slow), memory pressure / swap, user history, and the
request itself. Several features of one family make one phrase; families come in the
order of their strongest contribution. Values come from the model inputs, never from
fixed strings; "how far from normal" is the ratio of the value to the reference in
display units (``3x normal`` at >= 1.5x, ``normal N`` at <= 1/1.5x).

Output is printable ASCII without ``[``, ``]`` or ``|`` (``nomade.agent.comment_segment`` reserves
them) and is kept within ``max_chars`` by dropping whole factors, never cutting one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Default budget of a segment's text; the whole Comment holds 1024 bytes with the user's.
MAX_CHARS = 400
#: Most families named in one segment.
MAX_FACTORS = 3
#: A value at least this many times (or at most 1/this) its normal is called out.
FAR = 1.5
#: Families known at a job's start: cited after the runtime evidence (``factor_phrases``).
START_FAMILIES = frozenset({"request", "history"})
#: Least share of the strongest runtime factor's contribution a start-time factor needs
#: to be cited beside runtime evidence.
START_SHARE = 0.5
#: Feature family of each feature (``nomade.features.FEATURES``).
FAMILY: dict[str, str] = {
    "log_req_cpus": "request", "log_req_mem_mb": "request", "log_req_gpus": "request",
    "log_time_limit_min": "request",
    "user_fail_rate": "history", "user_last_failed": "history",
    "elapsed_frac": "time",
    "cpu_eff": "cpu", "cpu_eff_change": "cpu",
    "mem_frac": "memory", "mem_peak_frac": "memory", "mem_growth_frac_h": "memory",
    "log_read_mbps": "io", "log_write_mbps": "io", "io_pressure": "io",
    "nfs_write_share": "nfs",
    "mem_pressure": "pressure",
    "log_fs_full_h": "disk", "fs_fill_frac_h": "disk",
}
# Features stored as log1p(x): displayed and compared as x.
_LOG1P = frozenset({"log_req_cpus", "log_req_mem_mb", "log_req_gpus", "log_time_limit_min",
                    "log_read_mbps", "log_write_mbps", "log_fs_full_h"})
_SAFE = str.maketrans({"[": "(", "]": ")", "|": "/"})
#: Features whose phrase says the value is high: cited only above normal (where known).
_ABOVE_NORMAL = frozenset({
    "mem_frac", "mem_peak_frac", "mem_growth_frac_h", "log_read_mbps", "log_write_mbps",
    "io_pressure", "nfs_write_share", "mem_pressure", "elapsed_frac", "user_fail_rate",
    "user_last_failed", "fs_fill_frac_h"})
#: Features whose phrase says the value is low ("full in about 3min"): cited only at most
#: ``_AT_MOST`` (display units) and below normal (where known).
_BELOW_NORMAL = frozenset({"log_fs_full_h"})
_AT_MOST = {"log_fs_full_h": 12.0}
#: Least value (display units) each of these phrases needs to be true: "growing", "failed",
#: "your last job failed", and "high" rates. Above a normal of 0, any trickle is "above
#: normal": a job reading 0.004 MB/s beside completed jobs that read nothing was told
#: "High read rate (0.00 MB/s)" (nomade.tools.demo).
_AT_LEAST = {"mem_growth_frac_h": 1e-9, "user_fail_rate": 1e-9, "user_last_failed": 0.5,
             "log_read_mbps": 1.0, "log_write_mbps": 1.0, "io_pressure": 0.05, "nfs_write_share": 0.1,
             "fs_fill_frac_h": 1e-9}

#: Least CPU efficiency change (a share of the CPUs) that "rose" / "dropped N points" may
#: cite: a job of the demo at 0.4 % of its CPU was told "CPU use dropped 0 points".
_MIN_CPU_CHANGE = 0.01


@dataclass(frozen=True)
class Factor:
    """One contributing feature of one job: raw ``value`` and reference ``normal`` (the
    feature's own units, e.g. log1p for ``log_*``; None unknown) and ``contribution``
    (risk points it adds; factors are ranked by it; None: unknown, for a factor read
    back from a ``prediction``, which was cited when it was made)."""

    name: str
    value: float | None
    normal: float | None = None
    contribution: float | None = None
    text: str | None = None
    """The family's phrase as it was made with the job's values (a ``prediction``'s
    factor): used as it is, not made again without them."""

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Factor:
        """From a ``Scores.factors`` dict (name, value, normal, contribution; extra keys
        ignored). ``ValueError`` for an unknown feature name."""
        name = str(raw["name"])
        if name not in FAMILY:
            raise ValueError(f"unknown feature {name!r}; expected one of {sorted(FAMILY)}")
        return cls(name, _finite(raw.get("value")), _finite(raw.get("normal")),
                   _finite(raw.get("contribution")))

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Factor:
        """From a ``prediction`` message's factor as :func:`wire_factors` makes it (value
        and normal in display units), in the order given (contribution unknown)."""
        name = str(raw["name"])
        if name not in FAMILY:
            raise ValueError(f"unknown feature {name!r}; expected one of {sorted(FAMILY)}")
        text = raw.get("text")
        return cls(name, _raw(name, _finite(raw.get("value"))), _raw(name, _finite(raw.get("normal"))),
                   text=_safe(str(text)) if text else None)

    @property
    def shown(self) -> float | None:
        """The value in display units (log1p features undone)."""
        return _display(self.name, self.value)

    @property
    def shown_normal(self) -> float | None:
        """The reference in display units."""
        return _display(self.name, self.normal)

    @property
    def ratio(self) -> float | None:
        """value / normal in display units; None when either is unknown, or the value is
        negative or normal not positive (a ratio of changes means nothing)."""
        v, n = self.shown, self.shown_normal
        if v is None or n is None or v < 0 or n <= 0:
            return None
        return v / n


def cited(f: Factor) -> bool:
    """Whether ``f`` may be cited as a reason for the risk: its value is known, it raises
    the risk (contribution > 0, or None for one already cited), and its phrase's
    direction is true of the value against normal (module doc)."""
    v, n = f.shown, f.shown_normal
    if v is None or (f.contribution is not None and not f.contribution > 0):
        return False
    if f.name in _ABOVE_NORMAL:
        return v >= _AT_LEAST.get(f.name, -math.inf) and (n is None or v > n)
    if f.name in _BELOW_NORMAL:
        return v <= _AT_MOST[f.name] and (n is None or v < n)
    if f.name == "cpu_eff_change":   # "rose" / "dropped": the change, and more than normal
        return abs(v) >= _MIN_CPU_CHANGE and (n is None or (v > n if v > 0 else v < n))
    return True


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _raw(name: str, x: float | None) -> float | None:
    """Display units back to the feature's own (log1p where it has it)."""
    if x is None:
        return None
    return math.log1p(x) if name in _LOG1P and x > -1 else x


def _display(name: str, x: float | None) -> float | None:
    if x is None:
        return None
    return math.expm1(x) if name in _LOG1P else x


# ------------------------------------------------------------------ value formatting

def pct(x: float) -> str:
    """A fraction as a whole percentage: ``0.234 -> '23%'``."""
    return f"{x * 100:.0f}%"


def num(x: float) -> str:
    """A compact number: 2 decimals below 1, 1 below 10, else whole (``0.89``, ``2.3``, ``42``)."""
    a = abs(x)
    if a < 1:
        return f"{x:.2f}"
    if a < 10:
        return f"{x:.1f}"
    return f"{x:.0f}"


def far(f: Factor, fmt: Callable[[float], str] = num) -> str:
    """How far ``f`` is from normal: ``', 3x normal'``, ``', normal 78%'`` or ``''``."""
    r, n = f.ratio, f.shown_normal
    if r is not None and r >= FAR:
        return f", {r:.0f}x normal" if r >= 10 else f", {r:.1f}x normal".replace(".0x", "x")
    if n is not None and f.shown is not None and (r is None or r <= 1 / FAR) and f.shown < n:
        return f", normal {fmt(n)}"
    return ""


def _duration_min(minutes: float) -> str:
    if minutes >= 48 * 60:
        return f"{minutes / 1440:.0f}d"
    if minutes >= 120:
        return f"{minutes / 60:.0f}h"
    return f"{minutes:.0f}min"


# ------------------------------------------------------------------ one rule per family
# Each rule gets the family's factors (strongest first) and every known raw value of the
# job by feature name, and returns one phrase.

def _memory(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    by = {f.name: f for f in fs}
    growth = values.get("mem_growth_frac_h")
    growing = growth is not None and growth > 0.01
    level = by.get("mem_frac") or by.get("mem_peak_frac")
    limit_mb = _display("log_req_mem_mb", values.get("log_req_mem_mb"))
    if limit_mb and limit_mb > 0 and (level is None or level.name == "mem_frac" or growing):
        return _memory_of_mem(by, values, limit_mb, growth if growing else None)
    if level is not None and level.shown is not None:
        what = "Memory" if level.name == "mem_frac" else "Peak memory"
        now = level.shown if level.name == "mem_frac" else values.get("mem_frac")
        trend = _growth(growth, now, "growing ") if growing and growth is not None else ""
        return (f"{what} at {pct(level.shown)} of the request{far(level, pct)}{trend}: "
                "request more memory (--mem)")
    g = by["mem_growth_frac_h"]
    now = values.get("mem_frac")
    rate = g.shown or 0.0
    at = f" (now {pct(now)} of the request)" if now is not None else ""
    head = (f"Memory growing fast{at}" if rate >= 1 else
            f"Memory growing {pct(rate)} of the request per hour{at}{far(g, pct)}")
    return f"{head}{_eta(rate, now)}: request more memory or check for a leak"


def _memory_of_mem(by: Mapping[str, Factor], values: Mapping[str, float], limit_mb: float,
                   growth: float | None) -> str:
    """``'Memory at 85% of --mem, growing about 12 MB/min, at the limit in about 3 min'``:
    the job's own units, from its request (``--mem``)."""
    now = values.get("mem_frac")
    level = by.get("mem_frac")
    head = "Memory" if now is None else f"Memory at {pct(now)} of --mem{far(level, pct) if level else ''}"
    if growth is None:
        return f"{head}: request more memory (--mem)"
    rate = growth * limit_mb / 60.0
    trend = f"growing about {num(rate)} MB/min"
    eta = f", at the limit in {until}" if (until := _until_full(now, growth)) else ""
    return f"{head}, {trend}{eta}: request more memory (--mem) or check for a leak"


def _until_full(now: float | None, growth_h: float) -> str | None:
    """``'about 3min'`` / ``'under a minute'`` until a share ``now`` growing by ``growth_h``
    of the whole an hour reaches it all; None when unknown or not below it."""
    if now is None or not 0 <= now < 1 or not growth_h > 0:
        return None
    return _in_about((1 - now) / growth_h * 60)


def _in_about(minutes: float) -> str:
    """``'about 3min'``, or ``'under a minute'``."""
    return "under a minute" if minutes < 1 else "about " + _duration_min(minutes)


def _time_left(values: Mapping[str, float]) -> str | None:
    """``'2min'`` of the time limit left, from the limit and the elapsed share; None unknown."""
    limit = _display("log_time_limit_min", values.get("log_time_limit_min"))
    frac = values.get("elapsed_frac")
    if limit is None or frac is None or not limit > 0:
        return None
    left = max(0.0, (1.0 - frac) * limit)
    return "under a minute" if left < 1 else _duration_min(left)


def _idle(values: Mapping[str, float]) -> str | None:
    """``'CPU idle for 6 min, 2min of the time limit left'`` when the job's CPU has been
    idle (``cpu_idle_min``, from its sequence) a minute or more; else None."""
    idle = values.get("cpu_idle_min")
    if idle is None or idle < 1:
        return None
    left = _time_left(values)
    return f"CPU idle for {idle:.0f} min" + (f", {left} of the time limit left" if left else "")


def _growth(growth: float, now: float | None, word: str) -> str:
    """``', growing 12%/h, at the limit in ~35min'``; "fast" from 100 %/h, where a
    per-hour figure of a minutes-long job (9,624 %/h) says less than the time left."""
    rate = "fast" if growth >= 1 else f"{pct(growth)}/h"
    return f", {word}{rate}{_eta(growth, now)}"


def _eta(growth: float, now: float | None) -> str:
    """``', at the limit in ~35min'`` at this growth (fraction of the request an hour)
    from ``now`` (fraction used); '' when either is unknown or the limit is reached."""
    if now is None or not 0 <= now < 1 or not growth > 0:
        return ""
    minutes = (1 - now) / growth * 60
    return f", at the limit in {'under a minute' if minutes < 1 else '~' + _duration_min(minutes)}"


def _cpu(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    f = fs[0]
    v = f.shown or 0.0
    idle = _idle(values)
    if idle is not None and (v < 0 if f.name == "cpu_eff_change" else v < 0.5):
        return f"{idle}: check the job is not stalled"
    if f.name == "cpu_eff_change":
        eff = values.get("cpu_eff")
        now = f" to {pct(eff)}" if eff is not None else ""
        if v < 0:
            return f"CPU use dropped {-v * 100:.0f} points recently{now}: check the job is not stalled"
        return f"CPU use rose {v * 100:.0f} points recently{now}: check for oversubscribed threads"
    normal = f.shown_normal
    if normal is not None and v > normal:
        return (f"High CPU efficiency ({pct(v)}){far(f, pct)}: check threads match the cores "
                "(OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK)")
    return f"Low CPU efficiency ({pct(v)}){far(f, pct)}: request fewer cores"


def _nfs(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    f = fs[0]
    return (f"High NFS write ratio ({num(f.shown or 0.0)}){far(f)}: consider local scratch: "
            "export TMPDIR=/scratch/$USER")


def _io(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    f = fs[0]
    v = f.shown or 0.0
    if f.name == "io_pressure":
        return (f"High I/O wait ({pct(v)}){far(f, pct)}: read/write less often, "
                "in larger blocks, or on local scratch")
    what = "read" if f.name == "log_read_mbps" else "write"
    return (f"High {what} rate ({num(v)} MB/s){far(f)}: {what} less often or in larger "
            "blocks, or use local scratch")


def _time(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    f = fs[0]
    idle = _idle(values)
    if idle is not None:
        return f"{idle}: check the job is not stuck, or request more time (--time)"
    left = _time_left(values)
    eff = values.get("cpu_eff")
    slow = f", progress slow (CPU {pct(eff)})" if eff is not None and eff < 0.5 else ""
    left = f" ({left} left)" if (left := _time_left(values)) is not None else ""
    return (f"At {pct(f.shown or 0.0)} of the time limit{left}{slow}: request more time (--time) "
            "or checkpoint")


def _disk(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    """``'Filesystem written to filling about 1% a minute, full in about 3min'``."""
    hours = _display("log_fs_full_h", values.get("log_fs_full_h"))
    growth = values.get("fs_fill_frac_h")
    if hours is not None and hours <= 0:
        head = "Filesystem written to is full"
    else:
        head = "Filesystem written to filling"
        if growth is not None and growth > 0:
            head += f" about {growth * 100 / 60:.2g}% a minute"
        if hours is not None:
            head += f", full in {_in_about(hours * 60)}"
    return f"{head}: free space there or write elsewhere (df shows it)"


def _pressure(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    f = fs[0]
    return (f"Memory pressure (faults/swap {num(f.shown or 0.0)}){far(f)}: "
            "request more memory to stop swapping")


def _history(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    by = {f.name: f for f in fs}
    rate = by.get("user_fail_rate")
    last = values.get("user_last_failed")
    if rate is not None and rate.shown is not None:
        also = ", the last one too" if last is not None and last >= 0.5 else ""
        return (f"Your recent jobs failed often ({pct(rate.shown)}{also}){far(rate, pct)}: "
                "check the last failed job's output")
    return "Your last job failed: check its output before resubmitting"


def _request(fs: Sequence[Factor], values: Mapping[str, float]) -> str:
    f = fs[0]
    v = f.shown or 0.0
    shown = {"log_req_cpus": f"{v:.0f} CPUs", "log_req_mem_mb": f"{num(v / 1024)} GB memory",
             "log_req_gpus": f"{v:.0f} GPUs", "log_time_limit_min": f"{_duration_min(v)} limit"}
    return f"Unusual request ({shown[f.name]}){far(f)}: check it fits the job"


_RULES: dict[str, Callable[[Sequence[Factor], Mapping[str, float]], str]] = {
    "memory": _memory, "cpu": _cpu, "nfs": _nfs, "io": _io, "time": _time,
    "pressure": _pressure, "history": _history, "request": _request, "disk": _disk,
}


# ------------------------------------------------------------------ public API

def factor_phrases(factors: Iterable[Factor | Mapping[str, Any]],
                   values: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """(family, phrase) for each family among the ``cited`` ``factors``, strongest
    contribution first (factors of unknown contribution first, in the order given).

    ``values`` maps feature names to the job's known raw values (context such as "and
    growing"); the factors' own values are added to it.
    """
    given = [f if isinstance(f, Factor) else Factor.of(f) for f in factors]
    known = {k: float(v) for k, v in (values or {}).items() if _finite(v) is not None}
    known.update({f.name: f.value for f in given if f.value is not None})
    families: dict[str, list[Factor]] = {}
    for f in _ranked(given):
        families.setdefault(FAMILY[f.name], []).append(f)
    out, said = [], set()
    for fam, group in families.items():
        phrase = group[0].text or _safe(_RULES[fam](group, known))
        claim = phrase.split(": ", 1)[0]   # two families may state one fact ("CPU idle for 6 min")
        if claim not in said:
            said.add(claim)
            out.append((fam, phrase))
    return out


def _ranked(given: Iterable[Factor]) -> list[Factor]:
    """The ``cited`` factors, strongest first (unknown contribution first, in the order
    given), with the runtime evidence ahead of the request and the user's history; of
    those start-time factors, only the ones that raise the risk at least
    ``START_SHARE`` as much as the strongest runtime factor stay."""
    fs = sorted(filter(cited, given), key=lambda f: -math.inf if f.contribution is None else -f.contribution)
    runtime = [f for f in fs if FAMILY[f.name] not in START_FAMILIES]
    if not runtime:
        return fs
    top = runtime[0].contribution
    start = [f for f in fs if FAMILY[f.name] in START_FAMILIES
             and (top is None or f.contribution is None or f.contribution >= START_SHARE * top)]
    return runtime + start


def wire_factors(factors: Iterable[Factor | Mapping[str, Any]],
                 values: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """The ``prediction`` message's factors: one ``{name, value, normal, ratio, text}`` per
    ``cited`` input factor (value and normal in display units, text its family's phrase,
    made with the job's ``values``), in the order of the phrases (``factor_phrases``:
    runtime evidence first), within a family in the order given. A factor that raises
    the risk with a value on the other side of normal than its phrase says is left out,
    and so is a start-time factor that runtime evidence outweighs."""
    fs = [f if isinstance(f, Factor) else Factor.of(f) for f in factors]
    phrases = dict(factor_phrases(fs, values))
    rank = {fam: k for k, fam in enumerate(phrases)}
    fs = sorted((f for f in _ranked(fs) if FAMILY[f.name] in rank), key=lambda f: rank[FAMILY[f.name]])
    return [{"name": f.name, "value": _short(f.shown), "normal": _short(f.shown_normal),
             "ratio": _short(f.ratio), "text": phrases[FAMILY[f.name]]} for f in fs]


def _short(x: float | None) -> float | None:
    """``x`` to 6 significant digits (no float noise such as 120.00000000000003)."""
    return None if x is None else float(f"{x:.6g}")


def segment_text(risk: float, level: str, factors: Iterable[Factor | Mapping[str, Any]],
                 ts: float, values: Mapping[str, float] | None = None, *,
                 max_factors: int = MAX_FACTORS, max_chars: int = MAX_CHARS) -> str:
    """NØMADE's Comment segment text: ``risk LEVEL R at HH:MM: phrase; phrase``.

    At most ``max_factors`` families, and whole phrases only while the text stays within
    ``max_chars`` (the head alone is always returned). ``ts`` is shown in local time.
    """
    head = f"risk {level} {risk:.2f} at {clock(ts)}"
    text = head
    sep = ": "
    for _, phrase in factor_phrases(factors, values)[:max_factors]:
        if len(text) + len(sep) + len(phrase) > max_chars:
            break
        text, sep = f"{text}{sep}{phrase}", "; "
    return text


FELL_PREFIX = "risk fell below the alert threshold: "
"""How ``fell_text`` begins (the agent recognises its own mark by it after a restart)."""


def fell_text(level: str, risk: float, ts: float, was: str) -> str:
    """The mark left once the risk falls below the alert threshold:
    ``risk fell below the alert threshold: low 0.21 at 14:50 (was high)``. It says
    "threshold", not just the level: a risk that falls from critical to 0.61 is still
    "high" by level but no longer alerting ("risk fell to high" read as a rise)."""
    return f"{FELL_PREFIX}{level} {risk:.2f} at {clock(ts)} (was {was})"


def clock(ts: float) -> str:
    """``HH:MM`` of a POSIX time in local time."""
    return time.strftime("%H:%M", time.localtime(ts))


def _safe(text: str) -> str:
    """Printable ASCII without the Comment's marker characters, spaces collapsed."""
    text = text.translate(_SAFE)
    if not (text.isascii() and text.isprintable()):  # printable ASCII: " " to "~" only
        text = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(text.split())


__all__ = ["FAMILY", "Factor", "MAX_CHARS", "MAX_FACTORS", "cited", "clock", "factor_phrases",
           "fell_text", "segment_text", "wire_factors"]
