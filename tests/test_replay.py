"""Replay of test jobs through the live scorer: ticks and figures by hand on a crafted
case, then end to end with a real trained Scorer on a synthetic history."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jobtables import job_table

from nomade import config, features
from nomade.agent import scoring
from nomade.ml import evaluate, replay, train
from nomade.ml.inference import Scorer

torch.set_num_threads(1)

STATES = ["FAILED", "OUT_OF_MEMORY", "COMPLETED", "COMPLETED", "TIMEOUT", "COMPLETED"]
START = np.array([0.0, 0.0, 100.0, 0.0, 0.0, 0.0])
END = np.array([600.0, 300.0, 400.0, 50.0, 1200.0, 100.0])


def _jobs() -> features.JobTable:
    return job_table(STATES, START, END)


def _risk(job: np.ndarray, elapsed: np.ndarray) -> np.ndarray:
    """The crafted risks: job 0 rises to 0.75 after 400 s, job 1 is 0.9, job 2 0.65,
    job 3 0.71, job 4 0.1, job 5 is scored by no model (NaN)."""
    flat = np.array([np.nan, 0.9, 0.65, 0.71, 0.1, np.nan])[job]
    return np.where(job == 0, np.where(elapsed >= 400, 0.75, 0.2), flat)


def test_ticks_are_the_agent_ticks_before_the_end() -> None:
    jobs = _jobs()
    job, t = replay.tick_times(jobs, np.arange(len(jobs)), 60.0, max_ticks=4)
    by_job = {j: t[job == j].tolist() for j in range(len(jobs))}
    assert by_job[0] == [0.0, 120.0, 300.0, 420.0]       # 10 ticks: floor(k * 10 / 4) = 0, 2, 5, 7
    assert by_job[1] == [0.0, 60.0, 120.0, 180.0]        # 5 ticks: floor(k * 5 / 4) = 0, 1, 2, 3
    assert by_job[2] == [100.0, 160.0, 220.0, 280.0]
    assert by_job[3] == [0.0]                            # shorter than a step: one tick at its start
    assert by_job[4] == [0.0, 300.0, 600.0, 900.0]       # 20 ticks, every 5th
    for j in range(len(jobs)):
        assert all(START[j] <= x < END[j] for x in by_job[j])
    job, t = replay.tick_times(jobs, np.array([4]), 60.0, max_ticks=100)
    assert np.array_equal(job, np.zeros(20, np.int64)) and np.array_equal(t, np.arange(20) * 60.0)


def test_figures_by_hand() -> None:
    jobs = _jobs()
    job, t = replay.tick_times(jobs, np.arange(len(jobs)), 60.0, max_ticks=100)
    risk = _risk(job, t - START[job])
    thresholds = [0.7, 0.3, 0.6, 0.8]
    first, top = replay.first_crossings(len(jobs), job, t, risk, thresholds)
    assert first[0, :3].tolist() == [420.0, 420.0, 420.0] and np.isnan(first[0, 3])
    assert first[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert np.isnan(first[2, 0]) and first[2, 1:3].tolist() == [100.0, 100.0]
    assert np.isnan(top[5]) and top[0] == 0.75

    r = replay.figures(jobs.end_ts, jobs.label, jobs.state, first, top, 0.7)
    # failed: 0 (crossed at 420, ended 600), 1 (at 0, ended 300), 4 (never); completed: 2 (never), 3 (0.71)
    assert r["unscored"] == 1 and r["jobs"] == 6
    assert r["coverage"] == {"caught": 2, "failed": 3, "rate": pytest.approx(2 / 3)}
    assert r["false_alarms"] == {"alerted": 1, "completed": 2, "rate": 0.5}
    assert r["precision"] == {"failed": 2, "alerted": 3, "rate": pytest.approx(2 / 3)}
    # lead times 180 s and 300 s: 3 and 5 minutes
    assert sorted(r["lead_times_s"]) == [180.0, 300.0]
    assert r["lead_time_min"] == {"n": 2, "median": 4.0, "p10": pytest.approx(3.2), "p90": pytest.approx(4.8)}
    assert r["levels"]["moderate"]["false_alarms"]["alerted"] == 2 and r["levels"]["moderate"]["bound"] == 0.3
    assert r["levels"]["high"]["coverage"]["caught"] == 2
    crit = r["levels"]["critical"]
    assert crit["coverage"]["caught"] == 1 and crit["false_alarms"]["alerted"] == 0
    assert crit["lead_time_min"]["median"] == 5.0
    assert r["by_state"]["COMPLETED"] == {"jobs": 2, "crossed": 1, "rate": 0.5, "failure": False,
                                          "lead_time_min": None}
    assert r["by_state"]["TIMEOUT"]["rate"] == 0.0 and r["by_state"]["FAILED"]["crossed"] == 1
    assert r["by_state"]["OUT_OF_MEMORY"]["lead_time_min"]["median"] == 5.0
    assert list(r["by_state"])[0] == "COMPLETED"                  # most jobs first


def test_a_crossing_after_the_end_is_no_alert() -> None:
    first = np.array([[700.0, 0.0, 0.0, 700.0]])
    r = replay.figures(np.array([600.0]), np.array([1.0]), np.array(["FAILED"], dtype=object), first,
                       np.array([0.9]), 0.7)
    assert r["coverage"]["caught"] == 0 and r["levels"]["moderate"]["coverage"]["caught"] == 1
    with pytest.raises(ValueError, match="first must be"):
        replay.figures(np.array([600.0]), np.array([1.0]), np.array(["FAILED"], dtype=object),
                       first[:, :2], np.array([0.9]), 0.7)


# ------------------------------------------------------------------ end to end, real scorer

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A synthetic history (with samples), compared and replayed as `nomade evaluate` does."""
    path = tmp_path_factory.mktemp("cfg") / "nomade.toml"
    path.write_text("[ml.training]\nepochs = 4\npatience = 2\n")
    cfg = config.load(path)
    jobs, samples = train.synthetic_tables(700, seed=3)
    p = train.prepare(jobs, samples, cfg.collector.interval_s, cfg.ml.sequence_length, max_per_job=4,
                      source="synthetic")
    models = tmp_path_factory.mktemp("models")
    source = evaluate.ReplaySource(jobs, samples, step_s=120.0, max_ticks=8)
    report = evaluate.compare(p, cfg, str(models), source=source)
    return cfg, jobs, samples, p, models, report


def test_replay_report_through_a_real_scorer(trained: tuple) -> None:
    cfg, jobs, samples, p, models, report = trained
    r = report["replay"]
    test_jobs = np.unique(p.job[p.rows("test")])
    assert r["jobs"] == len(test_jobs) and r["unscored"] == 0 and r["skipped_jobs"] == 0
    assert r["threshold"] == cfg.ml.alerts.high_risk_threshold and r["step_s"] == 120.0
    assert len(test_jobs) <= r["ticks"] <= 8 * len(test_jobs)
    failed = int(np.sum(jobs.label[test_jobs] == 1))
    assert r["coverage"]["failed"] == failed and r["false_alarms"]["completed"] == len(test_jobs) - failed
    assert sum(v["jobs"] for v in r["by_state"].values()) == len(test_jobs)
    assert len(r["lead_times_s"]) == r["coverage"]["caught"] == len(r["lead_states"])
    assert all(v > 0 for v in r["lead_times_s"])
    assert "replay of" in evaluate.format_table(report) and "OUT_OF_MEMORY" in evaluate.format_table(report)


def test_replay_equals_scoring_each_tick_alone(trained: tuple) -> None:
    """Batching many jobs' ticks in one call changes nothing: scoring every tick of
    every test job one at a time with the loaded models, graph neighbours found as the
    agent's tick finds them, gives the same figures."""
    cfg, jobs, samples, p, models, report = trained
    scorer = Scorer.load(models)
    test_jobs = np.unique(p.job[p.rows("test")])
    job, t = replay.tick_times(jobs, test_jobs, 120.0, 8)
    risk = []
    with torch.inference_mode():
        for r, tt in zip(test_jobs[job], t, strict=True):
            X, mask = features.asof_features(jobs, samples, np.array([tt]), np.array([r]))
            S, lengths = features.sequences(jobs, samples, np.array([tt]), scorer.grid[1], scorer.grid[0],
                                            np.array([r]))
            # the agent's tick: neighbours by the start-time features as of the job's start
            at_start, known = features.asof_features(jobs, features.SampleTable.empty(), jobs.start_ts[[r]],
                                                     np.array([r]))
            start_X = np.where(known & (np.arange(features.N_FEATURES) < features.N_START), at_start, 0.0)
            nbrs = scoring.search_neighbours(scorer, start_X.astype(np.float32), jobs.start_ts[[r]])
            risk.append(float(scorer.score(X, mask, S, lengths, jobs.start_ts[[r]], explain=False,
                                           neighbours=nbrs).risk[0]))
    # the models' own time grid (features.GRID_STEP_S x [ml] sequence_length), as the agent reads it
    assert scorer.grid == (features.GRID_STEP_S, cfg.ml.sequence_length)
    batched_risk = replay.score_ticks(scorer, jobs, samples, test_jobs[job], t, scorer.grid[1],
                                      scorer.grid[0], chunk=5)
    np.testing.assert_allclose(batched_risk, risk, rtol=1e-5, atol=1e-6)
    thresholds = [cfg.ml.alerts.high_risk_threshold, *(b for _, b in replay.LEVEL_BOUNDS)]
    # an alert is confirmed as the agent confirms it ([ml.alerts] confirm_predictions)
    confirm = cfg.ml.alerts.confirm_predictions
    first, _ = replay.first_crossings(len(test_jobs), job, t, replay.confirmed(job, np.array(risk), confirm),
                                      thresholds)
    top = replay.first_crossings(len(test_jobs), job, t, np.array(risk), [])[1]
    alone = replay.figures(jobs.end_ts[test_jobs], jobs.label[test_jobs], jobs.state[test_jobs], first, top,
                           thresholds[0])
    batched = report["replay"]
    for key in ("coverage", "false_alarms", "precision", "by_state", "levels", "lead_states"):
        assert alone[key] == batched[key], key
    assert alone["lead_times_s"] == pytest.approx(batched["lead_times_s"])
    again = replay.replay(jobs, samples, test_jobs, scorer, threshold=thresholds[0], step_s=120.0,
                          interval_s=scorer.grid[0], sequence_length=scorer.grid[1], max_ticks=8, chunk=7,
                          confirm=confirm)
    assert again["coverage"] == batched["coverage"] and again["ticks"] == batched["ticks"]


def test_replay_refuses_tables_the_data_was_not_prepared_from(trained: tuple) -> None:
    from nomade.errors import NomadeError

    cfg, jobs, samples, p, models, report = trained
    other, other_samples = train.synthetic_tables(700, seed=4)
    with pytest.raises(NomadeError, match="not the ones the dataset was prepared from"):
        evaluate._replay(p, cfg, {"models": Scorer.load(models)}, evaluate.ReplaySource(other, other_samples, 60.0),
                         lambda line: None)
    with pytest.raises(ValueError, match="step_s must be > 0"):
        replay.replay(jobs, samples, np.array([0]), Scorer.load(models), threshold=0.7, step_s=0.0,
                      interval_s=30.0, sequence_length=20)


def test_replay_figures_per_group_add_up_to_the_whole(trained: tuple) -> None:
    cfg, jobs, samples, p, models, report = trained
    test_jobs = np.unique(p.job[p.rows("test")])
    groups = np.array([None] * len(jobs), dtype=object)
    groups[test_jobs] = np.where(test_jobs % 2 == 0, "even", "odd")
    r = replay.replay(jobs, samples, test_jobs, Scorer.load(models), threshold=0.7, step_s=120.0,
                      interval_s=features.GRID_STEP_S, sequence_length=cfg.ml.sequence_length, max_ticks=8,
                      groups=groups)
    assert set(r["by_group"]) == {"even", "odd"}
    assert sum(g["jobs"] for g in r["by_group"].values()) == r["jobs"]
    assert sum(g["coverage"]["caught"] for g in r["by_group"].values()) == r["coverage"]["caught"]
    assert sum(g["false_alarms"]["alerted"] for g in r["by_group"].values()) == r["false_alarms"]["alerted"]
    shares = [g["lead_share_median"] for g in r["by_group"].values() if g["lead_share_median"] is not None]
    assert all(0 < s <= 1 for s in shares)
    assert "shape" in replay.format_table(r)


def test_a_crossing_needs_the_confirming_ticks() -> None:
    job = np.array([0, 0, 0, 0, 1, 1, 2])
    risk = np.array([0.9, 0.2, 0.8, 0.75, 0.8, 0.9, 0.95])
    np.testing.assert_array_equal(replay.confirmed(job, risk, 1), risk)
    got = replay.confirmed(job, risk, 2)
    np.testing.assert_allclose(got, [np.nan, 0.2, 0.2, 0.75, np.nan, 0.8, np.nan])
    first, _ = replay.first_crossings(3, job, np.arange(7.0), got, [0.7])
    np.testing.assert_array_equal(first[:, 0], [3.0, 5.0, np.nan])   # job 2: one tick, never confirmed
