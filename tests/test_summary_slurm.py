"""``sacct -j ID -o AdminComment`` shows the summary the agent wrote when the job ended,
on the test cluster's real slurmctld and slurmdbd.

A short job runs; the agent holds its start, samples and a prediction as the hooks, the
collector and a scoring tick would have given them; once Slurm says the job ended, the
agent's running-job check ends it with Slurm's final state, its summary round writes the
AdminComment, and sacct (asked directly, not through nomade) shows the summary.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest
from agenttools import agent_config
from slurmtools import SlurmCluster, submit, wait_final, wait_state
from waiting import wait_until

from nomade import wire
from nomade.agent.daemon import Agent
from nomade.agent.summary import parse

pytestmark = pytest.mark.slurm
MiB = 2**20


def test_sacct_shows_the_summary_of_a_job_that_ended(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    c = slurm_cluster
    job_id = submit(c, "sleep 4", "--cpus-per-task=1", "--mem=100M", "--time=2", name="summary")
    wait_state(c.slurm, job_id, ["RUNNING", "COMPLETED"], timeout=60)
    start_ts = c.slurm.list_jobs([job_id])[0].start_ts
    assert start_ts is not None
    cfg = agent_config(tmp_path)
    agent = Agent(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, running_check_interval_s=1.0)),
                  slurm=c.slurm, name="agent0")
    try:
        node = c.nodes[0]
        msgs = [wire.make("job.start", "ctld", 0, {
            "job_id": job_id, "user": "root", "partition": "debug", "nodes": [node], "num_nodes": 1,
            "req_cpus": 1, "req_mem_bytes": 100 * MiB, "time_limit_s": 120.0, "start_ts": start_ts}, start_ts)]
        msgs += [wire.make("job.sample", node, 0, {
            "job_id": job_id, "node": node, "ts": start_ts + k, "alloc_cpus": 1, "cpu_user_s": 0.25 * k,
            "cpu_system_s": 0.0, "mem_bytes": 20 * MiB, "mem_peak_bytes": 25 * MiB, "mem_limit_bytes": 100 * MiB},
            start_ts + k) for k in (1, 2, 3)]
        agent.store.write_messages(msgs)
        agent.state.apply(msgs)
        assert agent.summaries is not None
        agent.summaries.observe([{"job_id": job_id, "risk": 0.87, "level": "critical", "ts": start_ts + 3,
                                  "factors": [{"text": "Low CPU efficiency (25%): request fewer cores"}]}])
        final = wait_final(c.slurm, job_id, timeout=60)
        wait_until(lambda: agent.check_running(time.time() + 2.0), 30, f"the agent ends job {job_id}")
        wait_until(agent.write_summaries, 60, f"the agent writes job {job_id}'s summary")
        assert agent.metrics.summaries_written_total == 1 and agent.metrics.summaries_failed_total == 0
    finally:
        agent.close()

    def shown() -> str:
        out = subprocess.run([c.slurm.tool("sacct"), "-j", job_id, "-X", "-o", "AdminComment", "-n", "-P"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        return out if "nomade/1" in out else ""

    text = wait_until(shown, 60, f"sacct shows job {job_id}'s summary", interval=0.5)
    got = parse(text)
    assert got is not None
    assert got.state == final.state == "COMPLETED"
    assert (got.max_risk, got.max_risk_ts, got.level) == (0.87, float(int(start_ts + 3)), "critical")
    assert got.crossed == (("critical", float(int(start_ts + 3))),)
    assert got.mem_peak == 0.25 and got.advice == "low cpu efficiency (25%): request fewer cores"   # sacctmgr stores lower case
    assert got.eff_cpu is not None and got.time_used is not None and 0 < got.time_used < 1
