"""End to end on the real test cluster (issue 6, "Done when"): a job leaking memory toward
its ``--mem`` is flagged to its user and to admins before Slurm kills it.

Real parts only: ``nomade train``, ``nomade agent``, ``nomade collector`` and ``nomade
subscribe`` run as subprocesses with their own config in ``tmp_path`` (short intervals,
the cluster's hook spools, loopback ports), and the job is a real batch job of the
cluster's unprivileged test user with a Comment of its own.

The model is learnt from a short real history, as a site's would be: while the agent and
the collector run, the test user runs three jobs that leak to their ``--mem`` (killed:
OUT_OF_MEMORY) and three that hold steady (COMPLETED), all with the same request, so only
the runtime behaviour tells them apart; then ``nomade train`` learns from the agent's
store and the running agent loads the models. (``nomade train --synthetic`` was tried
first: its OOM jobs are GB-sized, hours long and show memory pressure and major faults,
which a cgroup v1 job never reports, so its models rated this cluster's tiny jobs high
whether they leaked or not, and differently from one training to the next.) Then a
leaking job and a steady one run side by side.

What is tested: the leaking job's risk rises over its run and ends above the steady
job's; it reaches the default alert threshold (``[ml.alerts] high_risk_threshold`` = 0.7,
level "high") in three consecutive predictions (``confirm_predictions``, see ``CONFIRM``)
while it runs, and a NØMADE segment is then in its Comment in ``squeue %k`` beside the
user's text (which survives); the steady job never does and never gets a segment; an
admin's ``nomade subscribe`` receives the predictions; OUT_OF_MEMORY, the request Slurm
knows (memory, time limit) and the cluster's name are stored. No risk is set by hand.

Measured (this 2-core VM, eight runs): the leak's risk passes 0.8 within ~12 s and stays
above 0.9 until the kernel kills it; the steady job's falls to 0.01-0.03. Both may start
erratically on their first one or two samples (0.2 to 1.0). (Before
the models' epochs had a floor of 1,024 draws, six jobs gave 40 optimiser steps in all
and the leak ended at 0.41-0.67: see ``nomade.ml.models.MIN_EPOCH_DRAWS``.) The models
are the GNN and the LSTM (``--model gnn --model lstm``): the autoencoder's score is a
rank among held-out completed jobs, and six jobs leave it one or none.

The agent and collector drain the cluster's shared spools (as ``make demo`` does): do
not run this beside another test that drains them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest
from slurmtools import SlurmCluster

from nomade import comment, curve, lab
from nomade.config import Config
from nomade.spool import Spool
from nomade.store import Store

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
MIB = 1 << 20
TICK_S = 2.0
#: ``[ml.alerts] high_risk_threshold``: the default (0.7), which this test does not change.
THRESHOLD = Config().ml.alerts.high_risk_threshold
#: ``[ml.alerts] confirm_predictions``: 3 here, not the default 2. A model of six jobs is
#: erratic on a job's first one or two samples (steady jobs started at 0.99, 0.74 then
#: 0.25 ... 0.01, or 1.00, 0.58 ...; the LSTM rated every one-sample sequence 1.0), which a
#: history of hundreds of jobs is not; the leak stays above 0.7 for many predictions.
CONFIRM = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(ws: Path, cluster: SlurmCluster) -> Path:
    """nomade.toml of this test: loopback endpoints, 2 s samples and ticks, own paths,
    CURVE as shipped (the collector's key, named for this host, speaks for every node)."""
    ingest, pub = free_port(), free_port()
    keys = curve.setup_keys(ws / "keys", socket.gethostname().split(".")[0], cluster.nodes)
    path = ws / "nomade.toml"
    path.write_text(f"""
[ml]
models_dir = "{ws}/models"
sequence_length = 20
[ml.alerts]
confirm_predictions = {CONFIRM}
[ml.training]
epochs = 40
patience = 8
[collector]
agent_endpoint = "tcp://127.0.0.1:{ingest}"
interval_s = {TICK_S}
jitter_s = 0.2
ack_timeout_s = 3.0
outbox_dir = "{ws}/outbox"
spool_dir = "{cluster.node_spool}"
[agent]
ingest_endpoint = "tcp://127.0.0.1:{ingest}"
publish_endpoint = "tcp://127.0.0.1:{pub}"
metrics_address = ""
interval_s = {TICK_S}
spool_dirs = ["{cluster.ctld_spool}"]
[storage]
db_path = "{ws}/nomade.db"
[security]
curve_enabled = true
keys_dir = "{keys}"
""")
    return path


def nomade(config: Path, *args: str, out: IO[bytes] | int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nomade", "--config", str(config), *args],
                            stdout=out, stderr=subprocess.STDOUT if out is not None else None, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_line(log: Path, text: str, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        for p in procs:
            assert p.poll() is None, f"{p.args} exited {p.returncode}: {log.read_text()[-2000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {log} after {timeout_s} s: {log.read_text()[-2000:]}")


def cluster_name() -> str:
    out = subprocess.run(["/usr/bin/scontrol", "show", "config"], capture_output=True, text=True,
                         check=True).stdout
    return next(line.split("=", 1)[1].strip() for line in out.splitlines()
                if line.startswith("ClusterName"))


def squeue_comments(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["/usr/bin/squeue", "-h", "-t", "all", "-j", ",".join(job_ids),
                          "-o", "%.10i %k"], capture_output=True, text=True).stdout
    return {parts[0]: parts[1] if len(parts) > 1 else ""
            for parts in (line.strip().split(" ", 1) for line in out.splitlines() if line.strip())}


#: (start MiB, MiB more every 2 s, steps): a leak reaches 256 MiB in about 38 s; a steady job
#: holds 30 MiB and ends after 30 s.
LEAK, STEADY = (30, 12, 40), (30, 0, 0)


def submit(cluster: SlurmCluster, shape: tuple[int, int, int], name: str, *extra: str) -> str:
    start, step, steps = shape
    return cluster.slurm.submit(
        lab.leak_script(start_mb=start, step_mb=step, steps=steps, step_s=2.0),
        options=["--mem=256M", "--time=3", f"--output={cluster.out_dir}/e2e-%j.out",
                 f"--chdir={cluster.out_dir}", f"--job-name={name}", *extra],
        as_user=cluster.test_user)


def wait_stored_states(db: Path, job_ids: list[str], timeout_s: float,
                       procs: list[subprocess.Popen[bytes]]) -> dict[str, str | None]:
    """Each job's stored state, once all have one (or as they are after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with Store(db, readonly=True) as store:
            states = {j: (job.state if (job := store.get_job(j)) else None) for j in job_ids}
        if all(states.values()) or time.monotonic() > deadline:
            return states
        for p in procs:
            assert p.poll() is None, f"{p.args} exited {p.returncode}"
        time.sleep(1.0)


def learn_history(cluster: SlurmCluster, config: Path, ws: Path,
                  procs: list[subprocess.Popen[bytes]]) -> dict[str, str | None]:
    """Three leaking and three steady jobs of the test user, then ``nomade train`` on the store."""
    ids = [submit(cluster, shape, "e2e-history") for _ in range(3) for shape in (LEAK, STEADY)]
    states = wait_stored_states(ws / "nomade.db", ids, 150, procs)
    data = str(ws / "prepared.npz")
    for args in (["train", "--prepare", "--ticks-per-job", "16", "--data", data, "--quiet"],
                 ["train", "--data", data, "--model", "gnn", "--model", "lstm", "--quiet"]):
        with open(ws / "train.log", "ab") as log:
            proc = nomade(config, *args, out=log)
            assert proc.wait(timeout=240) == 0, (ws / "train.log").read_text()[-3000:]
    return states


def discard_leftover_events(cluster: SlurmCluster) -> None:
    """Earlier tests leave the hook events of their ended jobs in the shared spools. This
    test trains on its own six jobs only: those sample-less strangers would fill the early
    (training) part of the time split and leave the LSTM nothing to learn from."""
    for directory in (cluster.node_spool, cluster.ctld_spool):
        spool = Spool(directory)
        while items := spool.take(1000):
            for item in items:
                spool.confirm(item)


def test_a_leaking_job_is_flagged_to_its_user_and_admins_before_it_is_killed(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    slurm, user = slurm_cluster.slurm, slurm_cluster.test_user
    discard_leftover_events(slurm_cluster)
    config = write_config(tmp_path, slurm_cluster)
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("agent", "collector", "subscribe")}
    agent = nomade(config, "-v", "agent", out=logs["agent"])
    collector = nomade(config, "-v", "collector", out=logs["collector"])
    subscriber = nomade(config, "subscribe", out=logs["subscribe"])
    procs = [agent, collector, subscriber]
    job_ids: list[str] = []
    seen: dict[str, list[str]] = {}
    try:
        wait_for_line(tmp_path / "agent.log", "ingest on", 30, procs)
        history = learn_history(slurm_cluster, config, tmp_path, procs)
        assert sorted(history.values(), key=str) == ["COMPLETED"] * 3 + ["OUT_OF_MEMORY"] * 3, history
        wait_for_line(tmp_path / "agent.log", "a trained model is loaded", 30, procs)
        leak = submit(slurm_cluster, LEAK, "e2e-leak", "--comment=user text")
        flat = submit(slurm_cluster, STEADY, "e2e-flat", "--comment=flat job")
        job_ids += [leak, flat]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for job_id, text in squeue_comments(job_ids).items():
                seen.setdefault(job_id, []).append(text)
            if slurm.final_states([leak])[leak] is not None:
                break
            for p in procs:
                assert p.poll() is None, f"{p.args} exited {p.returncode}"
            time.sleep(1.0)
        assert slurm.final_states([leak])[leak] is not None, "the leaking job did not end in time"
        wait_stored_states(tmp_path / "nomade.db", [leak], 60, procs)
        with Store(tmp_path / "nomade.db", readonly=True) as store:
            stored = store.get_job(leak)
        assert stored is not None
        final_comment = slurm.get_comment(leak)
    finally:
        for job_id in job_ids:
            slurm.cancel(job_id)
        stop(subscriber)
        stop(collector)
        stop(agent)
        for f in logs.values():
            f.close()

    # the final state Slurm gave is stored, from jobcomp or by asking Slurm
    assert stored.state == "OUT_OF_MEMORY" and stored.label == 1
    # the request no hook sees came from Slurm; the cluster is the cluster's name
    assert (stored.req_mem_bytes, stored.time_limit_s) == (256 * MIB, 180.0)
    assert stored.cluster == cluster_name() and stored.user == user

    risks = {j: stored_risks(tmp_path / "nomade.db", j) for j in job_ids}
    leak_risk = risks[leak]
    # rising over the job's run once it has samples: higher on average in the second half,
    # and highest there. Not "the last above the first": a six-job model is erratic on the
    # first one or two samples (one run: 0.90, then 0.15 rising to 1.0), and once the
    # kernel has killed the leaking process the memory drops and so may the risk.
    sampled = stored_risks(tmp_path / "nomade.db", leak, with_samples=True)
    assert len(sampled) >= 5, (sampled, leak_risk)
    half = len(sampled) // 2
    assert sum(sampled[half:]) / (len(sampled) - half) > sum(sampled[:half]) / half, sampled
    assert max(sampled[half:]) >= max(sampled[:half]), sampled
    flat_risk = risks[flat]
    assert flat_risk and flat_risk[-1] < leak_risk[-1], (flat_risk, leak_risk)

    # the leak reached the default alert threshold and stayed (confirmed) while it ran, the
    # steady job never did (a first-tick spike, scored before any sample, is not confirmed)
    assert confirmed(leak_risk) and not confirmed(flat_risk), (leak_risk, flat_risk)
    # a NØMADE segment was in squeue's Comment exactly for the jobs whose risk reached the
    # threshold (the agent writes it in the tick that crosses it), next to the user's
    # text, which survives the job
    for job_id, user_text in ((leak, "user text"), (flat, "flat job")):
        flagged = [c for c in seen.get(job_id, []) if comment.START + "risk " in c]
        crossed = confirmed(risks[job_id])
        assert bool(flagged) == crossed, (job_id, risks[job_id], seen.get(job_id))
        assert all(c.startswith(user_text + " ") for c in flagged), flagged
    assert final_comment.startswith("user text")

    # an admin's `nomade subscribe` received the job's predictions
    received = [json.loads(line) for line in (tmp_path / "subscribe.log").read_text().splitlines()
                if line.startswith("{")]
    mine = [p for p in received if p["job_id"] == leak]
    assert len(mine) >= 3 and {p["risk"] for p in mine} <= set(leak_risk)


def confirmed(risks: list[float]) -> bool:
    """Whether ``CONFIRM`` consecutive predictions reached ``THRESHOLD`` (what the agent
    needs before it writes a Comment)."""
    run = 0
    for r in risks:
        run = run + 1 if r >= THRESHOLD else 0
        if run >= CONFIRM:
            return True
    return False


def stored_risks(db: Path, job_id: str, with_samples: bool = False) -> list[float]:
    """Every stored prediction's risk for the job, oldest first (the store keeps them all);
    ``with_samples``: only those with an LSTM part (made after the job's first sample)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT risk, parts FROM predictions WHERE job_id = ? ORDER BY ts",
                            (job_id,)).fetchall()
    conn.close()
    return [float(r) for r, parts in rows if not with_samples or json.loads(parts).get("lstm") is not None]
