"""The collector on the real Slurm test cluster (cgroup v1), with a test ROUTER as the agent.

Plausibility: a busy job's CPU time grows, a job's memory tracks its allocation, and the
OOM kill of an over-memory job is seen while the job still runs. Delivery: the agent
stops for a while and the collector is killed with SIGKILL mid-run; every batch arrives.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_collector import Agent, assert_contiguous, start_collector, stop_collector

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BUSY = "exec python3 -c 'while True: pass'"
HOLD_200MB = "python3 -c 'import time; b=bytearray(200<<20); b[::4096]=b\"x\"*len(b[::4096]); time.sleep(300)'"
OOM = "python3 -c 'b=bytearray(400<<20); b[::4096]=b\"x\"*len(b[::4096])'; sleep 300"


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> object:
    return request.getfixturevalue("slurm_cluster")


def sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "-t", "5", *args],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().split(";")[0]


def state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def jobs(cluster: object) -> Iterator[dict[str, str]]:
    ids = {"busy": sbatch("--mem=200M", f"--wrap={BUSY}"),
           "hold": sbatch("--mem=600M", f"--wrap={HOLD_200MB}"),
           "oom": sbatch("--mem=100M", f"--wrap={OOM}")}
    try:
        deadline = time.monotonic() + 60
        while any(state(j) != "RUNNING" for j in ids.values()):
            assert time.monotonic() < deadline, f"jobs not running: {[state(j) for j in ids.values()]}"
            time.sleep(0.5)
        yield ids
    finally:
        subprocess.run(["scancel", *ids.values()], check=False)


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
""")
    return cfg


def samples(agent: Agent, job_id: str) -> list[dict]:
    items = [i.body for m in agent.batches().values() for i in m.body["items"]
             if i.kind == "job.sample" and i.body["job_id"] == job_id]
    return sorted(items, key=lambda b: b["ts"])


def test_samples_are_plausible(jobs: dict[str, str], tmp_path: Path) -> None:
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
        assert state(jobs["oom"]) == "RUNNING", "the OOM kill was seen while the job runs"
    finally:
        err = stop_collector(proc)
        agent.close()
    assert proc.returncode == 0, err.decode()
    busy = samples(agent, jobs["busy"])
    cpu = [s["cpu_user_s"] + s["cpu_system_s"] for s in busy]
    assert cpu[-1] - cpu[0] >= 0.3 * (busy[-1]["ts"] - busy[0]["ts"]), "a busy job's CPU time grows"
    assert all(b >= a for a, b in zip(cpu, cpu[1:]))
    assert busy[-1]["alloc_cpus"] >= 1 and busy[-1]["nprocs"] >= 1
    hold = samples(agent, jobs["hold"])[-1]
    assert 200 << 20 <= hold["mem_bytes"] <= hold["mem_limit_bytes"] == 600 << 20
    assert hold["mem_peak_bytes"] >= hold["mem_bytes"]
    oom = [s for s in samples(agent, jobs["oom"]) if s["oom_kills"]][0]
    assert oom["oom_kills"] >= 1 and oom["mem_limit_hits"] >= 1
    assert oom["mem_limit_bytes"] == 100 << 20


def test_agent_gap_and_kill_9_lose_no_sample(jobs: dict[str, str], tmp_path: Path) -> None:
    agent = Agent()
    port = agent.port
    cfg = write_config(tmp_path, port)
    proc = start_collector(cfg)
    try:
        agent.wait_for(3)
        before = agent.batches()
        agent.close()                                   # the agent stops while jobs run
        time.sleep(5)
        proc.kill()                                     # and the collector dies mid-run
        proc.wait()
        proc.stderr.close()
        last = int((tmp_path / "outbox" / "seq").read_text())
        agent = Agent(port)
        proc = start_collector(cfg)
        deadline = time.monotonic() + 30
        while not set(range(1, last + 1)) <= set(before) | set(agent.batches()):
            assert time.monotonic() < deadline, "batches of the gap did not arrive"
            time.sleep(0.2)
    finally:
        err = stop_collector(proc)
        agent.close()
    assert proc.returncode == 0, err.decode()
    after = agent.batches()
    assert_contiguous({**before, **after})
    seqs_with_busy = [seq for seq, m in {**before, **after}.items()
                      if any(i.body.get("job_id") == jobs["busy"] for i in m.body["items"])]
    assert len(seqs_with_busy) >= 8, "samples taken during the gap arrived"
