"""Import of accounting history (budget: 1,000,000 records in <= 60 s, with progress).

A ``sacct --parsable2`` file of ``JOBS`` jobs (plus one ``.batch`` step each, as sacct
prints them) is written under /var/tmp, then imported as ``nomade import sacct FILE
--db DB`` does: parsed (``traces.read_sacct``, progress reported) and written into a
fresh store in one transaction (``import_.write_store``). The figure is the wall time
of both; the parse and the write, and their CPU times (on a shared machine the wall
time also counts other processes), are given apart as notes.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench.result import Result
from nomade import traces
from nomade.commands.import_ import write_store

JOBS = 1_000_000
QUICK_JOBS = 50_000
BUDGET_S = 60.0
STATES = ("COMPLETED",) * 7 + ("FAILED", "TIMEOUT", "CANCELLED by 1000", "OUT_OF_MEMORY")


def write_sacct(path: Path, n: int, seed: int = 0) -> None:
    """``n`` jobs of ``sacct --parsable2`` output with the documented fields, each with a
    batch step; one job in fifty cancelled while pending."""
    rnd = random.Random(seed)
    t = datetime(2024, 1, 1)
    with path.open("w") as out:
        out.write(traces.SACCT_FORMAT.replace(",", "|") + "\n")
        for i in range(1, n + 1):
            t += timedelta(seconds=rnd.randint(0, 6))
            cpus = 2 ** rnd.randint(0, 6)
            req = f"billing={cpus},cpu={cpus},mem={cpus * 2}G,node=1"
            sub = f"{t:%Y-%m-%dT%H:%M:%S}"
            if i % 50 == 0:
                end = f"{t + timedelta(seconds=rnd.randint(1, 900)):%Y-%m-%dT%H:%M:%S}"
                out.write(f"{i}|u{rnd.randint(1, 400)}|batch|a{rnd.randint(1, 40)}|{cpus}|{cpus * 2}G|{req}||"
                          f"02:00:00|{sub}|None|{end}|CANCELLED by 1000|0:0|1|None assigned\n")
                continue
            s = t + timedelta(seconds=rnd.randint(0, 600))
            e = s + timedelta(seconds=rnd.randint(1, 7200))
            start, end = f"{s:%Y-%m-%dT%H:%M:%S}", f"{e:%Y-%m-%dT%H:%M:%S}"
            node = f"n{rnd.randint(1, 500)}"
            out.write(f"{i}|u{rnd.randint(1, 400)}|batch|a{rnd.randint(1, 40)}|{cpus}|{cpus * 2}G|{req}|{req}|"
                      f"02:00:00|{sub}|{start}|{end}|{rnd.choice(STATES)}|0:0|1|{node}\n")
            out.write(f"{i}.batch||||{cpus}||||||{start}|{end}|COMPLETED|0:0|1|{node}\n")


def run(quick: bool) -> list[Result]:
    n = QUICK_JOBS if quick else JOBS
    tmp = Path(tempfile.mkdtemp(prefix="nomade-bench-import-", dir="/var/tmp"))
    try:
        src = tmp / "sacct.txt"
        write_sacct(src, n)
        calls: list[tuple[int, int]] = []
        t0, c0 = time.monotonic(), time.process_time()
        trace = traces.read_sacct(src, progress=lambda done, total: calls.append((done, total)))
        t1, c1 = time.monotonic(), time.process_time()
        written, refused = write_store(trace, tmp / "nomade.db", None)
        t2, c2 = time.monotonic(), time.process_time()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert written == n and refused == 0 and len(calls) > 1, (written, refused, len(calls))
    scale = JOBS / n
    seconds = (t2 - t0) * scale
    note = (f"{n:,} jobs measured{'' if n == JOBS else ', scaled to 1,000,000'}: parse "
            f"{(t1 - t0) * scale:.1f} s, store {(t2 - t1) * scale:.1f} s; CPU {(c2 - c0) * scale:.1f} s "
            f"(parse {(c1 - c0) * scale:.1f} s, store {(c2 - c1) * scale:.1f} s; wall above CPU: other "
            f"load on the machine); "
            f"{trace.never_ran:,} never ran; progress reported {len(calls)} times")
    return [Result("import of 1,000,000 sacct records", seconds, "s", f"<= {BUDGET_S:g} s",
                   seconds <= BUDGET_S, note)]
