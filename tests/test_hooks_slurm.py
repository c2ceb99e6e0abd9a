"""Hooks on the real test cluster: each way a job ends reaches the store once, with the
right final state and label, both from jobcomp and from asking Slurm (final-state poller).

Other tests share the cluster's spools, so only this test's jobs are drained.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from nomade import jobenv
from nomade.agent.hook_drain import drain_spool
from nomade.agent.outcomes import FinalStateTracker, poll_once
from nomade.spool import Spool
from nomade.store import Store, StoreError

pytestmark = pytest.mark.slurm
RUN = Path(os.environ.get("NOMADE_TEST_CLUSTER", "/tmp/nomade-cluster"))
USER = os.environ.get("NOMADE_TEST_USER", "nomadetest")
SCENARIOS = {  # name: (sbatch options, script, expected final state)
    "success": ([], "true", "COMPLETED"),
    "exit3": ([], "exit 3", "FAILED"),
    "cancelled": ([], "sleep 300", "CANCELLED"),
    "oom": (["--mem=20M"], "head -c 400M /dev/zero | tail; sleep 2", "OUT_OF_MEMORY"),
    "step_failed": ([], "srun false; exit 0", "COMPLETED"),
}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Path:
    """The project's cluster via conftest's ``slurm_cluster``, or the same checks inline."""
    try:
        request.getfixturevalue("slurm_cluster")
    except pytest.FixtureLookupError:
        if os.geteuid() != 0:
            pytest.skip("needs root (the test cluster runs as root)")
        if subprocess.run(["/usr/bin/scontrol", "ping"], capture_output=True).returncode != 0:
            pytest.skip("test cluster not up: slurm-conf/start-test-cluster.sh")
    return RUN


def sbatch(opts: list[str], script: str) -> str:
    out = subprocess.run(
        ["/usr/sbin/runuser", "-u", USER, "--", "/usr/bin/sbatch", "--parsable",
         f"--output={RUN}/out/%j.out", *opts, "--wrap", script],
        capture_output=True, text=True, check=True, cwd="/tmp")
    return out.stdout.strip().split(";")[0]


def wait_gone(job_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["/usr/bin/squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True).stdout
        if not any(s in out for s in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")):
            return
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} still active after {timeout_s} s")


def wait_until(done, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(0.3)


def is_running(job_id: str) -> bool:
    out = subprocess.run(["/usr/bin/squeue", "-h", "-o", "%T", "-j", job_id],
                         capture_output=True, text=True).stdout
    return out.strip() == "RUNNING"


def ours(ids: set[str], hooks: set[str]):  # type: ignore[no-untyped-def]
    return lambda rec: jobenv.job_id(rec) in ids and jobenv.hook_of(rec) in hooks


def wait_drained(spool: Spool, ids: set[str], hooks: set[str], want: int, db: Store) -> int:
    """Drain this test's events until ``want`` arrived (hooks finish after squeue says so)."""
    got, deadline = 0, time.monotonic() + 30
    while got < want and time.monotonic() < deadline:
        got += drain_spool(spool, db, "test", accept=ours(ids, hooks), limit=100_000)
        time.sleep(0.5)
    return got


def test_every_ending_reaches_the_store_once_with_its_final_state(cluster: Path,
                                                                  tmp_path: Path) -> None:
    jobs = {name: sbatch(opts, script) for name, (opts, script, _) in SCENARIOS.items()}
    ids = set(jobs.values())
    wait_until(lambda: is_running(jobs["cancelled"]), 60, "the job to cancel runs")
    subprocess.run(["/usr/bin/scancel", jobs["cancelled"]], check=True)
    wait_gone(list(ids), 120)
    node, ctld = Spool(cluster / "spool/node"), Spool(cluster / "spool/ctld")

    # 1. jobcomp knows the final state: ctld spool only.
    with Store(tmp_path / "jobcomp.db") as db:
        n = wait_drained(ctld, ids, {"prolog_slurmctld", "epilog_slurmctld", "jobcomp"},
                         3 * len(ids), db)
        assert n >= 2 * len(ids)  # a job cancelled while pending has no prolog
        for name, job_id in jobs.items():
            job = db.get_job(job_id)
            want = SCENARIOS[name][2]
            assert job is not None and job.state == want, (name, job)
            assert job.label == (0 if want == "COMPLETED" else 1)
        assert db.counts()["jobs"] == len(ids)

    # 2. Only the node hooks (no state in their environment): the poller asks Slurm.
    with Store(tmp_path / "poll.db") as db:
        wait_drained(node, ids, {"prolog", "epilog"}, 2 * len(ids), db)
        assert {j.job_id for j in db.jobs_awaiting_final_state()} == ids
        from nomade.slurm import Slurm
        tracker = FinalStateTracker(first_delay_s=0.5)
        deadline = time.monotonic() + 60
        while db.jobs_awaiting_final_state() and time.monotonic() < deadline:
            poll_once(tracker, db, Slurm(), time.time())
            time.sleep(0.5)
        for name, job_id in jobs.items():
            job = db.get_job(job_id)
            assert job is not None and job.state == SCENARIOS[name][2], (name, job)
            assert job.state_source == "slurm"
        assert db.counts()["jobs"] == len(ids)


@pytest.mark.slow
def test_time_limit_reaches_the_store_as_timeout(cluster: Path, tmp_path: Path) -> None:
    job_id = sbatch(["--time=1"], "sleep 600")
    wait_gone([job_id], 180)
    with Store(tmp_path / "t.db") as db:
        wait_drained(Spool(cluster / "spool/ctld"), {job_id}, {"jobcomp"}, 1, db)
        job = db.get_job(job_id)
    assert job is not None and (job.state, job.label) == ("TIMEOUT", 1)


def drained_nodes() -> list[str]:
    """Nodes sinfo shows as drained, draining or down (a failed hook drains its node)."""
    out = subprocess.run(["/usr/bin/sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines()
            if any(s in line.split()[-1] for s in ("drain", "drng", "down"))]


@pytest.mark.parametrize("broken", ["missing", "not a directory"])
def test_a_broken_node_spool_neither_fails_the_job_nor_drains_the_node(
        cluster: Path, broken: str) -> None:
    """The node spool missing, or a plain file where the directory should be (root writes
    through any mode bits, so chmod would not stop the root-run Prolog), for a few seconds:
    the hooks still exit 0, the job completes, no node drains. The spool is always put
    back; events other tests' jobs wrote meanwhile are moved back into it."""
    spool = cluster / "spool/node"
    aside = spool.with_name(f"node.aside-{os.getpid()}")
    assert not drained_nodes()
    spool.rename(aside)
    try:
        if broken == "not a directory":
            spool.write_text("not a spool\n")
        job_id = sbatch([], "true")
        wait_gone([job_id], 60)
    finally:
        if spool.is_dir():   # a hook (re)made it: keep what was written there
            for item in spool.iterdir():
                item.rename(aside / item.name)
            spool.rmdir()
        elif spool.exists():
            spool.unlink()
        aside.rename(spool)
    state = subprocess.run(["/usr/bin/squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                           capture_output=True, text=True).stdout.strip()
    assert state == "COMPLETED"
    assert not drained_nodes()


@pytest.mark.slow
def test_an_agent_killed_while_jobs_start_and_end_loses_and_doubles_no_event(
        cluster: Path, tmp_path: Path) -> None:
    """``nomade agent`` drains the controller spool; it is killed (SIGKILL, no clean
    shutdown) while this test's jobs start and end, and restarted: every job ends up in
    the store once, with its start, end and jobcomp state, and none of its events is left
    in the spool. (The agent drains the shared spool: other tests' events land in its
    store too, which is harmless.)"""
    import sys

    config = tmp_path / "nomade.toml"
    config.write_text(f'[agent]\ningest_endpoint = "tcp://127.0.0.1:*"\n'
                      f'publish_endpoint = "tcp://127.0.0.1:*"\nmetrics_address = ""\n'
                      f'spool_dirs = ["{cluster / "spool/ctld"}"]\n'
                      f'[storage]\ndb_path = "{tmp_path / "agent.db"}"\n'
                      '[security]\ncurve_enabled = false\n')   # loopback only, no client here

    def agent() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "nomade", "--config", str(config),
                                 "agent", "--no-slurm"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def stored_any() -> bool:
        try:  # the agent may not have created or migrated the file yet
            with Store(tmp_path / "agent.db", readonly=True) as db:
                return any(db.get_job(j) is not None for j in ids)
        except StoreError:
            return False

    proc = agent()
    ids = [sbatch([], f"sleep {1 + k % 3}") for k in range(6)]
    try:
        wait_until(stored_any, 60, "the agent stores the first jobs' events")
        proc.kill()  # mid-way: some of the six are stored, the rest still run or end
        proc.wait()
        late = [sbatch([], "sleep 1") for _ in range(2)]
        wait_gone(late, 120)  # they start and end while no agent drains the spool
        ids += late
        proc = agent()
        wait_gone(ids, 120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with Store(tmp_path / "agent.db", readonly=True) as db:
                jobs = {j: db.get_job(j) for j in ids}
            if all(job is not None and job.state for job in jobs.values()):
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for job_id, job in jobs.items():
        assert job is not None and job.state == "COMPLETED" and job.label == 0, (job_id, job)
        assert job.start_ts is not None and job.end_ts is not None and job.end_ts >= job.start_ts
        assert job.state_source == "jobcomp"
    left = [item for item in Spool(cluster / "spool/ctld").take(100_000)
            if jobenv.job_id(item.record) in set(ids)]
    assert left == []
