"""Requests no hook sees (memory, GPUs, time limit): the pure planner, then the agent's
round against the real test cluster (the request reaches the store and the job state)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from slurmtools import SlurmCluster, submit, wait_final, wait_state

from nomade import config, jobenv, wire
from nomade.agent.requests import NEEDED, Answer, GiveUp, RequestTracker, lacking, start_body
from nomade.slurm import Job
from nomade.store import Store

T0 = 1_700_000_000.0


def slurm_job(job_id: str, **kw: object) -> Job:
    base = dict(job_id=job_id, name="x", user="alice", uid=1001, account=None, partition="debug",
                state="RUNNING", nodes=["n1"], num_nodes=1, req_cpus=2, req_mem_bytes=100 << 20,
                req_gpus=0, time_limit_s=180.0, submit_ts=T0 - 5, start_ts=T0 - 1, end_ts=None,
                exit_code=None, exit_signal=None)
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_lacking_names_jobs_missing_any_needed_field() -> None:
    full = dict.fromkeys(NEEDED, 1)
    assert lacking([("1", full), ("2", {**full, "req_gpus": None}), ("3", {}),
                    ("4", {**full, "time_limit_s": None})]) == ["2", "3", "4"]


def test_start_body_is_a_valid_job_start_from_slurm() -> None:
    body = start_body(slurm_job("7", account="lab", req_gpus=2))
    assert body["source"] == "slurm" and body["req_mem_bytes"] == 100 << 20
    assert (body["time_limit_s"], body["req_gpus"], body["account"]) == (180.0, 2, "lab")
    msg = wire.decode(wire.encode(wire.make("job.start", "agent", 0, body, T0)))
    assert msg.body == body
    assert start_body(slurm_job("8", nodes=[]))["nodes"] is None   # unknown, not "no nodes"


def test_new_jobs_are_due_at_once_and_one_batch_asks_all() -> None:
    t = RequestTracker(max_batch=2)
    t.observe(["3", "1", "2"], T0)
    assert len(t.due(T0)) == 2 and set(t.watching()) == {"1", "2", "3"}
    out = t.answered(T0, {"1": slurm_job("1"), "2": slurm_job("2")})
    assert [type(d) for d in out] == [Answer, Answer] and out[0].body["job_id"] == "1"
    assert t.due(T0) == ["3"] and t.watching() == ["3"]


def test_an_array_task_asked_by_its_own_id_is_answered_under_that_id() -> None:
    """Slurm lists array task 47 as "40_7"; the store knows it as 47."""
    t = RequestTracker()
    t.observe(["47"], T0)
    out = t.answered(T0, {"47": slurm_job("40_7", own_id="47")})
    assert [(a.job_id, a.body["job_id"]) for a in out if isinstance(a, Answer)] == [("47", "47")]


def test_a_settled_job_is_not_asked_again_while_it_still_lacks_a_field() -> None:
    t = RequestTracker()
    t.observe(["1"], T0)
    t.answered(T0, {"1": slurm_job("1", time_limit_s=None)})   # UNLIMITED: stays unknown
    t.observe(["1"], T0 + 10)
    assert t.due(T0 + 10) == [] and t.watching() == []


def test_unlisted_or_failed_jobs_back_off_doubling_then_give_up() -> None:
    t = RequestTracker(first_delay_s=2, max_delay_s=8, give_up_after_s=30)
    t.observe(["1", "2"], T0)
    assert t.answered(T0, {"1": None}) == [] and t.query_failed(T0, ["2"]) == []
    asked, now = [], T0
    while t.watching() and now < T0 + 60:
        now += 1
        due = t.due(now)
        if "1" in due:
            asked.append(now - T0)
            out = t.answered(now, {"1": None})
        if "2" in due:
            out2 = t.query_failed(now, ["2"])
    assert asked == [2, 6, 14, 22, 30]   # delays 2, 4, 8, 8 (capped), then the bound
    assert isinstance(out[0], GiveUp) and "not listed by Slurm" in out[0].reason
    assert isinstance(out2[0], GiveUp) and "query failed" in out2[0].reason
    t.observe(["1", "2"], now + 1)
    assert t.due(now + 100) == []   # given up: not asked again


def test_jobs_that_leave_the_list_are_forgotten_and_retry_reopens() -> None:
    t = RequestTracker()
    t.observe(["1", "2"], T0)
    t.answered(T0, {"1": slurm_job("1")})
    t.observe(["1"], T0 + 1)      # 2 ended (or its request was filled elsewhere)
    assert t.watching() == []
    t.retry(["1"])                # the answer could not be stored
    t.observe(["1"], T0 + 2)
    assert t.due(T0 + 2) == ["1"]
    t.observe([], T0 + 3)
    t.observe(["1"], T0 + 4)      # a job id seen again after it left starts afresh
    assert t.due(T0 + 4) == ["1"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="first_delay_s"):
        RequestTracker(first_delay_s=0)


# ---------------------------------------------------------------- real cluster

def agent_config(tmp_path: Path) -> config.Config:
    cfg = config.Config()
    return dataclasses.replace(
        cfg,
        agent=dataclasses.replace(cfg.agent, ingest_endpoint="tcp://127.0.0.1:*",
                                  publish_endpoint="tcp://127.0.0.1:*", metrics_address="",
                                  interval_s=3600.0, spool_dirs=[]),
        ml=dataclasses.replace(cfg.ml, models_dir=str(tmp_path / "no-models")),
        storage=dataclasses.replace(cfg.storage, db_path=str(tmp_path / "agent.db")),
        security=dataclasses.replace(cfg.security, curve_enabled=False))   # loopback only


@pytest.mark.slurm
def test_a_started_jobs_memory_and_time_limit_reach_the_store_and_state(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    from nomade.agent.daemon import Agent

    job_id = submit(slurm_cluster, "sleep 60", "--mem=100M", "--time=3",
                    as_user=slurm_cluster.test_user, name="nomade-requests")
    agent = Agent(agent_config(tmp_path), slurm=slurm_cluster.slurm, name="test-agent")
    try:
        wait_state(slurm_cluster.slurm, job_id, ["RUNNING"], timeout=60)
        # what the node prolog gives (a real capture's variables, this job's id): no memory,
        # no GPUs, no time limit
        record = {"NOMADE_HOOK": "prolog", "NOMADE_TS": f"{time.time():.6f}", "SLURM_JOB_ID": job_id,
                  "SLURM_JOB_USER": slurm_cluster.test_user, "SLURM_JOB_PARTITION": "debug",
                  "SLURM_JOB_CPUS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1"}
        [(kind, body)] = jobenv.events(record)
        start = wire.make(kind, "n1", 0, dict(body))
        agent.store.write_messages([start])
        agent.state.apply([start])
        assert agent.state.running[job_id].request.get("req_mem_bytes") is None
        assert agent.poll_requests() == 1
        assert agent.poll_requests() == 0          # settled: not asked again
        request = agent.state.running[job_id].request
        assert (request["req_mem_bytes"], request["time_limit_s"]) == (100 << 20, 180.0)
        assert request["req_gpus"] == 0 and request["user"] == slurm_cluster.test_user
    finally:
        agent.close()
        slurm_cluster.slurm.cancel(job_id)
    with Store(tmp_path / "agent.db") as store:
        job = store.get_job(job_id)
    assert job is not None and (job.req_mem_bytes, job.time_limit_s) == (100 << 20, 180.0)
    assert job.req_cpus == 1 and job.submit_ts is not None
    wait_final(slurm_cluster.slurm, job_id, timeout=60)
