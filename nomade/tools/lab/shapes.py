"""The corpus plan: job shapes whose outcome the shape does not decide.

A shape is how a job behaves (memory growing, a stall, output to a small filesystem ...);
whether it ends COMPLETED, OUT_OF_MEMORY, TIMEOUT or FAILED depends on parameters drawn
against the job's request (memory growth may or may not reach ``--mem``, a stall may or
may not outlive the time limit) and on its neighbours (a shared scratch filesystem).
The request itself (CPUs, memory, time limit, job name) is drawn from the user's habits,
the same way for every shape, so it gives the outcome away no more than the user does.

Job ``i`` of a plan depends only on ``(seed, i)`` and the users' habits (from ``seed``),
so a longer plan begins with the same jobs: a recording resumes by skipping indices.
The shape is metadata for evaluation (per-shape and leave-one-shape-out figures), never
a feature.
"""

from __future__ import annotations

import random
import shlex
from dataclasses import dataclass, field
from typing import Any

PY = "/usr/bin/python3"
SCRATCH_MB = 160

#: shape -> weight in the plan.
SHAPES: dict[str, float] = {
    "compute": 0.15, "sleepy": 0.05, "io_tmp": 0.06, "mem_steady": 0.06,
    "mem_grow": 0.12, "stall": 0.09, "starve": 0.06, "scratch_fill": 0.08,
    "crash": 0.10, "procs": 0.04, "threads": 0.03, "thrash": 0.03,
    "multinode": 0.05, "array": 0.05, "cancel": 0.03, "leak": 0.30,
}
LATER_SHAPES: dict[str, int] = {"leak": 2000}
"""Shapes added to the plan after its first jobs were recorded -> the plan index they
start at. Jobs before it draw from the other shapes with the same weights, and users'
leanings towards a later shape are drawn after all the others: the jobs already
recorded keep their plan, so a recording still resumes by index (the first 2,000 jobs of
the shipped corpus were recorded before the leak shape existed)."""

#: Per-user habits: time limits (minutes) and their weights, memory requests (MB),
#: CPUs, the share of the limit a job's planned work takes, and job names.
HABITS: dict[str, dict[str, Any]] = {
    "nomadetest": {"limits": ([1, 2, 3, 5], [3, 4, 2, 1]), "mem": [128, 256, 384],
                   "cpus": [1], "frac": (0.4, 0.9), "names": ["analysis", "run", "test"]},
    "nomadelab1": {"limits": ([5, 10, 20], [5, 3, 1]), "mem": [384, 512],
                   "cpus": [1, 2], "frac": (0.1, 0.5), "names": ["sim", "sweep", "mc"]},
    "nomadelab2": {"limits": ([1, 2, 3], [3, 3, 2]), "mem": [128, 192, 256],
                   "cpus": [1], "frac": (0.5, 0.95), "names": ["prep", "job", "batch"]},
    "nomadelab3": {"limits": ([2, 5, 10], [3, 3, 2]), "mem": [256, 384, 512],
                   "cpus": [1, 1, 2], "frac": (0.3, 0.8), "names": ["train", "eval", "fit"]},
}
DEFAULT_HABIT = HABITS["nomadetest"]


@dataclass(frozen=True)
class Paths:
    """Where jobs find the workload program, a scratch dir for temporary files, and the
    small scratch filesystems (each ``SCRATCH_MB``) that output may fill."""

    work: str
    tmp: str
    scratch: tuple[str, ...]
    out: str


@dataclass(frozen=True)
class CorpusJob:
    """One planned job: plan index, shape, the variant(s) inside it, user, sbatch options,
    the batch script, when the recorder cancels it (``cancel`` shape) and the drawn
    parameters (for the record)."""

    index: int
    shape: str
    variant: str
    user: str
    options: tuple[str, ...]
    script: str
    cancel_after_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    array_variants: tuple[str, ...] = ()


class _Draw:
    """The drawn parameters of one job, remembered as they are drawn."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.params = rng, {}

    def u(self, name: str, lo: float, hi: float, nd: int = 2) -> float:
        self.params[name] = round(self.rng.uniform(lo, hi), nd)
        return self.params[name]

    def i(self, name: str, lo: int, hi: int) -> int:
        self.params[name] = self.rng.randint(lo, hi)
        return self.params[name]

    def pick(self, name: str, options: list[Any]) -> Any:
        self.params[name] = self.rng.choice(options)
        return self.params[name]


def _work(paths: Paths, kind: str, **args: Any) -> str:
    """A ``python3 work.py <kind> --arg value ...`` command line, quoted."""
    words = [PY, paths.work, kind]
    for k, v in args.items():
        words.append("--" + k.replace("_", "-"))
        words.append(str(v))
    return " ".join(shlex.quote(w) for w in words)


def _variant(variant: str, d: _Draw, paths: Paths, mem: int, limit_s: float, dur: float) -> str:
    """The command of one behaviour, parameters drawn against the request."""
    share = d.u("share", 0.01, 0.06, 3)
    if variant == "compute":
        return _work(paths, "burn", seconds=dur, share=d.u("share", 0.02, 0.15, 3))
    if variant == "sleepy":
        return _work(paths, "burn", seconds=dur, share=0.005)
    if variant == "io_tmp":
        return _work(paths, "write", dir=paths.tmp, total_mb=d.u("total_mb", 10, 300, 0), seconds=dur)
    if variant == "mem_steady":
        return _work(paths, "hold", mb=int(mem * d.u("mem_frac", 0.15, 0.85)), seconds=dur, share=share)
    if variant == "leak":   # grows until the work is done (or --mem is reached): no plateau
        return _work(paths, "grow", start_mb=int(mem * d.u("start_frac", 0.05, 0.3)),
                     end_mb=int(mem * d.u("end_frac", 0.5, 2.0)), seconds=dur, hold_s=0, share=share)
    if variant == "mem_grow":
        grow_s = dur * d.u("grow_frac", 0.4, 0.95)
        return _work(paths, "grow", start_mb=int(mem * d.u("start_frac", 0.05, 0.3)),
                     end_mb=int(mem * d.u("end_frac", 0.5, 1.5)), seconds=round(grow_s, 1),
                     hold_s=round(dur - grow_s, 1), share=share)
    if variant == "stall":
        work_s = dur * d.u("work_frac", 0.1, 0.6)
        total = limit_s * d.u("total_over_limit", 0.5, 1.7)
        tail = d.u("tail_s", 2, 10, 0)
        return _work(paths, "stall", mb=int(mem * d.u("mem_frac", 0.1, 0.5)), work_s=round(work_s, 1),
                     hang_s=round(max(1.0, total - work_s - tail), 1), tail_s=tail, share=share)
    if variant == "starve":
        return _work(paths, "starve", workers=d.i("workers", 2, 5),
                     seconds=round(limit_s * d.u("total_over_limit", 0.5, 1.6), 1),
                     share=d.u("share", 0.01, 0.04, 3))
    if variant == "scratch_fill":
        cmd = _work(paths, "write", dir=d.pick("scratch", list(paths.scratch)),
                    total_mb=int(SCRATCH_MB * d.u("fill_frac", 0.3, 1.5)), seconds=dur)
        return cmd + (" --keep" if d.pick("keep", [False, True]) else "")
    if variant == "crash":
        how = d.pick("how", ["segv", "abort", "exception", "exit1", "exit2", "exit3"])
        cmd = _work(paths, "crash", mb=int(mem * d.u("mem_frac", 0.1, 0.5)), seconds=dur,
                    at_s=round(dur * d.u("at_frac", 0.05, 1.4), 1), how=how, share=share)
        return ("exec " if d.pick("exec", [False, True]) else "") + cmd
    if variant == "procs":
        n = d.i("n", 4, 48)
        return _work(paths, "procs", n=n, each_mb=d.i("each_mb", 2, 12),
                     every_s=round(dur * d.u("ramp_frac", 0.2, 0.9) / n, 2), seconds=dur)
    if variant == "threads":
        n = d.i("n", 10, 200)
        return _work(paths, "threads", n=n, each_mb=d.i("each_mb", 1, 4),
                     every_s=round(dur * d.u("ramp_frac", 0.2, 0.9) / n, 2), seconds=dur)
    if variant == "thrash":
        return _work(paths, "thrash", dir=paths.tmp, file_mb=min(768, int(mem * d.u("file_frac", 0.5, 1.5))),
                     touches=min(5_000_000, int(25_000 * limit_s * d.u("work_frac", 0.05, 0.3))),
                     seed=d.i("seed", 0, 10**6))
    raise ValueError(f"unknown variant {variant!r}")


_INNER = ["compute", "mem_grow", "crash", "stall"]
_ARRAY_INNER = ["compute", "sleepy", "mem_grow", "crash", "scratch_fill", "stall"]


def _habits(users: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Each user's leaning towards each shape (a factor 0.3-2), from the seed."""
    rng = random.Random(f"habits:{seed}")
    first = [s for s in SHAPES if s not in LATER_SHAPES]
    lean = {u: {s: rng.uniform(0.3, 2.0) for s in first} for u in users}
    for s in LATER_SHAPES:
        for u in users:
            lean[u][s] = rng.uniform(0.3, 2.0)
    return lean


def _mix(index: int) -> dict[str, float]:
    """The shapes (and weights) job ``index`` of a plan draws from (``LATER_SHAPES``)."""
    return {s: w for s, w in SHAPES.items() if index >= LATER_SHAPES.get(s, 0)}


def job(index: int, users: list[str], seed: int, paths: Paths,
        lean: dict[str, dict[str, float]] | None = None) -> CorpusJob:
    """Plan job ``index`` (deterministic in ``seed``, ``index`` and ``users``)."""
    lean = lean or _habits(users, seed)
    rng = random.Random(f"job:{seed}:{index}")
    mix = _mix(index)
    shape = rng.choices(list(mix), weights=list(mix.values()))[0]
    user = rng.choices(users, weights=[lean[u][shape] for u in users])[0]
    habit = HABITS.get(user, DEFAULT_HABIT)
    d = _Draw(rng)
    limit_min = d.rng.choices(*habit["limits"])[0]
    mem = d.rng.choice(habit["mem"])
    cpus = d.rng.choice(habit["cpus"])
    limit_s = 60.0 * limit_min
    dur = round(min(1200.0, max(30.0, limit_s * d.u("frac", *habit["frac"]))), 1)
    options = [f"--mem={mem}M", f"--time={limit_min}", f"--cpus-per-task={cpus}",
               f"--job-name={d.rng.choice(habit['names'])}"]
    out = f"--output={paths.out}/lab-%j.out"
    cancel_after = None
    array_variants: tuple[str, ...] = ()
    if shape == "multinode":
        variant = d.pick("inner", _INNER)
        body = "srun " + _variant(variant, d, paths, mem, limit_s, dur).removeprefix("exec ")
        options += ["--nodes=2", "--ntasks-per-node=1"]
    elif shape == "array":
        k = d.i("tasks", 2, 5)
        array_variants = tuple(d.rng.choice(_ARRAY_INNER) for _ in range(k))
        cases = []
        for t, v in enumerate(array_variants):
            sub = _Draw(d.rng)
            cases.append(f"  {t}) {_variant(v, sub, paths, mem, limit_s, dur)} ;;")
            d.params[f"task{t}"] = {"variant": v, **sub.params}
        body = 'case "$SLURM_ARRAY_TASK_ID" in\n' + "\n".join(cases) + "\nesac"
        variant = "+".join(array_variants)
        options.append(f"--array=0-{k - 1}")
        out = f"--output={paths.out}/lab-%A_%a.out"
    elif shape == "cancel":
        variant = "compute"
        body = _variant(variant, d, paths, mem, limit_s, dur)
        cancel_after = round(dur * d.u("cancel_frac", 0.1, 1.3), 1)
    else:
        variant = shape
        body = _variant(variant, d, paths, mem, limit_s, dur)
    return CorpusJob(index, shape, variant, user, (*options, out), f"#!/bin/bash\n{body}\n",
                     cancel_after, d.params, array_variants)


def plan(n_jobs: int, users: list[str], seed: int, paths: Paths) -> list[CorpusJob]:
    """Jobs ``0 .. n_jobs - 1`` of the plan of ``seed``."""
    lean = _habits(users, seed)
    return [job(i, users, seed, paths, lean) for i in range(n_jobs)]
