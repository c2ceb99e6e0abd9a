"""The collector on the real Slurm test cluster (cgroup v1), with a test ROUTER as the agent.

Plausibility: a busy job's CPU time grows, a job's memory tracks its allocation, and the
OOM kill of an over-memory job is seen while the job still runs. (Delivery through the
real agent, gap and kill -9 included: test_collector_agent.py.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from collectortools import Agent, start_collector, stop_collector
from slurmtools import SlurmCluster, submit, wait_state

from nomade.slurm import JobNotFound

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BUSY = "exec python3 -c 'while True: pass'"
HOLD_200MB = "python3 -c 'import time; b=bytearray(200<<20); b[::4096]=b\"x\"*len(b[::4096]); time.sleep(300)'"
OOM = "python3 -c 'b=bytearray(400<<20); b[::4096]=b\"x\"*len(b[::4096])'; sleep 300"


def state(cluster: SlurmCluster, job_id: str) -> str | None:
    jobs = cluster.slurm.list_jobs([job_id])
    return jobs[0].state if jobs else None


@pytest.fixture
def jobs(slurm_cluster: SlurmCluster) -> Iterator[dict[str, str]]:
    ids: dict[str, str] = {}
    try:
        for name, mem, wrap in (("busy", "200M", BUSY), ("hold", "600M", HOLD_200MB), ("oom", "100M", OOM)):
            ids[name] = submit(slurm_cluster, wrap, f"--mem={mem}", "--time=5", name=f"collector-{name}")
        for job_id in ids.values():   # other tests' jobs may hold the nodes for a while
            wait_state(slurm_cluster.slurm, job_id, ["RUNNING"], timeout=300)
        yield ids
    finally:
        for job_id in ids.values():
            with contextlib.suppress(JobNotFound):
                slurm_cluster.slurm.cancel(job_id)


def write_config(site: Path, port: int) -> Path:
    (site / "spool").mkdir(exist_ok=True)
    cfg = site / "nomade.toml"
    cfg.write_text(f"""
[collector]
agent_endpoint = "tcp://127.0.0.1:{port}"
interval_s = 1.0
jitter_s = 0.0
cgroup_root = "/sys/fs/cgroup"
outbox_dir = "{site / 'outbox'}"
ack_timeout_s = 1.0
spool_dir = "{site / 'spool'}"
[security]
curve_enabled = false
""")
    return cfg


def samples(agent: Agent, job_id: str) -> list[dict]:
    items = [i.body for m in agent.batches().values() for i in m.body["items"]
             if i.kind == "job.sample" and i.body["job_id"] == job_id]
    return sorted(items, key=lambda b: b["ts"])


def test_samples_are_plausible(slurm_cluster: SlurmCluster, jobs: dict[str, str],
                               tmp_path: Path) -> None:
    agent = Agent()
    proc = start_collector(write_config(tmp_path, agent.port))
    try:
        deadline = time.monotonic() + 60
        while True:
            oom = [s for s in samples(agent, jobs["oom"]) if s["oom_kills"]]
            if oom and len(samples(agent, jobs["busy"])) >= 4 and \
                    any(s["mem_bytes"] >= 200 << 20 for s in samples(agent, jobs["hold"])):
                break
            assert time.monotonic() < deadline, "samples missing after 60 s"
            time.sleep(0.5)
        assert state(slurm_cluster, jobs["oom"]) == "RUNNING", "the OOM kill was seen while the job runs"
    finally:
        err = stop_collector(proc)
        agent.close()
    assert proc.returncode == 0, err.decode()
    busy = samples(agent, jobs["busy"])
    cpu = [s["cpu_user_s"] + s["cpu_system_s"] for s in busy]
    assert cpu[-1] - cpu[0] >= 0.3 * (busy[-1]["ts"] - busy[0]["ts"]), "a busy job's CPU time grows"
    assert all(b >= a for a, b in pairwise(cpu))
    assert busy[-1]["alloc_cpus"] >= 1 and busy[-1]["nprocs"] >= 1
    hold = samples(agent, jobs["hold"])[-1]
    assert 200 << 20 <= hold["mem_bytes"] <= hold["mem_limit_bytes"] == 600 << 20
    assert hold["mem_peak_bytes"] >= hold["mem_bytes"]
    oom = [s for s in samples(agent, jobs["oom"]) if s["oom_kills"]][0]
    assert oom["oom_kills"] >= 1 and oom["mem_limit_hits"] >= 1
    assert oom["mem_limit_bytes"] == 100 << 20
