"""``make demo``: NØMADE live on this machine's real Slurm test cluster, from the first minute.

1. starts the agent and a collector (sampling every few seconds, so the demo is short)
   with a config of their own under ``$NOMADE_DEMO_DIR`` (default /tmp/nomade-demo); the
   workspace has no models of its own, so the agent scores with the starter model
   shipped with nomade (trained on the project's lab corpus: ``nomade ml status`` says
   so), on the shipped alert defaults (threshold 0.75, two confirming predictions);
2. submits a job leaking memory toward its ``--mem`` with a comment of its user's own,
   beside ordinary jobs of other users, and shows every few seconds what admins see
   (``nomade watch``) and what users see (``squeue -o "%.10i %.9u %.8T %k"``), until
   every one of them has ended;
3. prints the leaking job's stored final state, the predictions a ``nomade subscribe
   --min-level high`` client received, and whether each job got a NØMADE Comment.

Needs root and the test cluster (``make demo`` starts it). ``NOMADE_DEMO_SEED`` picks
the ordinary jobs (``nomade.tools.lab.plan``; default 11). About three minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from nomade.slurm import Slurm
from nomade.slurmstates import is_final
from nomade.tools import lab
from nomade.tools.lab.pipeline import CLUSTER, LAB_USERS, TICK_S, Daemons, ensure_users, wait_labelled, write_config

SAMPLE_INTERVAL_S = 3.0


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _nomade(config: Path, *args: str, check: bool = True, capture: bool = False) -> str:
    proc = subprocess.run([sys.executable, "-m", "nomade", "--config", str(config), *args],
                          check=check, text=True, capture_output=capture)
    return proc.stdout if capture else ""


DEMO_WATCH_S = 240.0
"""Longest the live phase watches (every demo job has ended well before)."""


def submit_jobs(slurm: Slurm, seed: int) -> tuple[str, list[str]]:
    """The leaking job (user nomadetest, ``--mem=256M``, 1.5 MB/s: killed by the
    kernel after about 2.5 min; a leak has to show over several samples to be told
    from a job that grows and stops, see ``nomade.ml.evidence``) and three ordinary
    jobs of the other users that complete (``lab.plan`` of ``seed``); returns (leak
    id, the others' ids)."""
    leak_id = slurm.submit(lab.leak_script(start_mb=40, step_mb=6, steps=40, step_s=4.0),
                           options=["--mem=256M", "--time=5", "--job-name=analysis",
                                    "--comment=my analysis run, do not cancel",
                                    f"--output={CLUSTER}/out/demo-%j.out"],
                           as_user="nomadetest")
    others = [slurm.submit(j.script, options=[*j.options, f"--output={CLUSTER}/out/demo-%j.out"],
                           as_user=j.user)
              for j in [j for j in lab.plan(12, list(LAB_USERS[1:]), seed=seed)
                        if j.expected_state == "COMPLETED"][:3]]
    return leak_id, others


def _live(slurm: Slurm, config: Path, ws: Path, seed: int) -> tuple[str, list[str]]:
    _say("live: a job leaking memory toward its --mem, beside ordinary jobs")
    status = _nomade(config, "ml", "status", check=False, capture=True).splitlines()
    print(f"  {status[0] if status else 'nomade ml status said nothing'}", flush=True)
    leak_id, others = submit_jobs(slurm, seed)
    print(f"  leaking job {leak_id} (user nomadetest, --mem=256M); others: {' '.join(others)}")
    sub_out = open(ws / "subscribe.jsonl", "w")
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "nomade", "--config", str(config), "subscribe", "--min-level", "high"],
        stdout=sub_out, stderr=subprocess.DEVNULL)
    squeue = shutil.which("squeue") or "/usr/bin/squeue"
    deadline = time.monotonic() + DEMO_WATCH_S
    try:
        while time.monotonic() < deadline:
            info = {j.job_id: j for j in slurm.list_jobs(job_ids=[leak_id, *others])}
            print(f"\n--- {time.strftime('%H:%M:%S')}  admins: nomade watch --once", flush=True)
            _nomade(config, "watch", "--once", "--wait", str(TICK_S + 1), "--no-color", check=False)
            print("--- users: squeue -o \"%.10i %.9u %.8T %k\"", flush=True)
            subprocess.run([squeue, "-o", "%.10i %.9u %.8T %k"], check=False)
            if all(j not in info or is_final(info[j].state) for j in [leak_id, *others]):
                break
    finally:
        subscriber.terminate()
        subscriber.wait()
        sub_out.close()
    return leak_id, others


def _report(db: Path, ws: Path, leak_id: str, others: list[str]) -> None:
    states = wait_labelled(db, [leak_id, *others], timeout_s=60)
    print(f"\n  job {leak_id}: stored final state {states.get(leak_id, 'not yet known')}")
    lines = (ws / "subscribe.jsonl").read_text().splitlines()
    mine = [json.loads(line) for line in lines if json.loads(line).get("job_id") == leak_id]
    print(f"  `nomade subscribe --min-level high` received {len(lines)} predictions, "
          f"{len(mine)} for job {leak_id}")
    for p in mine[:3]:
        texts = list(dict.fromkeys(f["text"] for f in p.get("factors", [])))
        print(f"    {time.strftime('%H:%M:%S', time.localtime(p['ts']))} risk {p['risk']:.2f} "
              f"{p['level']}: {'; '.join(texts[:2])}")
    commented = commented_jobs(db)
    for job_id in [leak_id, *others]:
        print(f"  job {job_id} ({states.get(job_id, '?')}): "
              + ("NØMADE wrote a Comment" if job_id in commented else "no Comment"))


def commented_jobs(db: Path) -> set[str]:
    """The jobs the agent flagged in their Comment: those with ``[ml.alerts]
    confirm_predictions`` consecutive stored predictions at or above the threshold
    (the policy the agent applies; the shipped defaults, as the demo runs)."""
    from nomade.config import Config
    alerts = Config().ml.alerts
    out = set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT job_id, risk FROM predictions ORDER BY job_id, ts").fetchall()
    finally:
        conn.close()
    run: dict[str, int] = {}
    for job_id, risk in rows:
        run[job_id] = run.get(job_id, 0) + 1 if risk >= alerts.high_risk_threshold else 0
        if run[job_id] >= alerts.confirm_predictions:
            out.add(str(job_id))
    return out


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nomade.tools.demo", description=__doc__.split("\n\n")[0],
        epilog="What it does, step by step, is in the module's docstring; `make demo` runs it.")
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("NOMADE_DEMO_DIR", "/tmp/nomade-demo")),
                        help="workspace for config, store and daemon logs, emptied first "
                             "(default $NOMADE_DEMO_DIR or /tmp/nomade-demo)")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("NOMADE_DEMO_SEED", "11")),
                        help="picks the ordinary jobs beside the leak (default $NOMADE_DEMO_SEED or 11)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every phase ran."""
    args = _args(argv)
    if os.geteuid() != 0:
        print("make demo needs root: it submits jobs as several users and updates Comments",
              file=sys.stderr)
        return 2
    ws = args.dir
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    config = write_config(ws, sample_interval_s=SAMPLE_INTERVAL_S, header="nomade.tools.demo")
    ensure_users()
    slurm = Slurm(use_pyslurm="never")
    daemons = Daemons(ws, config)
    seed = args.seed
    print(f"workspace {ws} (config, store, daemon logs)")
    try:
        daemons.start("agent")
        daemons.start("collector")
        leak_id, others = _live(slurm, config, ws, seed)
        _report(ws / "nomade.db", ws, leak_id, others)
    finally:
        daemons.stop_all()
    print(f"\nlogs: {ws}/agent.log {ws}/collector.log; store: {ws}/nomade.db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
