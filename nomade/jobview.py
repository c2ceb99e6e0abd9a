"""``nomade job``'s text: a job report (``nomade.agent.jobreport``) as a terminal page.

Pure functions of the report dict (standard library only). Times are local time, with
the date when it is not the day of the report's ``now``. The risk chart is ``CHART_ROWS``
rows of eighth blocks (``#``-style ASCII when the terminal cannot show them), one column a
time slice holding the highest risk predicted in it, the level boundaries (0.3, 0.6,
0.8) on the axis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

CHART_ROWS = 5
BLOCKS = " ▁▂▃▄▅▆▇█"
ASCII_BLOCKS = " ..::--=#"


def clock(ts: float | None, now: float) -> str:
    """Local ``HH:MM``, with the date when ``ts`` is not on ``now``'s day; ``-`` if None."""
    if ts is None:
        return "-"
    day = time.strftime("%Y-%m-%d", time.localtime(ts))
    hm = time.strftime("%H:%M", time.localtime(ts))
    return hm if day == time.strftime("%Y-%m-%d", time.localtime(now)) else f"{day} {hm}"


def duration(s: float | None) -> str:
    """``2d 3h``, ``4h 05m``, ``12m``, ``40s``; ``-`` if None."""
    if s is None:
        return "-"
    s = int(round(s))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def size(n: float | None) -> str:
    """Bytes in binary units (``14.2 GiB``); ``-`` if None."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _pct(part: float | None, whole: float | None) -> str:
    return f" ({100 * part / whole:.0f}%)" if part is not None and whole else ""


def header(job: Mapping[str, Any]) -> list[str]:
    """Who, where, and the job's state with its times."""
    now, nodes = job["now"], job.get("nodes") or []
    shown = ",".join(nodes[:4]) + (f",+{len(nodes) - 4}" if len(nodes) > 4 else "")
    lines = [f"Job {job['job_id']}  user {job.get('user') or '-'}  partition "
             f"{job.get('partition') or '-'}  account {job.get('account') or '-'}  nodes "
             f"{shown or '-'}" + (f" ({job.get('num_nodes')})" if job.get("num_nodes") else "")]
    if job["running"]:
        state = f"RUNNING since {clock(job['start_ts'], now)}"
    elif job.get("end_ts") is not None:
        final = job.get("state") or "ended, final state not known yet"
        exit_code = "" if job.get("exit_code") is None else f", exit code {job['exit_code']}"
        state = f"{final} at {clock(job['end_ts'], now)}{exit_code}"
    else:
        state = "PENDING (not started)"
    lines.append(f"State   {state}")
    lines.append(f"Times   submitted {clock(job.get('submit_ts'), now)}  started "
                 f"{clock(job.get('start_ts'), now)}  ended {clock(job.get('end_ts'), now)}")
    return lines


def usage_table(job: Mapping[str, Any]) -> list[str]:
    """Request against use: CPUs, memory, time, GPUs, I/O (and memory events, if any)."""
    req, use, now = job["request"], job["usage"], job["now"]
    cpus = "-" if use.get("cpus_used") is None else \
        f"{use['cpus_used']:.1f} busy on average" + _pct(use["cpus_used"], req.get("cpus"))
    mem = "-" if use.get("mem_peak_bytes") is None else \
        f"peak {size(use['mem_peak_bytes'])}" + _pct(use["mem_peak_bytes"], req.get("mem_bytes"))
    if job["running"] and use.get("mem_now_bytes") is not None:
        mem += f", now {size(use['mem_now_bytes'])} (at {clock(use.get('mem_now_ts'), now)})"
    used = use.get("elapsed_s")
    limit = req.get("time_limit_s")
    when = f"{duration(used)} used" + _pct(used, limit)
    if use.get("time_left_s") is not None:
        when += f", {duration(use['time_left_s'])} left"
    io = ("-" if use.get("read_bytes") is None and use.get("write_bytes") is None else
          f"read {size(use.get('read_bytes'))}, written {size(use.get('write_bytes'))}"
          + (f" (to NFS {size(use['nfs_write_bytes'])})" if use.get("nfs_write_bytes") else ""))
    rows = [("", "requested", "used"),
            ("CPUs", _or_dash(req.get("cpus")), cpus),
            ("Memory", size(req.get("mem_bytes")), mem),
            ("Time", duration(limit), when),
            ("GPUs", _or_dash(req.get("gpus")), ""),
            ("I/O", "", io)]
    events = [f"{int(use[k])} {word}" for k, word in (("mem_limit_hits", "memory limit hits"),
                                                         ("oom_kills", "OOM kills")) if use.get(k)]
    if events:
        rows.append(("Events", "", ", ".join(events)))
    return [f"{a:<8}{b:<14}{c}".rstrip() for a, b, c in rows]


def _or_dash(x: Any) -> str:
    return "-" if x is None else str(x)


def chart(points: Sequence[Sequence[Any]], width: int, *, ascii_only: bool = False) -> list[str]:
    """``CHART_ROWS`` lines of bars, ``width`` columns over the points' time span, each
    the highest risk of its slice; a column with no point stays blank."""
    if not points:
        return []
    t0, t1 = points[0][0], points[-1][0]
    cols: list[float | None] = [None] * width
    for ts, risk, _ in points:
        k = 0 if t1 == t0 else min(width - 1, int((ts - t0) / (t1 - t0) * width))
        cols[k] = risk if cols[k] is None else max(risk, cols[k])
    blocks = ASCII_BLOCKS if ascii_only else BLOCKS
    lines = []
    for row in range(CHART_ROWS):
        low = (CHART_ROWS - 1 - row) / CHART_ROWS
        least = 1 if row == CHART_ROWS - 1 else 0   # a risk of 0 still shows on the floor
        cells = "".join(" " if v is None else
                        blocks[max(least, min(8, math.ceil((v - low) * CHART_ROWS * 8 - 1e-9)))]
                        for v in cols)
        top = (CHART_ROWS - row) / CHART_ROWS
        lines.append(f" {top:.1f} |{cells}")
    lines.append("     +" + "-" * width)
    return lines


def risk_section(job: Mapping[str, Any], width: int, ascii_only: bool) -> list[str]:
    """The chart with its head (count, max, last) and time axis."""
    risk, now = job["risk"], job["now"]
    if not risk["n"]:
        return ["Risk    no predictions"]
    head = (f"Risk    {risk['n']} predictions; highest {risk['max']:.2f} at "
            f"{clock(risk['max_ts'], now)}; {'now' if job['running'] else 'last'} "
            f"{risk['last']:.2f} {risk['last_level']}")
    points = risk["points"]
    cols = max(10, width - 7)
    start, end = clock(points[0][0], now), clock(points[-1][0], now)
    axis = "      " + start + " " * max(1, cols - len(start) - len(end)) + end
    return [head, *chart(points, cols, ascii_only=ascii_only), axis,
            "        (low < 0.3 <= moderate < 0.6 <= high < 0.8 <= critical)"]


def levels_section(job: Mapping[str, Any]) -> list[str]:
    """When each level was first reached, then each change."""
    levels, now = job["levels"], job["now"]
    if not levels["first"]:
        return []
    firsts = ", ".join(f"{lvl} {clock(ts, now)}" for lvl, ts in
                       sorted(levels["first"].items(), key=lambda kv: kv[1]))
    lines = [f"Levels  first reached: {firsts}"]
    for c in levels["changes"]:
        lines.append(f"        {clock(c['ts'], now)}  {c['from']} -> {c['to']} ({c['risk']:.2f})")
    more = levels["n_changes"] - len(levels["changes"])
    if more > 0:
        lines.append(f"        ... and {more} more changes")
    return lines


def advice_section(job: Mapping[str, Any]) -> list[str]:
    """The Comment texts NØMADE wrote, oldest first."""
    if not job["advice"]:
        return ["Advice  none written (the risk never stayed above the alert threshold)"]
    lines = ["Advice  written to the job's Comment:"]
    for a in job["advice"]:
        lines.append(f"        {clock(a['ts'], job['now'])}  {a['text']}")
    return lines


def render(job: Mapping[str, Any], width: int = 80, ascii_only: bool = False) -> str:
    """The whole page."""
    parts = [header(job), usage_table(job), risk_section(job, min(width, 100), ascii_only),
             levels_section(job), advice_section(job),
             [f"Note    {n}" for n in job.get("notes") or ()]]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


__all__ = ["ASCII_BLOCKS", "BLOCKS", "CHART_ROWS", "chart", "clock", "duration", "render", "size"]
