"""A workload of real jobs whose fate shows in their behaviour, for the test cluster.

The lab submits a mix of small batch jobs to a real Slurm: some finish, some leak
memory past ``--mem`` (OUT_OF_MEMORY), some hang and hit their time limit (TIMEOUT),
some crash after an I/O storm (FAILED), some are cancelled. Which job does what is
drawn at random per job, with per-user tendencies, so that a model can only tell them
apart from what it measures while they run (and from the user's history), never from
the request alone: every archetype draws its request from the same distributions.

It is what `make demo` runs to produce labelled time series for training, and what the
LSTM's test AUC in the issue notes is measured on.
"""

from __future__ import annotations

import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nomade.slurmstates import is_final

if TYPE_CHECKING:
    from nomade.slurm import Slurm

#: The job archetypes, their final state when all goes as drawn, and their weight.
ARCHETYPES: dict[str, tuple[str, float]] = {
    "compute": ("COMPLETED", 0.30),
    "idle": ("COMPLETED", 0.10),
    "io": ("COMPLETED", 0.12),
    "grow": ("COMPLETED", 0.10),   # memory grows but stays under the limit
    "leak": ("OUT_OF_MEMORY", 0.14),
    "hang": ("TIMEOUT", 0.08),
    "crash": ("FAILED", 0.12),
    "cancel": ("CANCELLED", 0.04),
}

PY = "/usr/bin/python3"


@dataclass(frozen=True)
class LabJob:
    """One job to submit: its archetype, sbatch options and batch script."""

    archetype: str
    expected_state: str
    user: str
    options: tuple[str, ...]
    script: str
    cancel_after_s: float | None = None


def _busy(seconds: float, share: float) -> str:
    """Shell line: burn ``share`` of one CPU for ``seconds``."""
    code = (f"import time\nend=time.time()+{seconds:.1f}\n"
            f"while time.time()<end:\n t=time.time()\n while time.time()-t<{share:.2f}*0.1: pass\n"
            f" time.sleep((1-{share:.2f})*0.1)\n")
    return f"{PY} -c {shlex.quote(code)}"


def _memory(start_mb: int, step_mb: int, steps: int, step_s: float, hold_s: float) -> str:
    """Shell line: allocate ``start_mb``, then ``step_mb`` more every ``step_s``."""
    code = ("import time\nblocks=[]\n"
            "def grab(mb):\n b=bytearray(mb<<20)\n b[::4096]=b'x'*len(b[::4096])\n blocks.append(b)\n"
            f"grab({start_mb})\n"
            f"for i in range({steps}):\n time.sleep({step_s:.2f})\n grab({step_mb})\n"
            f"time.sleep({hold_s:.1f})\n")
    return f"{PY} -c {shlex.quote(code)}"


def leak_script(start_mb: int, step_mb: int, steps: int, step_s: float) -> str:
    """A batch script that allocates ``start_mb`` then ``step_mb`` more every ``step_s``."""
    return f"#!/bin/bash\n{_memory(start_mb, step_mb, steps, step_s, 30)}\n"


def _io(total_mb: int, seconds: float) -> str:
    """Shell line: write ``total_mb`` to the job's scratch file over ``seconds``, then remove it."""
    code = ("import os,time\n"
            f"n={max(1, int(seconds))}\nchunk=bytes({total_mb}*(1<<20)//n)\n"
            "f=open(os.environ.get('TMPDIR','/tmp')+'/nomade-lab-'+os.environ['SLURM_JOB_ID'],'wb')\n"
            "for i in range(n):\n f.write(chunk); f.flush(); os.fsync(f.fileno()); time.sleep(1)\n"
            "f.close(); os.remove(f.name)\n")
    return f"{PY} -c {shlex.quote(code)}"


def _body(archetype: str, rng: random.Random, mem_mb: int) -> tuple[str, float | None]:
    """The script body of one archetype and, for ``cancel``, when to cancel it."""
    d = rng.uniform(20, 50)
    if archetype == "compute":
        return _busy(d, rng.uniform(0.6, 1.0)), None
    if archetype == "idle":
        return f"sleep {d:.0f}", None
    if archetype == "io":
        return _io(rng.randint(50, 200), d), None
    if archetype == "grow":
        steps = rng.randint(4, 10)
        return _memory(mem_mb // 5, max(1, (mem_mb // 2) // steps), steps, d / steps, 2), None
    if archetype == "leak":
        steps = rng.randint(6, 14)
        return _memory(mem_mb // 5, max(4, int(mem_mb * 1.3) // steps), steps, d / steps, 30), None
    if archetype == "hang":
        return f"{_busy(rng.uniform(5, 15), 0.9)}\nsleep 600", None
    if archetype == "crash":
        return f"{_io(rng.randint(20, 80), d / 2)}\n{_busy(d / 2, 0.3)}\nexit {rng.choice([1, 2, 3, 134])}", None
    if archetype == "cancel":
        return f"{_busy(120, 0.5)}", d
    raise ValueError(f"unknown archetype {archetype!r}")


def archetype_counts(n_jobs: int) -> dict[str, int]:
    """How many jobs of each archetype ``n_jobs`` holds: the weights of ``ARCHETYPES``
    apportioned exactly (largest remainder), so a small history is not left with one
    or two examples of a failure by the luck of a draw."""
    total = sum(w for _, w in ARCHETYPES.values())
    quotas = {a: n_jobs * w / total for a, (_, w) in ARCHETYPES.items()}
    counts = {a: int(q) for a, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda a: counts[a] - quotas[a])
    for a in by_remainder[:n_jobs - sum(counts.values())]:
        counts[a] += 1
    return counts


def plan(n_jobs: int, users: list[str], seed: int = 0) -> list[LabJob]:
    """``n_jobs`` lab jobs in a shuffled order, ``archetype_counts(n_jobs)`` of each
    archetype; each user has its own leaning towards some archetypes.

    The request (CPUs, memory, time limit) is drawn the same way for every archetype,
    so only runtime behaviour and user history can tell the outcomes apart.
    """
    rng = random.Random(seed)
    lean = {u: {a: rng.uniform(0.5, 1.5) for a in ARCHETYPES} for u in users}
    archetypes = [a for a, n in archetype_counts(n_jobs).items() for _ in range(n)]
    rng.shuffle(archetypes)
    jobs = []
    for archetype in archetypes:
        user = rng.choices(users, weights=[lean[u][archetype] for u in users])[0]
        mem_mb = rng.choice([128, 192, 256])
        minutes = rng.choice([1, 1, 2])
        body, cancel_after = _body(archetype, rng, mem_mb)
        options = (f"--mem={mem_mb}M", f"--time={minutes}", "--cpus-per-task=1", "--job-name=lab")
        jobs.append(LabJob(archetype, ARCHETYPES[archetype][0], user, options,
                           f"#!/bin/bash\n{body}\n", cancel_after))
    return jobs


def run(slurm: Slurm, jobs: list[LabJob], *, max_running: int, out_dir: str,
        on_submit: Callable[[LabJob, str], None] | None = None,
        poll_s: float = 2.0) -> dict[str, LabJob]:
    """Submit ``jobs`` keeping at most ``max_running`` in the queue; wait for all to end.

    Jobs of the ``cancel`` archetype are cancelled ``cancel_after_s`` after they start.
    Returns job id -> lab job. Slurm errors propagate (the lab is a tool, not a daemon).
    """
    pending = list(jobs)
    live: dict[str, tuple[LabJob, float | None]] = {}
    submitted: dict[str, LabJob] = {}
    while pending or live:
        states = {j.job_id: j for j in slurm.list_jobs(job_ids=list(live))} if live else {}
        now = time.time()
        for job_id, (job, started) in list(live.items()):
            info = states.get(job_id)
            state = info.state if info else "UNKNOWN"
            if is_final(state) or info is None:
                del live[job_id]
                continue
            if state == "RUNNING" and started is None:
                live[job_id] = (job, now)
            elif started is not None and job.cancel_after_s is not None and now - started >= job.cancel_after_s:
                slurm.cancel(job_id)
        while pending and len(live) < max_running:
            job = pending.pop(0)
            job_id = slurm.submit(job.script, options=[*job.options, f"--output={out_dir}/lab-%j.out"],
                                  as_user=job.user)
            live[job_id] = (job, None)
            submitted[job_id] = job
            if on_submit:
                on_submit(job, job_id)
        time.sleep(poll_s)
    return submitted
