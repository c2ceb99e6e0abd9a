"""nomade.slurm: parsing of both squeue JSON shapes, and the real test cluster end to end."""

from __future__ import annotations

import sys
import time

import pytest
from slurmtools import SlurmCluster, submit, wait_final, wait_state

from nomade.agent import comment_segment
from nomade.slurm import (
    FinalState,
    JobFinished,
    JobNotFound,
    Slurm,
    SlurmError,
    expand_hostlist,
    job_from_json,
    parse_scontrol_record,
    pyslurm_mismatch,
)

MIB = 1024**2

# ------------------------------------------------------------------ without a cluster

#: One job of `squeue --json` from Slurm 22.05.8 (openapi v0.0.38), trimmed to the used keys.
V0038_FAILED = {
    "account": "", "array_job_id": 0, "array_task_id": None, "comment": "user note",
    "cpus": 1, "end_time": 1795917884, "exit_code": 768, "job_id": 3, "job_state": "FAILED",
    "name": "wrap", "node_count": 1, "nodes": "n1", "partition": "debug",
    "start_time": 1795917884, "submit_time": 1795917883, "time_limit": 5,
    "tres_req_str": "cpu=1,mem=100M,node=1,billing=1", "user_id": 1000, "user_name": "u1",
}

#: The same kind of job as Slurm 23.11+ prints it (numbers as set/infinite/number objects).
V0040_RUNNING_ARRAY = {
    "account": "physics", "array_job_id": {"set": True, "infinite": False, "number": 40},
    "array_task_id": {"set": True, "infinite": False, "number": 7}, "comment": "",
    "cpus": {"set": True, "infinite": False, "number": 8},
    "end_time": {"set": True, "infinite": False, "number": 1700003600},
    "exit_code": {"status": ["PENDING"], "return_code": {"set": False, "infinite": False, "number": 0},
                  "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""}},
    "job_id": 47, "job_state": ["RUNNING"], "name": "train",
    "node_count": {"set": True, "infinite": False, "number": 2}, "nodes": "gpu[01-02]",
    "partition": "gpu", "start_time": {"set": True, "infinite": False, "number": 1700000000},
    "submit_time": {"set": True, "infinite": False, "number": 1699999990},
    "time_limit": {"set": True, "infinite": False, "number": 60},
    "tres_req_str": "cpu=8,mem=64G,node=2,billing=8,gres/gpu=4,gres/gpu:a100=4",
    "user_id": 1001, "user_name": "u2",
}


def test_hostlists() -> None:
    assert expand_hostlist("n[1-3,5],gpu[01-02],login") == ["n1", "n2", "n3", "n5", "gpu01", "gpu02", "login"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("") == []
    for bad in ("n[1-", "n[3-1]", "n[a]", "n]"):
        with pytest.raises(ValueError):
            expand_hostlist(bad)


def test_json_of_slurm_22_05() -> None:
    job = job_from_json(V0038_FAILED)
    assert (job.job_id, job.user, job.uid, job.state, job.nodes) == ("3", "u1", 1000, "FAILED", ["n1"])
    assert (job.req_cpus, job.req_mem_bytes, job.req_gpus, job.time_limit_s) == (1, 100 * MIB, 0, 300.0)
    assert (job.exit_code, job.exit_signal, job.end_ts) == (3, 0, 1795917884.0)
    assert job.account is None and job.comment == "user note"


def test_json_of_slurm_23_11_and_later() -> None:
    job = job_from_json(V0040_RUNNING_ARRAY)
    assert (job.job_id, job.state, job.nodes, job.num_nodes) == ("40_7", "RUNNING", ["gpu01", "gpu02"], 2)
    assert (job.req_cpus, job.req_mem_bytes, job.req_gpus) == (8, 64 * 1024 * MIB, 4)
    assert (job.time_limit_s, job.start_ts, job.submit_ts) == (3600.0, 1700000000.0, 1699999990.0)
    # while running, Slurm's end_time is a forecast and the exit code is not known yet
    assert (job.end_ts, job.exit_code, job.exit_signal) == (None, None, None)
    ended = job_from_json({**V0040_RUNNING_ARRAY, "job_state": ["OUT_OF_MEMORY"], "exit_code": {
        "status": ["SIGNALED"], "return_code": {"set": True, "infinite": False, "number": 0},
        "signal": {"id": {"set": True, "infinite": False, "number": 125}, "name": ""}}})
    assert (ended.state, ended.exit_code, ended.exit_signal) == ("OUT_OF_MEMORY", 0, 125)
    unlimited = job_from_json({**V0040_RUNNING_ARRAY, "time_limit": {"set": True, "infinite": True, "number": 0}})
    assert unlimited.time_limit_s is None


def test_scontrol_records() -> None:
    line = ("JobId=4 JobName=my job UserId=root(0) ExitCode=0:125 AllocNode:Sid=localhost:3881 "
            "TRES=cpu=1,mem=50M,node=1 CPUs/Task=1 Comment=a \"q\"  StdErr=/dev/null Power=")
    rec = parse_scontrol_record(line)
    assert rec["JobName"] == "my job" and rec["ExitCode"] == "0:125"
    assert rec["AllocNode:Sid"] == "localhost:3881" and rec["TRES"] == "cpu=1,mem=50M,node=1"
    assert rec["CPUs/Task"] == "1" and rec["Comment"] == 'a "q"' and rec["Power"] == ""


def test_an_array_task_is_known_by_its_own_id_too() -> None:
    """Hooks, cgroups and the store know an array task by its own id (47); squeue shows
    it as 40_7. Both are kept."""
    assert (job_from_json(V0040_RUNNING_ARRAY).job_id, job_from_json(V0040_RUNNING_ARRAY).own_id) == ("40_7", "47")
    assert job_from_json(V0038_FAILED).own_id == "3"


def test_final_states_of_array_tasks_asked_by_their_own_ids(tmp_path) -> None:
    """A fake squeue (an executable file) that lists an ended array task and a plain job."""
    import json
    import stat
    task = {**V0038_FAILED, "job_id": 52, "array_job_id": 50, "array_task_id": 2}
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\ncat <<'EOF'\n" + json.dumps({"jobs": [task, V0038_FAILED]}) + "\nEOF\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    slurm = Slurm(bin_dir=str(tmp_path), use_pyslurm="never")
    assert [j.job_id for j in slurm.list_jobs(job_ids=["52"])] == ["50_2"]
    got = slurm.final_states(["52", "3", "50_2"])
    assert got["52"] == got["50_2"] == got["3"] == ("FAILED", 3)


def test_pyslurm_is_used_only_for_the_same_release() -> None:
    assert pyslurm_mismatch("25.11.0", "25.11.2") is None
    assert pyslurm_mismatch("23.2.2", "23.02.7") is None
    assert "does not match" in (pyslurm_mismatch("25.11.0", "22.05.8") or "")


def test_missing_tools_and_bad_ids_give_clear_errors(tmp_path) -> None:
    slurm = Slurm(bin_dir=str(tmp_path))
    with pytest.raises(SlurmError, match=f"squeue not found in {tmp_path}"):
        slurm.list_jobs()
    with pytest.raises(ValueError, match="not a Slurm job id"):
        slurm.show_job("1; rm -rf /")
    with pytest.raises(ValueError):
        Slurm(use_pyslurm="sometimes")


# ------------------------------------------------------------------ the real cluster

@pytest.fixture(scope="module")
def ending_jobs(slurm_cluster: SlurmCluster) -> dict[str, str]:
    """Jobs that end badly, submitted together so that their waits overlap."""
    c = slurm_cluster
    return {
        "timeout": submit(c, "sleep 300", "--time=1", "--mem=50M", as_user=c.test_user, name="t-timeout"),
        "oom": submit(c, "/usr/bin/python3 -c 'b = bytearray(400 * 2**20); import time; time.sleep(5)'",
                      "--mem=50M", "--time=2", as_user=c.test_user, name="t-oom"),
        "exit3": submit(c, "exit 3", "--mem=50M", "--time=2", as_user=c.test_user, name="t-exit3"),
    }


@pytest.mark.slurm
def test_submit_and_read_back(slurm_cluster: SlurmCluster) -> None:
    c, slurm = slurm_cluster, slurm_cluster.slurm
    before = time.time()
    job_id = submit(c, "sleep 60", "--time=5", "--mem=100M", "--cpus-per-task=1",
                    as_user=c.test_user, name="t-read")
    try:
        wait_state(slurm, job_id, ["RUNNING"], timeout=30)
        shown = slurm.show_job(job_id)
        assert shown["JobId"] == job_id and shown["JobName"] == "t-read"
        assert shown["UserId"].startswith(c.test_user + "(") and shown["JobState"] == "RUNNING"
        [job] = slurm.list_jobs([job_id])
        assert (job.job_id, job.name, job.user, job.partition, job.state) == (
            job_id, "t-read", c.test_user, "debug", "RUNNING")
        assert len(job.nodes) == 1 and job.nodes[0] in c.nodes
        assert (job.req_cpus, job.req_mem_bytes, job.req_gpus, job.time_limit_s) == (1, 100 * MIB, 0, 300.0)
        assert before - 1 <= job.submit_ts <= job.start_ts <= time.time() + 1
        assert (job.end_ts, job.exit_code) == (None, None)
        assert slurm.final_states([job_id]) == {job_id: None}
        assert job_id in {j.job_id for j in slurm.list_jobs(states=["RUNNING"])}
        assert job_id not in {j.job_id for j in slurm.list_jobs(states=["PENDING"])}
    finally:
        slurm.cancel(job_id)
    assert wait_final(slurm, job_id, timeout=30).state == "CANCELLED"


@pytest.mark.slurm
def test_multi_node_job(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    if len(c.nodes) < 2:
        pytest.skip("the test cluster was started with one node (--nodes 1)")
    job_id = submit(c, "srun /bin/true", "--nodes=2", "--mem=50M", "--time=2", name="t-multi")
    assert wait_final(c.slurm, job_id, timeout=60) == FinalState("COMPLETED", 0)
    [job] = c.slurm.list_jobs([job_id])
    assert len(job.nodes) == 2 and set(job.nodes) <= set(c.nodes) and job.num_nodes == 2


@pytest.mark.slurm
def test_comment_keeps_the_users_text(slurm_cluster: SlurmCluster) -> None:
    c, slurm = slurm_cluster, slurm_cluster.slurm
    mine = 'my note: keep=this "quoted" \\back\\slash  $HOME `x` ;'
    job_id = submit(c, "sleep 60", "--time=5", "--mem=50M", f"--comment={mine}",
                    as_user=c.test_user, name="t-comment")
    try:
        wait_state(slurm, job_id, ["RUNNING", "PENDING"], timeout=30)
        assert slurm.get_comment(job_id) == mine
        for text in ("risk high 0.74: memory grows", "risk low 0.12"):
            merged = comment_segment.merge(slurm.get_comment(job_id), text)
            slurm.set_comment(job_id, merged)
            stored = slurm.get_comment(job_id)
            assert stored == merged and comment_segment.extract(stored) == (mine, text)
        assert slurm.show_job(job_id)["Comment"].startswith("my note:")
        with pytest.raises(ValueError):
            slurm.set_comment(job_id, "x" * 1025)
    finally:
        slurm.cancel(job_id)
    wait_final(slurm, job_id, timeout=30)
    assert comment_segment.remove(slurm.get_comment(job_id)) == mine
    with pytest.raises(JobFinished, match="already finished"):
        slurm.set_comment(job_id, "late")


@pytest.mark.slurm
def test_unknown_jobs(slurm_cluster: SlurmCluster) -> None:
    slurm = slurm_cluster.slurm
    with pytest.raises(JobNotFound, match="Invalid job id"):
        slurm.show_job("987654321")
    with pytest.raises(JobNotFound):
        slurm.get_comment("987654321")
    assert slurm.final_states(["987654321"]) == {"987654321": None}
    assert slurm.list_jobs(["987654321"]) == []


@pytest.mark.slurm
def test_failed_exit_3(slurm_cluster: SlurmCluster, ending_jobs: dict[str, str]) -> None:
    assert wait_final(slurm_cluster.slurm, ending_jobs["exit3"], timeout=60) == FinalState("FAILED", 3)


@pytest.mark.slurm
def test_out_of_memory(slurm_cluster: SlurmCluster, ending_jobs: dict[str, str]) -> None:
    final = wait_final(slurm_cluster.slurm, ending_jobs["oom"], timeout=60)
    assert final.state == "OUT_OF_MEMORY"
    [job] = slurm_cluster.slurm.list_jobs([ending_jobs["oom"]])
    assert job.exit_signal == 125


@pytest.mark.slurm
@pytest.mark.slow
def test_timeout(slurm_cluster: SlurmCluster, ending_jobs: dict[str, str]) -> None:
    """--time=1 ends 64-79 s after the start (slurmctld checks limits every ~30 s)."""
    final = wait_final(slurm_cluster.slurm, ending_jobs["timeout"], timeout=150)
    assert final.state == "TIMEOUT"
    [job] = slurm_cluster.slurm.list_jobs([ending_jobs["timeout"]])
    assert job.end_ts - job.start_ts >= 60


def test_one_unknown_id_never_lists_every_job(tmp_path) -> None:
    """A real squeue-shaped script: it refuses a --jobs list holding an unknown id, as
    newer Slurm does; the query must narrow down, never drop --jobs."""
    calls = tmp_path / "calls"
    squeue = tmp_path / "squeue"
    squeue.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
open({str(calls)!r}, "a").write(" ".join(args) + "\\n")
jobs = [a.split("=", 1)[1].split(",") for a in args if a.startswith("--jobs=")]
if not jobs:
    sys.exit("listing every job")
if "999" in jobs[0]:
    sys.stderr.write("slurm_load_jobs error: Invalid job id specified\\n")
    sys.exit(1)
print(json.dumps({{"jobs": [{{"job_id": int(j), "job_state": ["COMPLETED"], "exit_code": 0}}
                            for j in jobs[0]]}}))
""")
    squeue.chmod(0o755)
    slurm = Slurm(bin_dir=str(tmp_path), use_pyslurm="never")
    ids = [str(i) for i in range(1, 17)] + ["999"]
    states = slurm.final_states(ids)
    assert states["999"] is None
    assert all(states[j] is not None and states[j].state == "COMPLETED" for j in ids[:-1])
    lines = calls.read_text().splitlines()
    assert all("--jobs=" in line for line in lines) and len(lines) <= 2 * 5 + 1
