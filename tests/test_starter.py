"""The starter model shipped with the package: present, small, loadable, chosen when a
site has no models of its own (or its own lost to it), and one model for any sampling
interval: the same job sampled every 3 s and every 30 s gets the same risk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nomade import features
from nomade.ml import persist, starter
from nomade.ml.inference import Scorer

torch.set_num_threads(1)
T0 = 1.9e9
MIB = float(1 << 20)
#: Largest difference allowed between the risks of one job sampled every 3 s and every
#: 30 s, at the same tick (from its second 30 s sample on, when both have two samples).
INTERVAL_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(starter.STARTER_DIR)


def test_the_starter_is_shipped_small_and_says_what_it_was_trained_on() -> None:
    meta = persist.read_metadata(starter.STARTER_DIR)
    assert set(meta["models"]) == {"gnn", "lstm", "autoencoder"}
    size = sum(p.stat().st_size for p in starter.STARTER_DIR.iterdir() if p.is_file())
    assert size < 5 * (1 << 20), size
    data = meta["training_data"]
    assert data["grid"] == {"step_s": features.GRID_STEP_S, "length": 32}
    assert data["augment_intervals_s"] and data["jobs"] >= 300
    assert starter.COMPARISON not in meta   # the starter is judged against nothing
    # the GNN carries its reference jobs: nothing of a site's but its own jobs is needed
    gnn = Scorer.load(starter.STARTER_DIR).models["gnn"]
    assert len(gnn.reference_.x) >= 0.8 * data["jobs"]


def test_which_models_are_used_and_why(tmp_path: Path) -> None:
    site = tmp_path / "models"
    choice = starter.choose(site)
    assert choice.which == "starter" and choice.models_dir == starter.STARTER_DIR
    assert "no models of the site's own" in choice.reason
    # a site's models (a copy of the starter's files stands in for them)
    site.mkdir()
    for p in starter.STARTER_DIR.iterdir():
        (site / p.name).write_bytes(p.read_bytes())
    assert starter.choose(site).which == "site"   # no comparison recorded: the site's own
    meta = json.loads((site / persist.METADATA_FILE).read_text())
    for use, which in (("starter", "starter"), ("site", "site")):
        meta[starter.COMPARISON] = {"use": use, "site_auc": 0.81, "starter_auc": 0.9, "jobs": 40}
        (site / persist.METADATA_FILE).write_text(json.dumps(meta))
        choice = starter.choose(site)
        assert choice.which == which and "0.810 against the starter's 0.900 on 40 recent jobs" in choice.reason
    assert starter.choose(site, tmp_path / "no-starter").which == "site"
    assert starter.choose(tmp_path / "none", tmp_path / "no-starter").which == "none"


# ------------------------------------------------------------------ one job, two intervals

def _job(limit_s: float, mem_mb: float) -> features.JobTable:
    return features.JobTable(
        job_id=np.array(["1"], dtype=object), user=np.array([0]), req_cpus=np.array([1.0]),
        req_mem_bytes=np.array([mem_mb * MIB]), req_gpus=np.array([0.0]), time_limit_s=np.array([limit_s]),
        submit_ts=np.array([T0 - 5]), start_ts=np.array([T0]), end_ts=np.array([np.nan]),
        state=np.array([None], dtype=object), label=np.array([np.nan]))


def _sampled(every_s: float, phase_s: float, run_s: float, mem_limit_mb: float,
             mem_mb: callable, cpu_eff: float) -> features.SampleTable:
    """One underlying process sampled every ``every_s`` from ``phase_s``: memory
    ``mem_mb(t)``, one CPU busy ``cpu_eff`` of the time, a steady trickle of writes."""
    t = np.arange(phase_s, run_s, every_s)
    mem = np.array([mem_mb(x) for x in t]) * MIB
    n = len(t)
    cols = {"alloc_cpus": np.ones(n), "cpu_user_s": cpu_eff * t * 0.95, "cpu_system_s": cpu_eff * t * 0.05,
            "mem_bytes": mem, "mem_peak_bytes": np.maximum.accumulate(mem),
            "mem_limit_bytes": np.full(n, mem_limit_mb * MIB), "mem_limit_hits": np.zeros(n),
            "read_bytes": 2e4 * t, "write_bytes": 5e4 * t, "nfs_write_bytes": np.zeros(n),
            "nprocs": np.ones(n), "nthreads": np.ones(n)}
    return features.SampleTable(np.zeros(n, np.int64), T0 + t, cols)


def _risks(scorer: Scorer, jobs: features.JobTable, samples: features.SampleTable,
           ticks: np.ndarray) -> np.ndarray:
    """The risk at each tick as the agent's tick computes it (features, sequences on the
    model's grid, graph neighbours by the start-time features as of the start)."""
    rows, t = np.zeros(len(ticks), np.int64), T0 + ticks
    X, mask = features.asof_features(jobs, samples, t, rows)
    step, length = scorer.grid
    S, lengths = features.sequences(jobs, samples, t, length, step, rows)
    start_X = np.repeat(features.start_features(jobs, np.array([0])), len(ticks), axis=0)
    nbrs = scorer.neighbours(start_X, np.broadcast_to(features.START_PART, start_X.shape), jobs.start_ts[rows])
    return np.asarray(scorer.score(X, mask, S, lengths, jobs.start_ts[rows], explain=False,
                                   neighbours=nbrs).risk, np.float64)


JOBS = {
    # a leak toward --mem=512M over ten minutes, a 20 min limit
    "leak": (1200.0, 512.0, lambda t: 60 + 0.75 * t, 0.9, 600.0),
    # steady: 150 MB of 512, busy, a 20 min limit, 10 minutes of work
    "steady": (1200.0, 512.0, lambda t: 150 + 5 * np.sin(t / 60), 0.95, 600.0),
    # a stall: idle CPU from the start, heading for its 6 min limit
    "stall": (360.0, 256.0, lambda t: 40.0, 0.0, 350.0),
}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_the_same_job_sampled_every_3_s_and_every_30_s_gets_the_same_risk(scorer: Scorer, name: str) -> None:
    limit_s, mem_limit_mb, mem_mb, eff, run_s = JOBS[name]
    jobs = _job(limit_s, mem_limit_mb)
    ticks = np.arange(65.0, run_s, 15.0)
    fine = _risks(scorer, jobs, _sampled(3.0, 1.0, run_s, mem_limit_mb, mem_mb, eff), ticks)
    coarse = _risks(scorer, jobs, _sampled(30.0, 4.0, run_s, mem_limit_mb, mem_mb, eff), ticks)
    assert np.isfinite(fine).all() and np.isfinite(coarse).all()
    gap = np.abs(fine - coarse)
    assert gap.max() <= INTERVAL_TOLERANCE, (name, np.round(fine, 3), np.round(coarse, 3))
    if name == "stall":   # not a constant model: its risk moves with the behaviour, at both intervals
        assert fine[-1] - fine[0] >= 0.2 and coarse[-1] - coarse[0] >= 0.2, (np.round(fine, 3), np.round(coarse, 3))


@pytest.mark.parametrize("every_s", [3.0, 30.0])
def test_a_steady_busy_job_is_never_riskier_than_the_average_training_job(scorer: Scorer, every_s: float) -> None:
    """Most of a site's jobs keep their CPUs busy; the corpus cannot hold one (its 2-core
    host runs 28 jobs at once), so the starter scores them from the edge of what it
    learnt (``features.Normalizer``). A starter that read that edge from three outliers
    put this job at 0.43-0.59: a "moderate" to "high" for every healthy job of a site."""
    limit_s, mem_limit_mb, mem_mb, eff, run_s = JOBS["steady"]
    jobs = _job(limit_s, mem_limit_mb)
    risk = _risks(scorer, jobs, _sampled(every_s, 1.0, run_s, mem_limit_mb, mem_mb, eff), np.arange(65.0, run_s, 15.0))
    average = persist.read_metadata(starter.STARTER_DIR)["training_data"]["splits"]["train"]["failure_rate"]
    assert risk.max() < average, (np.round(risk, 3), average)
