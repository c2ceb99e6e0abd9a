"""Helpers for tests on the project's real Slurm test cluster (slurm-conf/start-test-cluster.sh).

``find_cluster()`` says whether the cluster is usable (and why not); ``submit`` and
``wait_final`` / ``wait_state`` are thin conveniences over ``nomade.slurm.Slurm``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nomade.slurm import FinalState, Slurm

#: First line of the slurm.conf that start-test-cluster.sh writes.
MARKER = "# nomade-test-cluster RUN="


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster: where it keeps things, its nodes, a Slurm client."""

    run_dir: Path
    node_spool: Path      # Prolog/Epilog events (written as root)
    ctld_spool: Path      # PrologSlurmctld/EpilogSlurmctld/jobcomp events (written as user slurm)
    out_dir: Path         # job output, writable by every user
    nodes: tuple[str, ...]
    test_user: str        # an unprivileged user that can submit jobs
    slurm: Slurm


def find_cluster() -> SlurmCluster | str:
    """The test cluster, or the reason why it cannot be used (a one-line string)."""
    run_dir = Path(os.environ.get("NOMADE_TEST_CLUSTER", "/tmp/nomade-cluster"))
    if os.geteuid() != 0:
        return "the Slurm tests need root (they submit as another user and update Comments)"
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))   # the file Slurm's tools read
    try:
        first = conf.read_text(errors="replace").splitlines()[:1]
    except OSError as exc:
        return f"no Slurm config ({exc}); run slurm-conf/start-test-cluster.sh"
    if first != [MARKER + str(run_dir)]:
        return (f"{conf} is not the test cluster's at {run_dir}; "
                "run slurm-conf/start-test-cluster.sh")
    slurm = Slurm(timeout_s=30.0, use_pyslurm="never")
    if not slurm.ping():
        return "the Slurm test cluster is not up; run slurm-conf/start-test-cluster.sh --if-down"
    return SlurmCluster(
        run_dir=run_dir, node_spool=run_dir / "spool" / "node", ctld_spool=run_dir / "spool" / "ctld",
        out_dir=run_dir / "out", nodes=tuple(slurm.nodes()),
        test_user=os.environ.get("NOMADE_TEST_USER", "nomadetest"), slurm=slurm)


def submit(cluster: SlurmCluster, wrap: str, *options: str, as_user: str | None = None,
           name: str = "nomade-test") -> str:
    """Submit ``wrap`` (one command line) with sbatch ``options``; the job id.

    Output goes to ``<out_dir>/<name>-<id>.out``; the job runs in ``out_dir``.
    """
    base = [f"--job-name={name}", f"--output={cluster.out_dir}/{name}-%j.out",
            f"--chdir={cluster.out_dir}"]
    return cluster.slurm.submit(wrap=wrap, options=[*base, *options], as_user=as_user)


def wait_final(slurm: Slurm, job_id: str, timeout: float) -> FinalState:
    """Poll until ``job_id`` is in a final state; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        final = slurm.final_states([job_id])[job_id]
        if final is not None:
            return final
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not final after {timeout:g} s")
        time.sleep(0.5)


def wait_state(slurm: Slurm, job_id: str, wanted: Sequence[str], timeout: float) -> str:
    """Poll until ``job_id``'s state is one of ``wanted``; that state (TimeoutError if not)."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() <= deadline:
        jobs = slurm.list_jobs([job_id])
        state = jobs[0].state if jobs else None
        if state in wanted:
            return state
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} is {state}, not one of {list(wanted)}, after {timeout:g} s")
