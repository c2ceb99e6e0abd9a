"""``nomade import sacct --since`` against the test cluster's real slurmdbd and MariaDB.

Jobs with known ends (COMPLETED, FAILED by ``exit 3``, CANCELLED while running,
CANCELLED while pending) are submitted; once sacct lists them ended, the import writes
them into a fresh store with the states, labels and requests they were submitted with
(and the state Slurm's controller reports), and a second run resumes after the first.
This Slurm's own ``sacct --parsable2`` (with steps) and ``sacct --json`` parse strictly
into the same jobs. Other tests share the cluster, so only this module's jobs are checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from slurmtools import SlurmCluster, submit, wait_final, wait_state

from nomade import backfill, slurmstates
from nomade.store import Job, Store
from nomade.traces import SACCT_FORMAT, Trace, parse_sacct_lines, read_sacct

pytestmark = pytest.mark.slurm
MiB = 2**20
DAY = 86400.0
# name: (sbatch options, command, as the test user?, expected state, exit code or None)
JOBS = {
    "ok": (["--cpus-per-task=1", "--mem=300M", "--time=7"], "true", False, "COMPLETED", 0),
    "exit3": (["--cpus-per-task=2", "--mem=200M", "--time=3"], "exit 3", True, "FAILED", 3),
    "cancelled": (["--cpus-per-task=1", "--mem=100M", "--time=10"], "sleep 300", False, "CANCELLED", None),
    # pending for want of its node (the one "cancelled" runs on, asked for whole), cancelled
    # there. (A job cancelled while held never became eligible: sacct lists it for -j, but
    # no time window selects it, so it is not part of `--since` history.)
    "never_ran": (["--cpus-per-task=1", "--mem=100M", "--time=2", "--exclusive"], "true", True, "CANCELLED", None),
}
REQUESTS = {"ok": (1, 300 * MiB, 420.0), "exit3": (2, 200 * MiB, 180.0),
            "cancelled": (1, 100 * MiB, 600.0), "never_ran": (1, 100 * MiB, 120.0)}


def _nomade(*argv: str) -> int:
    from nomade.cli import main
    return main(list(argv))


@pytest.fixture(scope="module")
def ended(slurm_cluster: SlurmCluster) -> dict[str, object]:
    """Submit the JOBS, end them, wait until sacct lists every one of them ended."""
    c = slurm_cluster
    t0 = math.floor(time.time()) - 1            # sacct's times have whole seconds
    def sub(name: str, *more: str) -> str:
        opts, cmd, as_test_user, _, _ = JOBS[name]
        return submit(c, cmd, *opts, *more, as_user=c.test_user if as_test_user else None, name=f"acct-{name}")
    ids = {name: sub(name) for name in ("ok", "exit3", "cancelled")}
    wait_state(c.slurm, ids["cancelled"], ["RUNNING"], timeout=60)
    node = c.slurm.list_jobs([ids["cancelled"]])[0].nodes[0]
    ids["never_ran"] = sub("never_ran", f"--nodelist={node}")
    time.sleep(2)   # two scheduler passes (bf_interval=1): it stays pending, its node is busy
    wait_state(c.slurm, ids["never_ran"], ["PENDING"], timeout=10)
    c.slurm.cancel(ids["never_ran"])
    c.slurm.cancel(ids["cancelled"])
    finals = {name: wait_final(c.slurm, job_id, timeout=60) for name, job_id in ids.items()}
    t1 = time.time()
    deadline = time.monotonic() + 60
    while True:   # slurmctld sends job ends to slurmdbd on its own schedule
        text = c.slurm.accounting(backfill.sacct_time(t0), backfill.sacct_time(time.time() + 1), backfill.FIELDS)
        trace = parse_sacct_lines(text.splitlines(keepends=True), "sacct")
        listed = {j: s for j, s in zip(trace.jobs.job_id.tolist(), trace.jobs.state.tolist(), strict=True)}
        if all(slurmstates.is_final(listed.get(i)) for i in ids.values()):
            break
        assert time.monotonic() < deadline, f"sacct does not list {ids} ended after 60 s: {listed}"
        time.sleep(0.5)
    return {"ids": ids, "finals": finals, "t0": t0, "t1": t1, "nodes": set(c.nodes), "user": c.test_user}


def _stored(db: Path, ids: dict[str, str]) -> dict[str, Job | None]:
    """Our jobs' rows, ``updated_ts`` zeroed (a job listed again is merged, not doubled)."""
    with Store(db, readonly=True) as store:
        rows = {name: store.get_job(job_id) for name, job_id in ids.items()}
    return {name: None if job is None else replace(job, updated_ts=0.0) for name, job in rows.items()}


def test_import_since_stores_real_accounting_and_resumes(ended, tmp_path, capsys):
    ids, finals = ended["ids"], ended["finals"]
    db = tmp_path / "history.db"
    since = backfill.sacct_time(ended["t0"] - 2 * DAY)   # three one-day windows, the last ends now
    assert _nomade("import", "sacct", "--since", since, "--window-days", "1", "--db", str(db), "--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["windows"] == 3 and first["since"] == since and first["written_jobs"] >= len(ids)
    jobs = _stored(db, ids)
    for name, (_, _, as_test_user, state, exit_code) in JOBS.items():
        job = jobs[name]
        assert job is not None, f"{name} (job {ids[name]}) is not in the store"
        assert (job.state, job.label) == (state, slurmstates.label_for(state)), name
        assert job.state == finals[name].state, f"{name}: sacct and slurmctld disagree"
        assert (job.req_cpus, job.req_mem_bytes, job.time_limit_s) == REQUESTS[name], name
        assert job.user == (ended["user"] if as_test_user else "root") and job.account == "nomade", name
        assert job.partition == "debug" and job.state_source == "import", name
        assert ended["t0"] <= job.submit_ts <= job.end_ts <= ended["t1"] + 1, name
        if exit_code is not None:
            assert job.exit_code == exit_code, name
        if name == "never_ran":
            assert job.start_ts is None and job.nodes == () and job.num_nodes == 1, name
        else:
            assert job.submit_ts <= job.start_ts <= job.end_ts and job.num_nodes == 1, name
            assert set(job.nodes) <= ended["nodes"] and len(job.nodes) == 1, name

    cursor = json.loads(backfill.cursor_path(db).read_text())
    assert cursor["since_text"] == since and cursor["done_until_text"] == first["until"]
    with Store(db, readonly=True) as store:
        before = store.counts()
    # the same command again: only the span after the first run's end is fetched
    assert _nomade("import", "sacct", "--since", since, "--window-days", "1", "--db", str(db), "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["windows"] == 1 and again["since"] == since and again["until"] >= first["until"]
    assert json.loads(backfill.cursor_path(db).read_text())["done_until_text"] == again["until"]
    assert _stored(db, ids) == jobs
    with Store(db, readonly=True) as store:
        after = store.counts()
    # nothing doubled: only jobs of other tests that were still running can come back
    assert after["jobs"] - before["jobs"] <= again["jobs"] and after["labelled"] >= before["labelled"]
    assert {k: after[k] for k in ("job_samples", "node_samples", "predictions")} == \
           {k: before[k] for k in ("job_samples", "node_samples", "predictions")}


def _by_id(trace: Trace) -> dict[str, tuple]:
    j = trace.jobs
    cols = (j.state.tolist(), j.label.tolist(), j.req_cpus.tolist(), j.req_mem_bytes.tolist(),
            j.time_limit_s.tolist(), j.submit_ts.tolist(), j.start_ts.tolist(), j.end_ts.tolist())
    return {job_id: tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row)
            for job_id, *row in zip(j.job_id.tolist(), *cols, strict=True)}


def test_this_slurms_sacct_text_and_json_parse_as_the_fixtures_claim(ended, slurm_cluster, tmp_path):
    ids = ended["ids"]
    sacct = slurm_cluster.slurm.tool("sacct")

    def run(*args: str) -> str:
        return subprocess.run([sacct, "--allusers", "--jobs", ",".join(ids.values()), *args],
                              capture_output=True, text=True, check=True, timeout=60).stdout
    # the documented command, steps included (123.batch, 123.extern): read strictly
    text = tmp_path / "sacct.txt"
    text.write_text(run("--parsable2", f"--format={SACCT_FORMAT}"))
    lines = text.read_text().splitlines()
    assert lines[0] == SACCT_FORMAT.replace(",", "|")
    t = read_sacct(text)
    assert sorted(t.jobs.job_id.tolist()) == sorted(ids.values()) and t.skipped == 0
    assert t.ignored == sum(1 for ln in lines[1:] if "." in ln.split("|")[0]) > 0
    assert t.never_ran == 1 and t.shape == "sacct --parsable2"
    raw = {ln.split("|")[0]: ln.split("|") for ln in lines[1:]}
    head = lines[0].split("|")
    never = dict(zip(head, raw[ids["never_ran"]], strict=True))
    assert never["State"].startswith("CANCELLED by ") and never["NodeList"] == "None assigned"
    got = _by_id(t)
    for name, job_id in ids.items():
        assert got[job_id][:2] == (JOBS[name][3], slurmstates.label_for(JOBS[name][3])), name
        assert got[job_id][2:5] == REQUESTS[name], name
    # sacct --json of this release (openapi/dbv0.0.38): the same jobs, the same values
    js = tmp_path / "sacct.json"
    js.write_text(run("--json"))
    tj = read_sacct(js)
    assert tj.shape.startswith("sacct --json") and tj.skipped == 0
    assert _by_id(tj) == got
