"""The lab corpus: its plan (``nomade.tools.lab.shapes``), the workloads jobs run
(``nomade.tools.lab.work``, run for real here) and the ledger's shape metadata."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nomade.tools.lab import shapes, work
from nomade.tools.lab.record import Ledger, ledger_meta

USERS = ["nomadetest", "nomadelab1", "nomadelab2", "nomadelab3"]
PATHS = shapes.Paths(work="/w/work.py", tmp="/w/tmp", scratch=("/w/s0", "/w/s1"), out="/o")


def test_a_plan_is_deterministic_and_a_longer_one_begins_with_it() -> None:
    long = shapes.plan(80, USERS, seed=3, paths=PATHS)
    assert shapes.plan(20, USERS, seed=3, paths=PATHS) == long[:20]
    assert shapes.plan(20, USERS, seed=4, paths=PATHS) != long[:20]
    assert [j.index for j in long] == list(range(80))


def test_every_shape_and_user_appears_a_later_shape_only_from_its_index() -> None:
    start = max(shapes.LATER_SHAPES.values())
    jobs = shapes.plan(start + 600, USERS, seed=1, paths=PATHS)
    assert set(Counter(j.shape for j in jobs[start:])) == set(shapes.SHAPES)
    assert set(Counter(j.user for j in jobs)) == set(USERS)
    for shape, first in shapes.LATER_SHAPES.items():
        assert all(j.shape != shape for j in jobs[:first])


def test_the_recorded_part_of_the_shipped_corpus_plan_never_changes() -> None:
    """Jobs 0-1999 of seed 1 are the shipped corpus's first recording: a change to the
    plan (a new shape, a new draw) must leave them as they were, or a resumed recording
    would mix two plans. The digest is of the plan they were recorded from."""
    jobs = shapes.plan(2000, USERS, seed=1, paths=PATHS)
    text = repr([(j.index, j.shape, j.variant, j.user, j.options, j.script, j.cancel_after_s) for j in jobs])
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "7313cb2d8803fdc5a73367aaef261ead362e8f374483a1f66d0d6599178487f0"


def _request(job: shapes.CorpusJob) -> tuple[str, ...]:
    return tuple(o for o in job.options if o.split("=")[0] in ("--mem", "--time", "--cpus-per-task"))


def test_a_users_request_is_drawn_the_same_way_whatever_the_shape() -> None:
    """Per user, the share of each (mem, time, cpus) choice is alike in failing-prone and
    healthy shapes: the request alone does not tell them apart."""
    jobs = shapes.plan(6000, USERS, seed=2, paths=PATHS)
    risky = {"mem_grow", "leak", "stall", "starve", "scratch_fill", "crash", "procs", "threads"}
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
    ("mem_grow", "end_frac", 1.0), ("leak", "end_frac", 1.0), ("stall", "total_over_limit", 1.0),
    ("starve", "total_over_limit", 1.0),
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


# ------------------------------------------------------------------ the recorder, against a fake Slurm
def _fake_slurm(tmp_path: Path, jobs: list[dict]) -> Path:
    """squeue that prints ``jobs`` (rewritable through the returned JSON file); scancel
    that appends its argument to ``cancelled``."""
    import stat
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    listing = tmp_path / "squeue.json"
    listing.write_text(json.dumps({"jobs": jobs}))
    (bin_dir / "squeue").write_text(f"#!/bin/sh\ncat {listing}\n")
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$1\" >> {tmp_path}/cancelled\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return listing


def _raw(job_id: int, state: str, array_job: int = 0, task: int | None = None) -> dict:
    return {"job_id": job_id, "job_state": state, "array_job_id": array_job, "array_task_id": task}


def _recorder(tmp_path: Path, n_jobs: int, events: list[dict]):
    from nomade.slurm import Slurm
    from nomade.tools.lab.record import Recorder
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "plan.jsonl").write_text("".join(json.dumps({"ts": 0, **e}) + "\n" for e in events))
    rec = Recorder(ws, n_jobs, seed=1, max_running=4, poll_s=0)
    rec.slurm = Slurm(bin_dir=str(tmp_path / "bin"), use_pyslurm="never")
    return rec


def test_resume_skips_recorded_jobs_adopts_running_ones_and_redoes_the_rest(tmp_path: Path) -> None:
    _fake_slurm(tmp_path, [_raw(12, "RUNNING")])
    sub = {"event": "submit", "seed": 1, "shape": "compute", "variant": "compute", "user": "u", "array_variants": []}
    rec = _recorder(tmp_path, 6, [
        {**sub, "index": 0, "job_id": "10"}, {"event": "end", "index": 0, "job_id": "10", "states": {"10": "COMPLETED"}},
        {**sub, "index": 1, "job_id": "11"}, {"event": "recorder_cancel", "index": 1, "job_id": "11"},
        {"event": "end", "index": 1, "job_id": "11", "states": {"11": "CANCELLED"}},
        {**sub, "index": 2, "job_id": "12"},       # Slurm still runs it
        {**sub, "index": 3, "job_id": "13"}])      # Slurm forgot it (a restarted cluster)
    todo = rec.todo()
    assert [j.index for j in todo] == [1, 3, 4, 5]
    assert list(rec.live) == ["12"] and rec.live["12"].job.index == 2
    assert [e["job_id"] for e in rec.ledger.events if e["event"] == "lost"] == ["13"]


def _earlier_corpus(path: Path) -> Path:
    """A corpus of plan indices 0 and 2 (an array of two tasks) of seed 1 and 3 of seed 2,
    recorded in one period, job ids up to 42."""
    from nomade import corpus
    from nomade.history import HistoryRows
    jobs = [{"job_id": jid, "state": "COMPLETED", "nodes": ()} for jid in ("40", "41", "42", "7")]
    meta = {"40": {"shape": "compute", "variant": "compute", "plan_index": 0, "seed": 1, "user": "u"},
            "41": {"shape": "array", "variant": "compute", "plan_index": 2, "seed": 1, "user": "u"},
            "42": {"shape": "array", "variant": "crash", "plan_index": 2, "seed": 1, "user": "u"},
            "7": {"shape": "compute", "variant": "compute", "plan_index": 3, "seed": 2, "user": "u"}}
    corpus.write(path, HistoryRows(jobs=jobs), meta, made_by={
        "seed": 1, "plan_indices": [0, 3], "recorded": ["2026-12-04T13:39:06Z", "2026-12-04T23:59:06Z"]})
    return path


def test_a_recording_after_a_corpus_skips_its_plan_indices_and_starts_ids_above_its_own(
        tmp_path: Path) -> None:
    """``record --after CORPUS`` (its recording directory gone): the corpus's plan indices
    of this seed count as recorded, another seed's do not, job ids must exceed its own,
    and the ledger remembers the corpus for a resume without the flag."""
    from nomade.slurm import Slurm
    from nomade.tools.lab.record import Recorder
    _fake_slurm(tmp_path, [])
    earlier = _earlier_corpus(tmp_path / "c.npz")
    (tmp_path / "ws").mkdir()
    for after in (earlier, None):       # the first run, then a resume that forgot --after
        rec = Recorder(tmp_path / "ws", 5, seed=1, max_running=4, poll_s=0, after=after)
        rec.slurm = Slurm(bin_dir=str(tmp_path / "bin"), use_pyslurm="never")
        assert [j.index for j in rec.todo()] == [1, 3, 4] and rec.job_id_floor() == 42
    assert [e["event"] for e in rec.ledger.events] == ["after"]
    with pytest.raises(SystemExit, match="no job of seed 3"):
        Recorder(tmp_path / "other", 5, seed=3, max_running=4, after=earlier)


def test_an_export_after_a_corpus_merges_its_header_and_refuses_an_index_recorded_twice(
        tmp_path: Path) -> None:
    from nomade import corpus
    from nomade.tools.lab.record import _made_by, export
    earlier = _earlier_corpus(tmp_path / "c.npz")
    sub = {"event": "submit", "seed": 1, "shape": "compute", "variant": "compute", "user": "u", "array_variants": []}
    events = [{"event": "after", "ts": 0, "corpus": str(earlier)},
              {**sub, "ts": 1764900000, "index": 1, "job_id": "43"},
              {"event": "end", "ts": 1764900060, "index": 1, "job_id": "43", "states": {"43": "COMPLETED"}}]
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "plan.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    made_by = _made_by(Ledger(ws / "plan.jsonl"), ws, corpus.read(earlier))
    assert made_by["plan_indices"] == [0, 3] and made_by["seed"] == [1, 2]
    assert made_by["recorded"] == [["2026-12-04T13:39:06Z", "2026-12-04T23:59:06Z"],
                                   ["2025-12-05T02:00:00Z", "2025-12-05T02:01:00Z"]]
    again = {**sub, "ts": 2, "index": 2, "job_id": "44"}
    (ws / "plan.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [*events, again, {
        "event": "end", "ts": 3, "index": 2, "job_id": "44", "states": {"44": "COMPLETED"}}]))
    with pytest.raises(SystemExit, match=r"plan indices already in .*c.npz: \[2\]"):
        export(["--dir", str(ws), "--out", str(tmp_path / "out.npz")])


def test_poll_records_array_tasks_by_own_id_and_cancels_a_due_cancel_job(tmp_path: Path) -> None:
    from nomade.tools.lab.record import Live
    listing = _fake_slurm(tmp_path, [_raw(51, "COMPLETED", 50, 0), _raw(50, "RUNNING", 50, 1),
                                     _raw(60, "RUNNING")])
    rec = _recorder(tmp_path, 0, [])
    array = shapes.CorpusJob(7, "array", "compute+crash", "u", (), "", array_variants=("compute", "crash"))
    cancel = shapes.CorpusJob(8, "cancel", "compute", "u", (), "", cancel_after_s=0.0)
    rec.live = {"50": Live(array, "50", size=2), "60": Live(cancel, "60")}
    rec.poll()
    assert rec.running() == 2 and (tmp_path / "cancelled").read_text().split() == ["60"]
    listing.write_text(json.dumps({"jobs": [_raw(51, "COMPLETED", 50, 0), _raw(50, "FAILED", 50, 1),
                                            _raw(60, "CANCELLED")]}))
    rec.poll()
    assert rec.live == {}
    ev = {(e["event"], e["job_id"]): e for e in rec.ledger.events}
    assert ev["array_tasks", "50"]["tasks"] == {"0": "51", "1": "50"}
    assert ev["end", "50"]["states"] == {"51": "COMPLETED", "50": "FAILED"}
    assert ev["end", "60"]["states"] == {"60": "CANCELLED"}
    assert ledger_meta(rec.ledger) == {}        # no submit events here: nothing to describe


def test_a_job_id_the_store_already_holds_stops_the_recorder(tmp_path: Path) -> None:
    """A restarted cluster begins ids again: the recorder cancels the job and stops rather
    than merging a new job into an old one's row."""
    _fake_slurm(tmp_path, [])
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\ncat > /dev/null; echo 5\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    rec = _recorder(tmp_path, 1, [])
    rec.id_floor = 40
    job = shapes.job(0, USERS, 1, PATHS)
    with pytest.raises(SystemExit, match="--first-job-id 41"):
        rec.submit(_as_me(job))
    assert (tmp_path / "cancelled").read_text().split() == ["5"] and rec.live == {}
    rec.id_floor = 4
    assert rec.submit(_as_me(job)) == "5" and list(rec.live) == ["5"]


def _as_me(job: shapes.CorpusJob) -> shapes.CorpusJob:
    """The job submitted as the current user (the fake sbatch runs without runuser)."""
    import dataclasses
    return dataclasses.replace(job, user=None)  # type: ignore[arg-type]
