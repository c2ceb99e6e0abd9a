"""``make demo``: NØMADE live on this machine's real Slurm test cluster.

1. starts the agent and a collector (sampling every few seconds, so the demo is short)
   with a config of their own under ``$NOMADE_DEMO_DIR`` (default /tmp/nomade-demo);
2. runs the lab workload (``nomade.lab``): real jobs of several users, some of which
   leak memory, hang, crash or are cancelled; the agent learns their final states;
3. trains the three models on that history (``nomade train``) and restarts the agent
   with them;
4. submits new jobs, one of them leaking memory toward its ``--mem`` with a comment of
   its user's own, and shows every few seconds what admins see (``nomade watch``) and
   what the user sees (``squeue -o "%.10i %.9u %.8T %k"``), until the leaking job ends;
5. prints the job's stored final state and the predictions a ``nomade subscribe
   --min-level high`` client received.

Needs root and the test cluster (``make demo`` starts it). ``NOMADE_DEMO_JOBS`` sets the
size of the lab history (default 36 jobs, about 8 minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nomade import lab
from nomade.lab.pipeline import (
    CLUSTER,
    LAB_USERS,
    TICK_S,
    Daemons,
    ensure_users,
    wait_labelled,
    write_config,
)
from nomade.slurm import Slurm
from nomade.states import is_final

SAMPLE_INTERVAL_S = 3.0


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _nomade(config: Path, *args: str, check: bool = True, capture: bool = False) -> str:
    proc = subprocess.run([sys.executable, "-m", "nomade", "--config", str(config), *args],
                          check=check, text=True, capture_output=capture)
    return proc.stdout if capture else ""


def _history(slurm: Slurm, daemons: Daemons, db: Path, n_jobs: int) -> None:
    _say(f"1/3  history: {n_jobs} lab jobs of {len(LAB_USERS)} users on the real cluster")
    jobs = lab.plan(n_jobs, list(LAB_USERS), seed=int(time.time()))
    done = [0]

    def submitted(job: lab.LabJob, job_id: str) -> None:
        done[0] += 1
        daemons.check()
        print(f"  [{done[0]:3d}/{n_jobs}] job {job_id:>6} {job.user:<11} {job.archetype:<8} "
              f"{' '.join(job.options[:2])}", flush=True)

    ids = lab.run(slurm, jobs, max_running=4, out_dir=str(CLUSTER / "out"), on_submit=submitted)
    states = wait_labelled(db, list(ids))
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    print(f"  final states learnt by the agent: {json.dumps(counts)}"
          f" ({len(ids) - len(states)} still unknown)")


def _live(slurm: Slurm, config: Path, ws: Path) -> str:
    _say("3/3  live: a job leaking memory toward its --mem, beside ordinary jobs")
    leak_id = slurm.submit(lab.leak_script(start_mb=40, step_mb=12, steps=20, step_s=2.5), options=["--mem=256M", "--time=2", "--job-name=analysis",
                                                 "--comment=my analysis run, do not cancel",
                                                 f"--output={CLUSTER}/out/demo-%j.out"],
                           as_user="nomadetest")
    others = [slurm.submit(j.script, options=[*j.options, f"--output={CLUSTER}/out/demo-%j.out"],
                           as_user=j.user)
              for j in [j for j in lab.plan(12, list(LAB_USERS[1:]), seed=11)
                        if j.expected_state == "COMPLETED"][:3]]
    print(f"  leaking job {leak_id} (user nomadetest, --mem=256M); others: {' '.join(others)}")
    sub_out = open(ws / "subscribe.jsonl", "w")
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "nomade", "--config", str(config), "subscribe", "--min-level", "high"],
        stdout=sub_out, stderr=subprocess.DEVNULL)
    squeue = shutil.which("squeue") or "/usr/bin/squeue"
    try:
        while True:
            info = {j.job_id: j for j in slurm.list_jobs(job_ids=[leak_id])}.get(leak_id)
            print(f"\n--- {time.strftime('%H:%M:%S')}  admins: nomade watch --once", flush=True)
            _nomade(config, "watch", "--once", "--wait", str(TICK_S + 1), "--no-color", check=False)
            print("--- users: squeue -o \"%.10i %.9u %.8T %k\"", flush=True)
            subprocess.run([squeue, "-o", "%.10i %.9u %.8T %k"], check=False)
            if info is None or is_final(info.state):
                break
    finally:
        subscriber.terminate()
        subscriber.wait()
        sub_out.close()
    return leak_id


def _report(db: Path, ws: Path, leak_id: str) -> None:
    states = wait_labelled(db, [leak_id], timeout_s=60)
    print(f"\n  job {leak_id}: stored final state {states.get(leak_id, 'not yet known')}")
    lines = (ws / "subscribe.jsonl").read_text().splitlines()
    mine = [json.loads(line) for line in lines if json.loads(line).get("job_id") == leak_id]
    print(f"  `nomade subscribe --min-level high` received {len(lines)} predictions, "
          f"{len(mine)} for job {leak_id}")
    for p in mine[:3]:
        print(f"    {time.strftime('%H:%M:%S', time.localtime(p['ts']))} risk {p['risk']:.2f} "
              f"{p['level']}: {'; '.join(f['text'] for f in p.get('factors', [])[:2])}")


def main() -> int:
    """Run the demo; 0 when every phase ran."""
    if os.geteuid() != 0:
        print("make demo needs root: it submits jobs as several users and updates Comments",
              file=sys.stderr)
        return 2
    ws = Path(os.environ.get("NOMADE_DEMO_DIR", "/tmp/nomade-demo"))
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    config = write_config(ws, sample_interval_s=SAMPLE_INTERVAL_S, header="nomade.demo")
    ensure_users()
    slurm = Slurm(use_pyslurm="never")
    daemons = Daemons(ws, config)
    n_jobs = int(os.environ.get("NOMADE_DEMO_JOBS", "36"))
    print(f"workspace {ws} (config, store, models, daemon logs)")
    try:
        daemons.start("agent")
        daemons.start("collector")
        _history(slurm, daemons, ws / "nomade.db", n_jobs)
        _say("2/3  training the GNN, LSTM and autoencoder on that history")
        _nomade(config, "train", "--prepare", "--ticks-per-job", "16")
        _nomade(config, "train", "--quiet")
        daemons.stop("agent")
        daemons.start("agent")
        leak_id = _live(slurm, config, ws)
        _report(ws / "nomade.db", ws, leak_id)
    finally:
        daemons.stop_all()
    print(f"\nlogs: {ws}/agent.log {ws}/collector.log; store: {ws}/nomade.db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
