"""The live pipeline a lab run records through: the agent and a collector as child
processes with a config of their own, on the project's Slurm test cluster.

Shared by ``make demo`` (``nomade.tools.demo``) and the corpus recorder (``nomade.tools.lab.record``).
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from nomade.slurmstates import is_final
from nomade.store import Store

CLUSTER = Path(os.environ.get("NOMADE_TEST_CLUSTER", "/tmp/nomade-cluster"))
LAB_USERS = ("nomadetest", "nomadelab1", "nomadelab2", "nomadelab3")
TICK_S = 5.0


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curve_keys(ws: Path) -> Path:
    """CURVE keys for the agent, the collector and subscribers (``nomade.zmqkeys.setup_keys``)
    under ``ws/keys``: the collector's key, named for this host, speaks for every node of
    the test cluster. The keys directory."""
    from nomade import zmqkeys
    from nomade.slurm import Slurm

    host = socket.gethostname().split(".")[0]   # the collector's sender ([collector] node_name "")
    return zmqkeys.setup_keys(ws / "keys", host, Slurm(use_pyslurm="never").nodes())


def write_config(ws: Path, *, sample_interval_s: float, tick_s: float = TICK_S,
                 header: str = "nomade.tools.lab", score: bool = True) -> Path:
    """Write ``ws/nomade.toml``: loopback endpoints on free ports, the given collector
    interval, the test cluster's spools, store and models under ``ws``, CURVE with keys under
    ``ws/keys``. ``score``: False for an agent that only records (no starter model, so
    no predictions and no Comments). Its path."""
    ingest, pub, metrics = free_port(), free_port(), free_port()
    keys = curve_keys(ws)
    text = f"""# written by {header}
[ml]
models_dir = "{ws}/models"
starter = {str(score).lower()}
[ml.training]
epochs = 60
[collector]
agent_endpoint = "tcp://127.0.0.1:{ingest}"
interval_s = {sample_interval_s}
jitter_s = 0.5
outbox_dir = "{ws}/outbox"
spool_dir = "{CLUSTER}/spool/node"
[agent]
ingest_endpoint = "tcp://127.0.0.1:{ingest}"
publish_endpoint = "tcp://127.0.0.1:{pub}"
metrics_address = "127.0.0.1:{metrics}"
interval_s = {tick_s}
spool_dirs = ["{CLUSTER}/spool/ctld"]
[storage]
db_path = "{ws}/nomade.db"
[security]
curve_enabled = true
keys_dir = "{keys}"
"""
    path = ws / "nomade.toml"
    path.write_text(text)
    return path


class Daemons:
    """The agent and the collector as child processes, logging to ``ws/<name>.log``."""

    def __init__(self, ws: Path, config: Path) -> None:
        self.ws, self.config = ws, config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}

    def start(self, name: str) -> None:
        """Start ``nomade <name>`` (``agent`` or ``collector``) with the workspace config."""
        log = self.logs[name] = open(self.ws / f"{name}.log", "ab")  # the child writes to it until stop
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "nomade", "--config", str(self.config), "-v", name],
            stdout=log, stderr=subprocess.STDOUT)

    def stop(self, name: str) -> None:
        """SIGTERM (the daemon drains what arrived), SIGKILL after 30 s; its log closed."""
        proc = self.procs.pop(name, None)
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            log = self.logs.pop(name, None)
            if log is not None:
                log.close()

    def check(self) -> None:
        """SystemExit with the log's tail if a daemon died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.ws / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"the {name} exited with {proc.returncode}:\n{tail}")

    def stop_all(self) -> None:
        """Stop every daemon started here."""
        for name in list(self.procs):
            self.stop(name)


def ensure_users(users: tuple[str, ...] = LAB_USERS) -> None:
    """Create the lab's users when missing (needs root)."""
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)


def wait_labelled(db: Path, job_ids: list[str], timeout_s: float = 120.0) -> dict[str, str]:
    """Wait until the agent has stored a final state for every job; id -> state."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with Store(db, readonly=True) as store:
            for job_id in job_ids:
                row = store.get_job(job_id)
                if row is not None and row.state and is_final(row.state):
                    states[job_id] = row.state
        if len(states) == len(job_ids):
            break
        time.sleep(2)
    return states
