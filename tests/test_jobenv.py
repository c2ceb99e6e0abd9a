"""nomade.jobenv: hook environments (as Slurm 22.05 sets them) -> job.start / job.end bodies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomade import jobenv

# What each hook sees (/work/shared/slurm/README.md), for job 42 of user u1 (uid 1001)
# on two nodes, 2 CPUs on the first and 1 on the second, ended by `exit 3`.
COMMON = {"SLURM_JOB_ID": "42", "SLURM_JOB_UID": "1001", "SLURM_JOB_GID": "1001",
          "SLURM_JOB_USER": "u1", "SLURM_JOB_PARTITION": "debug", "SLURM_CPUS_PER_NODE": "2,1",
          "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_WORK_DIR": "/home/u1", "CLUSTER_NAME": "nomade"}
PROLOG = {**COMMON, "SLURMD_NODENAME": "n1", "SLURM_SCRIPT_CONTEXT": "prolog_slurmd",
          "NOMADE_HOOK": "prolog", "NOMADE_TS": "1700000000.250000000"}
PROLOG_CTLD = {**COMMON, "SLURM_JOB_NAME": "train", "SLURM_JOB_GROUP": "u1",
               "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ACCOUNT": "physics",
               "SLURM_SCRIPT_CONTEXT": "prolog_slurmctld",
               "NOMADE_HOOK": "prolog_slurmctld", "NOMADE_TS": "1700000000.100000000"}
EPILOG = {**COMMON, "SLURMD_NODENAME": "n1", "SLURM_JOB_EXIT_CODE": "768",
          "SLURM_JOB_EXIT_CODE2": "3:0", "SLURM_JOB_DERIVED_EC": "3",
          "SLURM_SCRIPT_CONTEXT": "epilog_slurmd", "NOMADE_HOOK": "epilog",
          "NOMADE_TS": "1700000100.500000000"}
JOBCOMP = {"JOBID": "42", "UID": "1001", "GID": "1001", "USERNAME": "u1", "JOBSTATE": "FAILED",
           "EXITCODE": "3:0", "DERIVED_EC": "3:0", "START": "1700000000",
           "END": "1700000100", "SUBMIT": "1699999990", "LIMIT": "10", "NODES": "n[1-2]",
           "PARTITION": "debug", "PROCS": "3", "ACCOUNT": "physics", "JOBNAME": "train",
           "BATCH": "yes", "NOMADE_HOOK": "jobcomp", "NOMADE_TS": "1700000101.000000000"}


def test_node_prolog_gives_job_start_without_a_guessed_node_list() -> None:
    [(kind, body)] = jobenv.events(PROLOG)
    assert kind == "job.start"
    assert body == {"job_id": "42", "user": "u1", "uid": 1001, "partition": "debug",
                    "account": None, "nodes": None, "num_nodes": 2, "req_cpus": 3,
                    "req_mem_bytes": None, "req_gpus": None, "time_limit_s": None,
                    "submit_ts": None, "start_ts": 1700000000.25, "source": "prolog",
                    "cluster": "nomade"}


def test_slurmctld_prolog_knows_nodes_and_account() -> None:
    [(_, body)] = jobenv.events(PROLOG_CTLD)
    assert body["nodes"] == ["n1", "n2"] and body["account"] == "physics"
    assert body["source"] == "prolog_slurmctld"


def test_epilog_gives_exit_code_and_no_state() -> None:
    assert jobenv.events(EPILOG) == [("job.end", {
        "job_id": "42", "end_ts": 1700000100.5, "exit_code": 3, "signal": 0, "state": None,
        "source": "epilog"})]


def test_epilog_raw_wait_status_when_exit_code2_is_missing() -> None:
    env = {**EPILOG, "SLURM_JOB_EXIT_CODE": "253"}
    del env["SLURM_JOB_EXIT_CODE2"]
    [(_, body)] = jobenv.events(env)
    assert (body["exit_code"], body["signal"]) == (0, 125)  # the OUT_OF_MEMORY case


def test_jobcomp_gives_start_and_final_end() -> None:
    (k1, start), (k2, end) = jobenv.events(JOBCOMP)
    assert (k1, k2) == ("job.start", "job.end")
    assert start["time_limit_s"] == 600.0 and start["submit_ts"] == 1699999990.0
    assert start["start_ts"] == 1700000000.0 and start["req_cpus"] == 3
    assert start["nodes"] == ["n1", "n2"] and start["num_nodes"] == 2
    assert end == {"job_id": "42", "end_ts": 1700000100.0, "exit_code": 3, "signal": 0,
                   "state": "FAILED", "source": "jobcomp"}


def test_jobcomp_unlimited_and_never_started() -> None:
    env = {**JOBCOMP, "LIMIT": "UNLIMITED", "START": "0", "NODES": "", "JOBSTATE": "CANCELLED"}
    (_, start), (_, end) = jobenv.events(env)
    assert start["time_limit_s"] is None and start["start_ts"] is None and start["nodes"] is None
    assert end["state"] == "CANCELLED"


def test_hook_is_known_from_slurm_context_when_not_stamped() -> None:
    env = {k: v for k, v in EPILOG.items() if k != "NOMADE_HOOK"}
    assert jobenv.hook_of(env) == "epilog"
    assert jobenv.hook_of({"JOBSTATE": "COMPLETED"}) == "jobcomp"
    assert jobenv.hook_of({"FOO": "1"}) is None


def test_memory_and_gpus_when_present() -> None:
    env = {**PROLOG_CTLD, "SLURM_MEM_PER_NODE": "1024", "SLURM_JOB_GPUS": "0,1"}
    [(_, body)] = jobenv.events(env)
    assert body["req_mem_bytes"] == 2 * 1024 * 2**20 and body["req_gpus"] == 2
    env = {**PROLOG_CTLD, "SLURM_MEM_PER_CPU": "100", "SLURM_GPUS": "a100:4"}
    [(_, body)] = jobenv.events(env)
    assert body["req_mem_bytes"] == 3 * 100 * 2**20 and body["req_gpus"] == 4


@pytest.mark.parametrize("text, hosts", [
    ("n1", ["n1"]), ("n[1-3,5],gpu01", ["n1", "n2", "n3", "n5", "gpu01"]),
    ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]), ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("", None), ("n[3-1]", None), ("n[1-", None), ("n]", None), ("n[a]", None),
    ("n[1-999999999]", None), ("bad host", None),
])
def test_expand_hostlist(text: str, hosts: list[str] | None) -> None:
    assert jobenv.expand_hostlist(text) == hosts


@pytest.mark.parametrize("text, cpus", [
    ("2(x3),1", 7), ("4", 4), ("1,1", 2), ("", None), ("2(x)", None), ("x", None), ("-1", None)])
def test_total_cpus(text: str, cpus: int | None) -> None:
    assert jobenv.total_cpus(text) == cpus


@pytest.mark.parametrize("text, pair", [
    ("0:0", (0, 0)), ("3:0", (3, 0)), ("0:125", (0, 125)), ("768", (3, 0)), ("9", (0, 9)),
    ("", (None, None)), ("x:y", (None, None)), ("-1", (None, None)), ("999:0", (None, 0))])
def test_exit_and_signal(text: str, pair: tuple[int | None, int | None]) -> None:
    assert jobenv.exit_and_signal(text) == pair


def test_garbage_becomes_none_not_an_error() -> None:
    env = {**JOBCOMP, "UID": "-5", "USERNAME": "u1\n'; rm", "START": "yesterday",
           "PROCS": "\udcff", "EXITCODE": "3:\x00", "JOBSTATE": "failed!", "PARTITION": "\udcfe"}
    (_, start), (_, end) = jobenv.events(env)
    assert start["uid"] is None and start["user"] is None and start["start_ts"] is None
    assert start["partition"] is None and start["req_cpus"] is None
    assert end["state"] is None and end["exit_code"] == 3 and end["signal"] is None


def test_no_or_malformed_job_id_gives_no_event() -> None:
    assert jobenv.events({**EPILOG, "SLURM_JOB_ID": "42; x"}) == []
    assert jobenv.events({k: v for k, v in EPILOG.items() if k != "SLURM_JOB_ID"}) == []
    assert jobenv.events({"FOO": "bar"}) == []


@given(st.dictionaries(st.sampled_from(sorted({*PROLOG, *EPILOG, *JOBCOMP, *PROLOG_CTLD})),
                       st.text(max_size=30)))
def test_any_values_never_raise(env: dict[str, str]) -> None:
    for kind, body in jobenv.events(env):
        assert kind in ("job.start", "job.end") and isinstance(body["job_id"], str)


def test_from_environ_stamps_hook_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    record = jobenv.from_environ("prolog")
    assert record["NOMADE_HOOK"] == "prolog" and jobenv.to_ts(record["NOMADE_TS"]) is not None


# --- verbatim captures from the project's test cluster (Slurm 22.05.8, PrologFlags=Alloc) ---
REAL_PROLOG = {
    "NOMADE_HOOK": "prolog", "NOMADE_TS": "1795917836.203730716", "SLURM_JOB_USER": "root",
    "SLURM_JOBID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_CPUS_PER_NODE": "1(x2)",
    "SLURM_JOB_STDOUT": "/tmp/nomade-cluster/out/smoke-%j.out", "SLURM_JOB_GID": "0",
    "SLURM_JOB_WORK_DIR": "/work/main", "SLURM_CONF": "/etc/slurm/slurm.conf",
    "SLURM_SCRIPT_CONTEXT": "prolog_slurmd", "SLURM_NODELIST": "n[1-2]",
    "SLURM_JOB_RESTART_COUNT": "0", "SLURM_JOB_ID": "1", "SLURMD_NODENAME": "n2", "SLURM_UID": "0",
    "SLURM_CLUSTER_NAME": "nomadetest", "SLURM_JOB_UID": "0", "SLURM_JOB_PARTITION": "debug",
    "SLURM_JOB_STDIN": "/dev/null"}
REAL_EPILOG_CTLD = {
    "NOMADE_HOOK": "epilog_slurmctld", "NOMADE_TS": "1795917836.281855367",
    "SLURM_JOB_DERIVED_EC": "0", "SLURM_JOB_GROUP": "root", "SLURM_JOBID": "1",
    "SLURM_JOB_USER": "root", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NAME": "nomade-smoke",
    "SLURM_JOB_CPUS_PER_NODE": "1(x2)", "SLURM_JOB_GID": "0", "SLURM_JOB_WORK_DIR": "/work/main",
    "SLURM_JOB_ACCOUNT": "(null)", "SLURM_SCRIPT_CONTEXT": "epilog_slurmctld",
    "SLURM_JOB_RESTART_COUNT": "0", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n[1-2]",
    "SLURM_JOB_EXIT_CODE": "0", "SLURM_CLUSTER_NAME": "nomadetest", "SLURM_JOB_UID": "0",
    "SLURM_JOB_PARTITION": "debug", "SLURM_JOB_STDIN": "/dev/null", "SLURM_JOB_EXIT_CODE2": "0:0"}
REAL_JOBCOMP = {
    "NOMADE_HOOK": "jobcomp", "NOMADE_TS": "1795917836.272491716", "LIMIT": "365-00:00:00",
    "DERIVED_EC": "0:0", "SUBMIT": "1795917835", "DB_FLAGS": "SchedBackfill", "ACCOUNT": "",
    "WORK_DIR": "/work/main", "BATCH": "yes", "START": "1795917836", "JOBNAME": "nomade-smoke",
    "NODECNT": "2", "CONSTRAINTS": "", "RESERVATION": "", "QOS": "", "USERNAME": "root",
    "STDOUT": "/tmp/nomade-cluster/out/smoke-%j.out", "CLUSTER": "", "GID": "0", "JOBID": "1",
    "EXITCODE": "0:0", "UID": "0", "NODES": "n[1-2]", "ARRAYJOBID": "0", "PARTITION": "debug",
    "GROUPNAME": "root", "DEPENDENCY": "", "STATEREASONPREV": "None", "END": "1795917836",
    "PROCS": "2", "JOBSTATE": "COMPLETED", "STDIN": "/dev/null", "ARRAYTASKID": "4294967294"}


def test_real_node_prolog_capture() -> None:
    [(_, body)] = jobenv.events(REAL_PROLOG)
    assert body == {"job_id": "1", "user": "root", "uid": 0, "partition": "debug", "account": None,
                    "nodes": ["n1", "n2"], "num_nodes": 2, "req_cpus": 2, "req_mem_bytes": None,
                    "req_gpus": None, "time_limit_s": None, "submit_ts": None,
                    "start_ts": 1795917836.203730716, "source": "prolog", "cluster": "nomadetest"}


def test_real_epilog_slurmctld_capture_has_null_account() -> None:
    [(_, end)] = jobenv.events(REAL_EPILOG_CTLD)
    assert end == {"job_id": "1", "end_ts": 1795917836.281855367, "exit_code": 0, "signal": 0,
                   "state": None, "source": "epilog_slurmctld"}
    start = jobenv.job_start(REAL_EPILOG_CTLD, "epilog_slurmctld")
    assert start is not None and start["account"] is None  # "(null)" is not an account


def test_real_jobcomp_capture_with_22_05_time_limit_format() -> None:
    (_, start), (_, end) = jobenv.events(REAL_JOBCOMP)
    assert start["time_limit_s"] == 365 * 86400 and start["account"] is None
    assert start["cluster"] is None and start["submit_ts"] == 1795917835.0
    assert end == {"job_id": "1", "end_ts": 1795917836.0, "exit_code": 0, "signal": 0,
                   "state": "COMPLETED", "source": "jobcomp"}


@pytest.mark.parametrize("text, seconds", [
    ("10", 600.0), ("UNLIMITED", None), ("365-00:00:00", 31536000.0), ("1:30", 90.0),
    ("01:00:00", 3600.0), ("2-12", 216000.0), ("2-12:30", 217800.0), ("0", None),
    ("x-1", None), ("1:2:3:4", None), ("", None)])
def test_time_limit_formats(text: str, seconds: float | None) -> None:
    assert jobenv.time_limit_s(text) == seconds


# A prolog_slurmctld capture of a lab user's job (demo run, Slurm 22.05.8). The test
# cluster's ClusterName is "nomadetest", the same word as its test user, so a store showing
# cluster = 'nomadetest' for user 'nomadetest' is right; this pins that ``cluster`` comes
# from SLURM_CLUSTER_NAME and never from the user variables.
REAL_PROLOG_CTLD_LAB = {
    "NOMADE_HOOK": "prolog_slurmctld", "NOMADE_TS": "1795920663.124760400",
    "SLURM_JOB_GROUP": "nomadelab3", "SLURM_JOBID": "70", "SLURM_JOB_USER": "nomadelab3",
    "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_STDOUT": "/tmp/nomade-cluster/out/%j.out",
    "SLURM_JOB_NAME": "wrap", "SLURM_JOB_CPUS_PER_NODE": "1", "SLURM_JOB_GID": "1004",
    "SLURM_JOB_WORK_DIR": "/tmp", "SLURM_JOB_ACCOUNT": "(null)",
    "SLURM_SCRIPT_CONTEXT": "prolog_slurmctld", "SLURM_JOB_RESTART_COUNT": "0",
    "SLURM_JOB_ID": "70", "SLURM_JOB_NODELIST": "n1", "SLURM_CLUSTER_NAME": "nomadetest",
    "SLURM_JOB_UID": "1004", "SLURM_JOB_PARTITION": "debug", "SLURM_JOB_STDIN": "/dev/null"}


def test_cluster_is_the_cluster_name_never_the_user() -> None:
    [(_, body)] = jobenv.events(REAL_PROLOG_CTLD_LAB)
    assert (body["cluster"], body["user"], body["uid"]) == ("nomadetest", "nomadelab3", 1004)
    renamed = {**REAL_PROLOG_CTLD_LAB, "SLURM_CLUSTER_NAME": "hpc1"}
    [(_, body)] = jobenv.events(renamed)
    assert (body["cluster"], body["user"]) == ("hpc1", "nomadelab3")
    without = {k: v for k, v in REAL_PROLOG_CTLD_LAB.items() if k != "SLURM_CLUSTER_NAME"}
    [(_, body)] = jobenv.events(without)
    assert body["cluster"] is None and body["user"] == "nomadelab3"
