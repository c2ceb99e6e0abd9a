"""The lab corpus: its plan (``nomade.lab.shapes``), the workloads jobs run
(``nomade.lab.work``, run for real here) and the ledger's shape metadata."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nomade.lab import shapes, work
from nomade.lab.record import Ledger, ledger_meta

USERS = ["nomadetest", "nomadelab1", "nomadelab2", "nomadelab3"]
PATHS = shapes.Paths(work="/w/work.py", tmp="/w/tmp", scratch=("/w/s0", "/w/s1"), out="/o")


def test_a_plan_is_deterministic_and_a_longer_one_begins_with_it() -> None:
    long = shapes.plan(80, USERS, seed=3, paths=PATHS)
    assert shapes.plan(20, USERS, seed=3, paths=PATHS) == long[:20]
    assert shapes.plan(20, USERS, seed=4, paths=PATHS) != long[:20]
    assert [j.index for j in long] == list(range(80))


def test_every_shape_and_user_appears_in_a_plan_of_a_few_hundred() -> None:
    jobs = shapes.plan(600, USERS, seed=1, paths=PATHS)
    assert set(Counter(j.shape for j in jobs)) == set(shapes.SHAPES)
    assert set(Counter(j.user for j in jobs)) == set(USERS)


def _request(job: shapes.CorpusJob) -> tuple[str, ...]:
    return tuple(o for o in job.options if o.split("=")[0] in ("--mem", "--time", "--cpus-per-task"))


def test_a_users_request_is_drawn_the_same_way_whatever_the_shape() -> None:
    """Per user, the share of each (mem, time, cpus) choice is alike in failing-prone and
    healthy shapes: the request alone does not tell them apart."""
    jobs = shapes.plan(6000, USERS, seed=2, paths=PATHS)
    risky = {"mem_grow", "stall", "starve", "scratch_fill", "crash", "procs", "threads"}
    healthy = {"compute", "sleepy", "io_tmp", "mem_steady"}
    def shares(user: str, opt: str, group: set[str]) -> Counter[str]:
        vals = [o for j in jobs if j.user == user and j.shape in group for o in _request(j) if o.startswith(opt)]
        return Counter({k: v / len(vals) for k, v in Counter(vals).items()})
    for user in USERS:
        for opt in ("--mem", "--time"):
            a, b = shares(user, opt, risky), shares(user, opt, healthy)
            assert set(a) == set(b), (user, opt)
            assert max(abs(a[k] - b[k]) for k in a) < 0.08, (user, opt, a, b)


@pytest.mark.parametrize(("shape", "param", "edge"), [
    ("mem_grow", "end_frac", 1.0), ("stall", "total_over_limit", 1.0), ("starve", "total_over_limit", 1.0),
    ("crash", "at_frac", 1.0), ("scratch_fill", "fill_frac", 134 / shapes.SCRATCH_MB),
    ("cancel", "cancel_frac", 1.0)])
def test_the_drawn_parameters_fall_on_both_sides_of_the_outcome(shape: str, param: str, edge: float) -> None:
    """The shape does not decide the outcome: its key parameter lands on either side of
    the point where the job would fail (memory at --mem, the time limit, a full disk)."""
    vals = [j.params[param] for j in shapes.plan(3000, USERS, seed=5, paths=PATHS) if j.shape == shape]
    below = sum(v < edge for v in vals) / len(vals)
    assert 0.15 < below < 0.85, (shape, below)


def _work(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, work.__file__, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize(("how", "code"), [("segv", -signal.SIGSEGV), ("abort", -signal.SIGABRT),
                                           ("exception", 1), ("exit3", 3)])
def test_a_crash_dies_the_drawn_way_at_its_point(how: str, code: int) -> None:
    done = _work("crash", "--mb", "2", "--seconds", "5", "--at-s", "0.2", "--how", how, "--share", "0.05")
    assert done.returncode == code and "crashing" in done.stderr


def test_a_crash_point_after_the_work_is_a_clean_end() -> None:
    done = _work("crash", "--mb", "2", "--seconds", "0.3", "--at-s", "0.6", "--how", "segv", "--share", "0.05")
    assert done.returncode == 0 and done.stderr == ""


def test_a_failed_write_ends_the_job_with_status_1(tmp_path: Path) -> None:
    """A full filesystem (here RLIMIT_FSIZE: the write fails with EFBIG as it would with
    ENOSPC) ends the job with status 1; a write that fits ends it with 0."""
    import resource

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
    args = [sys.executable, work.__file__, "write", "--dir", str(tmp_path / "out"), "--seconds", "1", "--total-mb"]
    ok = subprocess.run([*args, "1"], preexec_fn=cap, capture_output=True, text=True, timeout=30, check=False)
    assert ok.returncode == 0 and list((tmp_path / "out").iterdir()) == []   # removed at the end
    full = subprocess.run([*args, "8"], preexec_fn=cap, capture_output=True, text=True, timeout=30, check=False)
    assert full.returncode == 1 and "failed" in full.stderr


def test_memory_growth_past_a_limit_kills_the_job() -> None:
    """A memory limit (here RLIMIT_AS, in Slurm the cgroup) meets the growth or not."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))
    args = [sys.executable, work.__file__, "grow", "--start-mb", "10", "--seconds", "2", "--hold-s", "0",
            "--share", "0.01", "--end-mb"]
    assert subprocess.run([*args, "60"], preexec_fn=cap, capture_output=True, timeout=30, check=False).returncode == 0
    big = subprocess.run([*args, "900"], preexec_fn=cap, capture_output=True, text=True, timeout=30, check=False)
    assert big.returncode != 0 and "MemoryError" in big.stderr


def test_storms_are_capped() -> None:
    assert work.MAX_PROCS <= 64 and work.MAX_THREADS <= 256
    done = _work("procs", "--n", "500", "--each-mb", "1", "--every-s", "0", "--seconds", "1.5")
    assert done.returncode == 0


def test_the_ledger_gives_each_ended_job_its_shape_array_tasks_by_own_id(tmp_path: Path) -> None:
    events = [
        {"event": "submit", "index": 0, "job_id": "10", "seed": 1, "shape": "mem_grow", "variant": "mem_grow",
         "user": "u1", "array_variants": []},
        {"event": "submit", "index": 1, "job_id": "11", "seed": 1, "shape": "array", "variant": "compute+crash",
         "user": "u2", "array_variants": ["compute", "crash"]},
        {"event": "submit", "index": 2, "job_id": "13", "seed": 1, "shape": "stall", "variant": "stall",
         "user": "u1", "array_variants": []},
        {"event": "submit", "index": 3, "job_id": "14", "seed": 1, "shape": "crash", "variant": "crash",
         "user": "u3", "array_variants": []},
        {"event": "end", "index": 0, "job_id": "10", "shape": "mem_grow", "states": {"10": "OUT_OF_MEMORY"}},
        {"event": "array_tasks", "index": 1, "job_id": "11", "tasks": {"0": "12", "1": "11"}},
        {"event": "end", "index": 1, "job_id": "11", "shape": "array", "states": {"11": "FAILED", "12": "COMPLETED"}},
        {"event": "recorder_cancel", "index": 2, "job_id": "13"},
        {"event": "end", "index": 2, "job_id": "13", "shape": "stall", "states": {"13": "CANCELLED"}},
    ]
    (tmp_path / "plan.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "sub')
    meta = ledger_meta(Ledger(tmp_path / "plan.jsonl"))
    assert set(meta) == {"10", "11", "12"}          # 13 cancelled by the recorder, 14 still running
    assert meta["12"]["variant"] == "compute" and meta["11"]["variant"] == "crash"
    assert meta["11"]["shape"] == "array" and meta["10"] == {
        "shape": "mem_grow", "variant": "mem_grow", "plan_index": 0, "seed": 1, "user": "u1"}
