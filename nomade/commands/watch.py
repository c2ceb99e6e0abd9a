"""``nomade watch``: a live terminal table of running jobs by risk, from the agent's stream.

Example (``nomade watch --once``; on a terminal the level is coloured and the table is
redrawn in place every second)::

    NOMADE watch  tcp://127.0.0.1:5556  14:32:05  3 jobs, 2 at high or above
    JOB     USER   PARTITION NODES   RISK LEVEL    T FACTORS
    4711    alice  cpu       cn01    0.91 critical ^ mem 0.93 2.3x, nfs share 0.89 3x
    4712    bob    gpu       gn02+1  0.74 high     = cpu eff 0.23
    4690    carol  cpu       cn07    0.12 low      v

T is the trend over the job's last predictions (``^`` rising, ``v`` falling, ``=``
steady, ``*`` first seen). A job leaves the table when no prediction has come for
``--stale`` seconds (it ended). Narrow terminals lose the NODES, then PARTITION, then
FACTORS columns. When stdout is not a terminal, each prediction is one plain line
instead (for logs); ``--once`` prints one table after listening ``--wait`` seconds.

The stream options (``--endpoint``, ``--min-level``, ``--user``, ``--partition``,
``--server-key``) are those of ``nomade subscribe``. PUB drops messages to a slow
subscriber, so a row may skip a tick; it never shows a job that was not scored.
No curses: plain ANSI sequences.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from nomade.commands import subscribe
from nomade.config import Config

NAME = "watch"
HELP = "live table of running jobs by risk: level colours, trend, top factors"
#: ANSI colour of each level's cell.
COLOURS: dict[str, str] = {"low": "32", "moderate": "33", "high": "1;31", "critical": "1;37;41"}
#: How many recent risks make a row's trend; a change of more than STEADY is a trend.
HISTORY, STEADY = 5, 0.02
ARROWS = {"up": "^", "down": "v", "flat": "=", "new": "*"}
_SHORT = {
    "log_req_cpus": "cpus", "log_req_mem_mb": "req mem MB", "log_req_gpus": "gpus",
    "log_time_limit_min": "limit min", "user_fail_rate": "user fails",
    "user_last_failed": "last failed", "elapsed_frac": "elapsed", "cpu_eff": "cpu eff",
    "cpu_eff_change": "cpu change", "mem_frac": "mem", "mem_peak_frac": "mem peak",
    "mem_growth_frac_h": "mem growth/h", "log_read_mbps": "read MB/s",
    "log_write_mbps": "write MB/s", "nfs_write_share": "nfs share", "io_pressure": "io wait",
    "mem_pressure": "mem pressure"}
_HOME, _CLEAR_LINE, _CLEAR_BELOW, _CLEAR = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Stream options of ``nomade subscribe`` plus ``--once``, ``--wait``, ``--refresh``,
    ``--stale``, ``--no-color``."""
    subscribe.add_stream_arguments(parser)
    parser.add_argument("--once", action="store_true",
                        help="listen --wait seconds, print one table and exit")
    parser.add_argument("--wait", type=float, metavar="S",
                        help="with --once: how long to listen (default: [agent] interval_s + 5)")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="S",
                        help="redraw every S seconds (default 1)")
    parser.add_argument("--stale", type=float, metavar="S",
                        help="drop a job after S seconds without a prediction "
                             "(default: 3 x [agent] interval_s)")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Show the table until interrupted (or once). Returns 0."""
    out = sys.stdout
    tty = out.isatty()
    board = Board(stale_s=args.stale or 3 * cfg.agent.interval_s)
    wanted = subscribe.Filter.from_args(args)
    colour = tty and not args.no_color
    with subscribe.Subscription.from_args(args, cfg) as sub:
        if args.once:
            _listen(sub, board, wanted, args.wait or cfg.agent.interval_s + 5.0)
            out.write("\n".join(_render_now(board, sub.endpoint, colour)) + "\n")
            return 0
        if not tty:
            _plain_lines(sub, board, wanted, out)
            return 0
        _live(sub, board, wanted, args.refresh, colour, out)
    return 0


# ------------------------------------------------------------------ the table (pure)

@dataclass
class Row:
    """The latest prediction of one job and its recent risks."""

    job_id: str
    user: str
    partition: str
    nodes: tuple[str, ...]
    risk: float
    level: str
    factors: list[Mapping[str, Any]]
    seen: float
    risks: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def trend(self) -> str:
        """``up``, ``down`` or ``flat`` over the recent risks; ``new`` with only one."""
        if len(self.risks) < 2:
            return "new"
        change = self.risks[-1] - self.risks[0]
        return "up" if change > STEADY else "down" if change < -STEADY else "flat"


class Board:
    """Running jobs by their latest prediction; a job not heard of for ``stale_s`` goes."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._rows: dict[str, Row] = {}

    def update(self, body: Mapping[str, Any], now: float) -> Row:
        """Take one prediction body (``nomade.wire`` ``prediction``) received at ``now``."""
        job_id = body["job_id"]
        row = self._rows.get(job_id)
        if row is None:
            row = self._rows[job_id] = Row(job_id, "", "", (), 0.0, "low", [], now)
        row.user, row.partition = body.get("user") or "?", body.get("partition") or "?"
        row.nodes = tuple(body.get("nodes") or ())
        row.risk, row.level, row.seen = float(body["risk"]), str(body["level"]), now
        row.factors = list(body.get("factors") or [])
        row.risks.append(row.risk)
        return row

    def expire(self, now: float) -> int:
        """Drop rows not updated for ``stale_s``; returns how many."""
        gone = [j for j, r in self._rows.items() if now - r.seen > self.stale_s]
        for job_id in gone:
            del self._rows[job_id]
        return len(gone)

    def rows(self) -> list[Row]:
        """Rows by risk, highest first (ties by job id)."""
        return sorted(self._rows.values(), key=lambda r: (-r.risk, r.job_id))


def factors_text(factors: Sequence[Mapping[str, Any]]) -> str:
    """Short factor list: ``mem 0.93 2.3x, cpu eff 0.23``."""
    parts = []
    for f in factors:
        text = _SHORT.get(str(f.get("name")), str(f.get("name")))
        value, ratio = f.get("value"), f.get("ratio")
        if value is not None:
            text += f" {value:.2f}" if abs(value) < 10 else f" {value:.0f}"
        if ratio is not None and ratio >= 1.5:
            text += f" {ratio:.1f}x".replace(".0x", "x")
        parts.append(text)
    return ", ".join(parts)


def nodes_text(nodes: Sequence[str]) -> str:
    """``cn01`` or ``cn01+3`` (first node and how many more); ``-`` when unknown."""
    if not nodes:
        return "-"
    return nodes[0] + (f"+{len(nodes) - 1}" if len(nodes) > 1 else "")


# (title, width, priority): columns of lower priority go first on narrow terminals.
_COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("JOB", 10, 0), ("USER", 10, 0), ("PARTITION", 10, 3), ("NODES", 10, 4),
    ("RISK", 4, 0), ("LEVEL", 8, 0), ("T", 1, 0), ("FACTORS", 20, 2))


def render(rows: Sequence[Row], header: str, width: int, height: int | None = None,
           colour: bool = False) -> list[str]:
    """The table as lines no wider than ``width`` (ANSI colour codes not counted) and,
    with ``height``, no more than ``height`` lines (the last says how many are hidden)."""
    shown = _fit_columns(width)
    lines = [header[:width], _clip(" ".join(t.ljust(w) for t, w in shown).rstrip(), width)]
    body = [_row_line(r, shown, width, colour) for r in rows]
    if height is not None and len(lines) + len(body) > height:
        keep = max(0, height - len(lines) - 1)
        body = body[:keep] + [f"... {len(rows) - keep} more"[:width]]
    return lines + body


def _fit_columns(width: int) -> list[tuple[str, int]]:
    """The columns that fit in ``width``; FACTORS takes what is left."""
    cols = list(_COLUMNS)
    for priority in (4, 3, 2):
        if sum(w + 1 for _, w, _ in cols) - 1 <= width:
            break
        cols = [c for c in cols if c[2] != priority]
    used = sum(w + 1 for t, w, _ in cols if t != "FACTORS")
    return [(t, max(w, width - used) if t == "FACTORS" else w) for t, w, _ in cols]


def _row_line(row: Row, columns: Sequence[tuple[str, int]], width: int, colour: bool) -> str:
    cells = {"JOB": row.job_id, "USER": row.user, "PARTITION": row.partition,
             "NODES": nodes_text(row.nodes), "RISK": f"{row.risk:.2f}", "LEVEL": row.level,
             "T": ARROWS[row.trend], "FACTORS": factors_text(row.factors)}
    out, used = [], 0
    for title, w in columns:
        text = _clip(cells[title], w).ljust(w)
        if used + len(text) > width:
            text = text[: max(0, width - used)]
        if title == "LEVEL" and colour and text.strip():
            text = f"\x1b[{COLOURS.get(row.level, '0')}m{text}\x1b[0m"
        out.append(text)
        used += w + 1
        if used > width:
            break
    return " ".join(out).rstrip()


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _header(board: Board, endpoint: str) -> str:
    rows = board.rows()
    alerts = sum(r.level in ("high", "critical") for r in rows)
    return (f"NOMADE watch  {endpoint}  {time.strftime('%H:%M:%S')}  {len(rows)} jobs, "
            f"{alerts} at high or above")


# ------------------------------------------------------------------ the loops (I/O)

def _render_now(board: Board, endpoint: str, colour: bool,
                height: int | None = None) -> list[str]:
    board.expire(time.time())
    width = shutil.get_terminal_size((100, 24)).columns
    return render(board.rows(), _header(board, endpoint), width, height, colour)


def _listen(sub: subscribe.Subscription, board: Board, wanted: subscribe.Filter,
            seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = sub.receive(left)
        if msg is not None and wanted(msg.body):
            board.update(msg.body, time.time())


def _plain_lines(sub: subscribe.Subscription, board: Board, wanted: subscribe.Filter,
                 out: TextIO) -> None:
    """One plain line per prediction (stdout is not a terminal)."""
    columns = [(t, w) for t, w, _ in _COLUMNS]
    for msg in sub.messages():
        if wanted(msg.body):
            row = board.update(msg.body, time.time())
            out.write(f"{time.strftime('%H:%M:%S')} {_row_line(row, columns, 10_000, False)}\n")
            out.flush()


def _live(sub: subscribe.Subscription, board: Board, wanted: subscribe.Filter,
          refresh_s: float, colour: bool, out: TextIO) -> None:
    """Redraw the table in place every ``refresh_s`` until interrupted."""
    out.write(_HIDE_CURSOR + _CLEAR)
    try:
        next_draw = 0.0
        while True:
            msg = sub.receive(max(0.0, next_draw - time.monotonic()))
            if msg is not None and wanted(msg.body):
                board.update(msg.body, time.time())
            if time.monotonic() >= next_draw:
                height = shutil.get_terminal_size((100, 24)).lines
                lines = _render_now(board, sub.endpoint, colour, height)
                out.write(_HOME + "".join(f"{line}{_CLEAR_LINE}\n" for line in lines[:-1])
                          + lines[-1] + _CLEAR_LINE + _CLEAR_BELOW)
                out.flush()
                next_draw = time.monotonic() + refresh_s
    finally:
        out.write(_SHOW_CURSOR + "\n")
        out.flush()
