"""Wall time of one Slurm hook invocation, as slurmd/slurmctld run it (budget: p99 <= 20 ms).

Each hook runs under an empty environment plus realistic Slurm variables, writing into a
spool on the same file system as /var/tmp (a real disk: the fsync counts). Runs are
interleaved across hooks so that machine noise hits every hook alike.

On a 2-core machine shared with others the figures swing with their load, so each note
gives the load average and CPU pressure during the run, and two reference rows are
timed interleaved with the hooks: an empty ``#!/bin/bash -p`` script (what starting any
hook costs at that moment) and writing + fsyncing a small new file in the spool from this
process (what the disk costs). A hook is roughly the first, plus its two programs (sync,
mv), plus the second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.result import Result

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "prolog/nomade-hook"
#: Each hook and the SLURM_SCRIPT_CONTEXT Slurm runs the one script with (jobcomp: none).
HOOKS = {"prolog": "prolog_slurmd", "prolog_slurmctld": "prolog_slurmctld",
         "epilog": "epilog_slurmd", "epilog_slurmctld": "epilog_slurmctld", "jobcomp": None}
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_UID": "1001", "SLURM_JOB_GID": "1001",
             "SLURM_JOB_USER": "u1", "SLURM_JOB_PARTITION": "batch", "SLURM_JOB_NAME": "train",
             "SLURM_CPUS_PER_NODE": "32(x4)", "SLURM_JOB_NUM_NODES": "4",
             "SLURM_JOB_NODELIST": "n[001-004]", "SLURM_JOB_ACCOUNT": "physics",
             "SLURM_JOB_WORK_DIR": "/home/u1/run", "CLUSTER_NAME": "prod",
             "SLURMD_NODENAME": "n001", "SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_EXIT_CODE2": "0:0"}
JOBCOMP_ENV = {"JOBID": "4242", "JOBSTATE": "COMPLETED", "EXITCODE": "0:0", "UID": "1001",
               "USERNAME": "u1", "START": "1700000000", "END": "1700003600",
               "SUBMIT": "1699999000", "LIMIT": "120", "NODES": "n[001-004]", "PROCS": "128",
               "PARTITION": "batch", "ACCOUNT": "physics", "JOBNAME": "train",
               "PATH": "/bin:/usr/bin"}
BUDGET_MS = 20.0
FLOOR = "empty bash -p script"
FSYNC = "write+fsync in-process"


def _percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def run(quick: bool) -> list[Result]:
    """p50 and p99 wall time of each hook over 200 (quick) or 1000 invocations."""
    n = 200 if quick else 1000
    load_before, cpu_some_before, t_start = os.getloadavg(), _cpu_pressure_total_us(), time.monotonic()
    spool = Path(tempfile.mkdtemp(prefix="nomade-bench-hooks-", dir="/var/tmp"))
    scratch = Path(tempfile.mkdtemp(prefix="nomade-bench-hooks-floor-"))
    try:
        floor = scratch / "empty-hook"
        floor.write_text("#!/bin/bash -p\nexit 0\n")
        floor.chmod(0o755)
        times = _time_runs({**{h: HOOK for h in HOOKS}, FLOOR: floor}, n, spool)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    note = (f"{n} runs, exit 0 every time; "
            f"{_load_note(load_before, cpu_some_before, time.monotonic() - t_start)}")
    rows: list[Result] = []
    for name, ms in times.items():
        ms.sort()
        p50, p99 = _percentile(ms, 0.50), _percentile(ms, 0.99)
        if name in (FLOOR, FSYNC):
            rows += [Result(f"{name} p50", p50, "ms", note="reference for the hooks' rows"),
                     Result(f"{name} p99", p99, "ms", note="reference for the hooks' rows")]
        else:
            rows += [Result(f"hook {name} p50", p50, "ms", note=note),
                     Result(f"hook {name} p99", p99, "ms", f"<= {BUDGET_MS:g} ms", p99 <= BUDGET_MS, note)]
    return rows


def _time_runs(runs: dict[str, Path], n: int, spool: Path) -> dict[str, list[float]]:
    """Milliseconds of each of ``n`` interleaved rounds of every script; checks exit 0 and events."""
    times: dict[str, list[float]] = {name: [] for name in (*runs, FSYNC)}
    for i in range(n):
        times[FSYNC].append(_write_fsync_ms(spool / ".reference.tmp"))
        for name, path in runs.items():
            env = {**(JOBCOMP_ENV if name == "jobcomp" else SLURM_ENV), "NOMADE_SPOOL": str(spool)}
            context = HOOKS.get(name)
            if context:
                env["SLURM_SCRIPT_CONTEXT"] = context
            t0 = time.perf_counter()
            rc = subprocess.run([str(path)], env=env).returncode
            times[name].append((time.perf_counter() - t0) * 1e3)
            if rc != 0:
                raise RuntimeError(f"{path} exited {rc}: the hook contract is broken")
        if i % 100 == 99 or i == n - 1:
            _check_and_empty(spool, (i % 100 + 1) * len(HOOKS))
    return times


def _write_fsync_ms(path: Path) -> float:
    """Milliseconds to create, write (a hook event's size) and fsync a new file; removes it."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"SLURM_JOB_ID=4242\0" * 24)
        os.fsync(fd)
    finally:
        os.close(fd)
    ms = (time.perf_counter() - t0) * 1e3
    path.unlink()
    return ms


def _cpu_pressure_total_us() -> int | None:
    """Cumulative µs in which some task waited for a CPU (PSI), None without PSI."""
    try:
        first = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        return int(first.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def _load_note(load_before: tuple[float, float, float], cpu_some_before: int | None,
               elapsed_s: float) -> str:
    """How busy the machine was during the run: load averages and CPU pressure (PSI)."""
    after = os.getloadavg()
    text = (f"load avg 1/5/15 min {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}"
            f" before, {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} after, on {os.cpu_count()} CPUs")
    cpu_some_after = _cpu_pressure_total_us()
    if cpu_some_before is not None and cpu_some_after is not None and elapsed_s > 0:
        share = (cpu_some_after - cpu_some_before) / 1e6 / elapsed_s
        text += f"; some task waited for a CPU {share:.0%} of the {elapsed_s:.0f} s"
    return text


def _check_and_empty(spool: Path, expected: int) -> None:
    """Every run must have left exactly one event (an exit 0 that spools nothing is a failure)."""
    written = sum(1 for p in spool.iterdir() if p.name.endswith(".ev"))
    if written != expected:
        raise RuntimeError(f"expected {expected} event files in {spool}, found {written}")
    shutil.rmtree(spool)
    spool.mkdir()
