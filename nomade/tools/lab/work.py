"""The lab jobs' workloads: one small program the batch scripts run (standard library only).

The corpus recorder copies this file where the lab's users can read it, and every job's
script calls ``python3 work.py <kind> ...`` with parameters drawn by the plan. What
happens then is the kernel's and Slurm's doing, not the plan's: memory growth meets
``--mem`` or not, a stall outlives the time limit or not, writes fill the scratch
filesystem or not. Every count is capped so a job can never harm the host.

Kinds: ``burn`` (a share of one CPU), ``hold`` (steady memory), ``grow`` (memory growing
linearly), ``write`` (output to a directory, exit 1 on a failed write), ``stall`` (work,
then blocked), ``starve`` (more busy workers than CPUs), ``crash`` (work, then SIGSEGV /
abort / exit N at a drawn point), ``procs`` / ``threads`` (a bounded process or thread
storm, each holding memory), ``thrash`` (random page reads over a file mapping).
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time

MAX_PROCS = 64
MAX_THREADS = 256
MAX_MB = 4096
PAGE = 4096
HELD: list[bytearray] = []   # memory a workload holds until it exits


def _grab(mb: int) -> bytearray:
    """``mb`` MiB of memory, every page touched so it counts as resident."""
    block = bytearray(max(0, min(mb, MAX_MB)) << 20)
    for i in range(0, len(block), PAGE):
        block[i] = 1
    return block


def _burn_for(seconds: float, share: float) -> None:
    """Use ``share`` of one CPU for ``seconds`` (busy 100 ms slices, then sleep)."""
    end = time.time() + seconds
    share = min(max(share, 0.0), 1.0)
    while time.time() < end:
        t = time.time()
        while time.time() - t < share * 0.1:
            pass
        time.sleep(max(0.0, (1 - share) * 0.1))


def burn(a: argparse.Namespace) -> int:
    """``share`` of one CPU for ``seconds``."""
    _burn_for(a.seconds, a.share)
    return 0


def hold(a: argparse.Namespace) -> int:
    """Hold ``mb`` MiB while using ``share`` of one CPU for ``seconds``."""
    HELD.append(_grab(a.mb))
    _burn_for(a.seconds, a.share)
    return 0


def grow(a: argparse.Namespace) -> int:
    """From ``start_mb`` to ``end_mb`` in one-second steps over ``seconds``, then hold."""
    blocks = [_grab(a.start_mb)]
    steps = max(1, int(a.seconds))
    step_mb = (a.end_mb - a.start_mb) / steps
    owed = 0.0
    for _ in range(steps):
        _burn_for(1.0, a.share)
        owed += step_mb
        if owed >= 1:
            blocks.append(_grab(int(owed)))
            owed -= int(owed)
    _burn_for(a.hold_s, a.share)
    return 0


def write(a: argparse.Namespace) -> int:
    """Write ``total_mb`` into ``dir`` over ``seconds`` (fsync'd chunks); exit 1 when a write fails."""
    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, f"out-{os.environ.get('SLURM_JOB_ID', os.getpid())}-{os.getpid()}")
    steps = max(1, int(a.seconds))
    chunk = os.urandom(1 << 16) * max(1, int(a.total_mb * 16 / steps))
    try:
        with open(path, "wb") as f:
            for _ in range(steps):
                t = time.time()
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                time.sleep(max(0.0, 1.0 - (time.time() - t)))
    except OSError as e:
        print(f"write to {path} failed: {e}", file=sys.stderr)
        return 1
    finally:
        if not a.keep and os.path.exists(path):
            os.remove(path)
    return 0


def stall(a: argparse.Namespace) -> int:
    """Work ``work_s``, then block ``hang_s`` (a wait that never uses the CPU)."""
    HELD.append(_grab(a.mb))
    _burn_for(a.work_s, a.share)
    threading.Event().wait(a.hang_s)
    _burn_for(a.tail_s, a.share)
    return 0


def starve(a: argparse.Namespace) -> int:
    """``workers`` busy processes share the job's CPUs for ``seconds``."""
    n = max(1, min(a.workers, MAX_PROCS))
    kids = [subprocess.Popen([sys.executable, __file__, "burn", "--seconds", str(a.seconds),
                              "--share", str(a.share)]) for _ in range(n)]
    return max(k.wait() for k in kids)


def crash(a: argparse.Namespace) -> int:
    """Work for ``seconds``; if ``at_s`` comes first, die there the way ``how`` says."""
    HELD.append(_grab(a.mb))
    _burn_for(min(a.seconds, a.at_s), a.share)
    if a.at_s < a.seconds:
        print(f"crashing ({a.how}) after {a.at_s:.0f} s", file=sys.stderr, flush=True)
        if a.how == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if a.how == "abort":
            os.abort()
        if a.how == "exception":
            raise RuntimeError("lab job: simulated bug")
        return int(a.how.removeprefix("exit"))
    return 0


def procs(a: argparse.Namespace) -> int:
    """Start up to ``n`` children (one every ``every_s``), each holding ``each_mb``; stop them after ``seconds``."""
    n = max(0, min(a.n, MAX_PROCS))
    end = time.time() + a.seconds
    kids = []
    for _ in range(n):
        if time.time() >= end:
            break
        kids.append(subprocess.Popen([sys.executable, __file__, "hold", "--mb", str(a.each_mb),
                                      "--seconds", str(a.seconds), "--share", "0.0"]))
        time.sleep(a.every_s)
    while time.time() < end:
        if any(k.poll() not in (None, 0) for k in kids):
            print("a child died", file=sys.stderr)
            break
        time.sleep(0.5)
    for k in kids:
        if k.poll() is None:
            k.terminate()
    return 0


def threads(a: argparse.Namespace) -> int:
    """Start up to ``n`` threads (one every ``every_s``), each holding ``each_mb``; end after ``seconds``."""
    n = max(0, min(a.n, MAX_THREADS))
    end = time.time() + a.seconds
    stop = threading.Event()

    def worker() -> None:
        keep = _grab(a.each_mb)
        while not stop.wait(0.5):
            keep[0] = 1

    pool = []
    for _ in range(n):
        if time.time() >= end:
            break
        t = threading.Thread(target=worker, daemon=True)
        t.start()
        pool.append(t)
        time.sleep(a.every_s)
    time.sleep(max(0.0, end - time.time()))
    stop.set()
    return 0


def thrash(a: argparse.Namespace) -> int:
    """Read ``touches`` random pages of a ``file_mb`` file mapping (a file larger than
    ``--mem`` keeps faulting), pausing briefly every 64 touches."""
    path = os.path.join(a.dir, f"thrash-{os.environ.get('SLURM_JOB_ID', os.getpid())}")
    size = max(1, min(a.file_mb, MAX_MB)) << 20
    try:
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)
            f.writelines(block for _ in range(size >> 20))
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
            if hasattr(m, "madvise"):
                m.madvise(mmap.MADV_RANDOM)
            rng = random.Random(a.seed)
            pages = size // PAGE
            total = 0
            for i in range(a.touches):
                total += m[rng.randrange(pages) * PAGE]
                if i % 64 == 63:
                    time.sleep(0.002)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="work.py")
    sub = p.add_subparsers(dest="kind", required=True)
    spec = {
        "burn": (burn, [("seconds", float), ("share", float)]),
        "hold": (hold, [("mb", int), ("seconds", float), ("share", float)]),
        "grow": (grow, [("start_mb", int), ("end_mb", int), ("seconds", float),
                        ("hold_s", float), ("share", float)]),
        "write": (write, [("dir", str), ("total_mb", float), ("seconds", float)]),
        "stall": (stall, [("mb", int), ("work_s", float), ("hang_s", float), ("tail_s", float),
                          ("share", float)]),
        "starve": (starve, [("workers", int), ("seconds", float), ("share", float)]),
        "crash": (crash, [("mb", int), ("seconds", float), ("at_s", float), ("how", str),
                          ("share", float)]),
        "procs": (procs, [("n", int), ("each_mb", int), ("every_s", float), ("seconds", float)]),
        "threads": (threads, [("n", int), ("each_mb", int), ("every_s", float), ("seconds", float)]),
        "thrash": (thrash, [("dir", str), ("file_mb", int), ("touches", int), ("seed", int)]),
    }
    for name, (fn, args) in spec.items():
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        for arg, typ in args:
            s.add_argument("--" + arg.replace("_", "-"), dest=arg, type=typ, required=True)
        if name == "write":
            s.add_argument("--keep", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one workload; its exit status."""
    a = _parser().parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
