"""Wall time of one Slurm hook invocation, as slurmd/slurmctld run it (budget: p99 <= 20 ms).

Each hook runs under an empty environment plus realistic Slurm variables, writing into a
spool on the same file system as /var/tmp (a real disk: both fsyncs count). Runs are
interleaved across hooks so that machine noise hits every hook alike.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.result import Result

ROOT = Path(__file__).resolve().parents[1]
HOOKS = {"prolog": "prolog/nomade-prolog", "prolog_slurmctld": "prolog/nomade-prolog-slurmctld",
         "epilog": "epilog/nomade-epilog", "epilog_slurmctld": "epilog/nomade-epilog-slurmctld",
         "jobcomp": "epilog/nomade-jobcomp"}
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


def _percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def run(quick: bool) -> list[Result]:
    """p50 and p99 wall time of each hook over 200 (quick) or 1000 invocations."""
    n = 200 if quick else 1000
    spool = Path(tempfile.mkdtemp(prefix="nomade-bench-hooks-", dir="/var/tmp"))
    times: dict[str, list[float]] = {h: [] for h in HOOKS}
    try:
        for i in range(n):
            for hook, rel in HOOKS.items():
                env = {**(JOBCOMP_ENV if hook == "jobcomp" else SLURM_ENV), "NOMADE_SPOOL": str(spool)}
                t0 = time.perf_counter()
                rc = subprocess.run([str(ROOT / rel)], env=env).returncode
                times[hook].append((time.perf_counter() - t0) * 1e3)
                if rc != 0:
                    raise RuntimeError(f"{rel} exited {rc}: the hook contract is broken")
            if i % 100 == 99 or i == n - 1:
                _check_and_empty(spool, (i % 100 + 1) * len(HOOKS))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    rows: list[Result] = []
    for hook, ms in times.items():
        ms.sort()
        p99 = _percentile(ms, 0.99)
        rows.append(Result(f"hook {hook} p50", _percentile(ms, 0.50), "ms"))
        rows.append(Result(f"hook {hook} p99", p99, "ms", f"<= {BUDGET_MS:g} ms",
                           p99 <= BUDGET_MS, f"{n} runs, exit 0 every time"))
    return rows


def _check_and_empty(spool: Path, expected: int) -> None:
    """Every run must have left exactly one event (an exit 0 that spools nothing is a failure)."""
    written = sum(1 for p in spool.iterdir() if p.name.endswith(".ev"))
    if written != expected:
        raise RuntimeError(f"expected {expected} event files in {spool}, found {written}")
    shutil.rmtree(spool)
    spool.mkdir()
