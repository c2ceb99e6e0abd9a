"""The judgement of issue #10 (``nomade.ml.judging``) by hand: which jobs are
behaviour-visible failures, the operating point of at most 5 % false alarms chosen on a
tiny validation part and what it gives on a tiny test part, the per-job AUCs, lead
shares, and a left-out shape judged on its own jobs."""

from __future__ import annotations

import numpy as np
import pytest
from jobtables import job_table

from nomade import features
from nomade.ml import judging, replay

# job:      0 val   1 val   2 val   3 val   4 val   5 test  6 test  7 test  8 test  9 test
STATES = ["COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED", "OUT_OF_MEMORY",
          "OUT_OF_MEMORY", "TIMEOUT", "FAILED", "COMPLETED", "COMPLETED"]
VARIANTS = ["compute", "compute", "sleepy", "mem_steady", "mem_grow",
            "procs", "stall", "crash", "compute", "stall"]
SHAPES = ["compute", "compute", "sleepy", "mem_steady", "mem_grow",
          "procs", "stall", "crash", "compute", "stall"]
RISK = [0.2, 0.5, 0.75, 0.6, 0.8,  # validation: one completed job at 0.75, one at 0.6
        0.9, 0.65, 0.95, 0.7, 0.3]  # test
"""Each job's risk from its third tick on (its first two ticks: 0.1)."""
VALIDATION = np.array([True] * 5 + [False] * 5)
TEST = ~VALIDATION
START = np.zeros(10)
END = np.full(10, 600.0)


def _jobs() -> features.JobTable:
    return job_table(STATES, START, END)


def _ticks(risk: list[float] = RISK) -> replay.Ticks:
    """Ticks every 60 s (10 a job, at 0..540 s): 0.1 at the first two, then the job's risk,
    for a scorer "m"; "r" is a rule that fires (1) on jobs 4, 5 and 8 from their sixth tick."""
    jobs = _jobs()
    job, t = replay.tick_times(jobs, np.arange(10), 60.0, max_ticks=100)
    k = t / 60.0
    m = np.where(k >= 2, np.asarray(risk)[job], 0.1)
    r = np.where(np.isin(job, [4, 5, 8]) & (k >= 5), 1.0, 0.0)
    return replay.Ticks(np.arange(10), job, t, {"m": m, "r": r}, 10, 60.0, 100)


def test_behaviour_visible_failures_are_the_behaviour_and_the_final_state() -> None:
    got = judging.behaviour_visible(
        ["mem_grow", "mem_grow", "mem_grow", "procs", "threads", "stall", "starve", "stall", "scratch_fill",
         "scratch_fill", "crash", "compute", None],
        ["OUT_OF_MEMORY", "FAILED", "COMPLETED", "OUT_OF_MEMORY", "OUT_OF_MEMORY", "TIMEOUT", "TIMEOUT",
         "FAILED", "FAILED", "TIMEOUT", "FAILED", "CANCELLED", "OUT_OF_MEMORY"])
    assert got.tolist() == [True, True, False, True, True, True, True, False, True, False, False, False, False]


def test_failure_shapes_need_enough_failures_other_than_cancels() -> None:
    shapes = ["a"] * 5 + ["b"] * 4 + ["cancel"] * 6 + ["ok"] * 3 + [None] * 5
    states = (["FAILED"] * 5 + ["TIMEOUT"] * 4 + ["CANCELLED"] * 6 + ["COMPLETED"] * 3 + ["FAILED"] * 5)
    assert judging.failure_shapes(shapes, states) == ["a"]
    assert judging.failure_shapes(shapes, states, min_failed=4) == ["a", "b"]


def test_bounded_threshold_by_hand() -> None:
    neg = [0.05 * k for k in range(1, 21)]                  # 20 completed jobs: 5 % is one of them
    label = np.r_[np.zeros(20), 1.0, 1.0]
    # the lowest score alerting at most one completed job: above 0.95, the positive's 0.97
    assert judging.bounded_threshold(label, np.r_[neg, 0.97, 0.5]) == pytest.approx(0.97)
    # without a score between 0.95 and 1.0, the top completed job's own 1.0
    assert judging.bounded_threshold(label, np.r_[neg, 0.93, 0.5]) == pytest.approx(1.0)
    # 10 % allowed: two completed jobs (0.95 and 1.0), so down to the positive's 0.93
    assert judging.bounded_threshold(label, np.r_[neg, 0.93, 0.5], max_fa=0.1) == pytest.approx(0.93)
    # jobs that never held a risk count among the completed ones, but are no threshold
    never = np.full(20, judging.NEVER)
    assert judging.bounded_threshold(np.r_[np.zeros(20), 1.0], np.r_[never, 0.4]) == pytest.approx(0.4)
    # no completed job, or even the highest score alerts too many: no operating point
    assert judging.bounded_threshold(np.ones(3), np.array([0.2, 0.5, 0.9])) is None
    assert judging.bounded_threshold(np.array([0.0, 0.0, 1.0]), np.array([0.9, 0.9, 0.5])) is None


def test_alert_scores_hold_the_risk_for_the_confirming_ticks() -> None:
    job = np.array([0, 0, 0, 1, 1, 2])
    spiky = replay.Ticks(np.arange(3), job, np.arange(6.0), {"m": np.array([0.9, 0.2, 0.3, 0.8, 0.7, 0.99])},
                         3, 1.0, 10)
    score, scored, _ = judging.alert_scores(spiky, "m", confirm=2)
    # job 0: a one-tick spike of 0.9 is never held, 0.2 then 0.3 hold 0.2; job 1: 0.7; job 2: one tick
    assert score.tolist() == [pytest.approx(0.2), pytest.approx(0.7), judging.NEVER] and scored.all()
    score, _, _ = judging.alert_scores(_ticks(), "m", confirm=2)
    np.testing.assert_allclose(score, RISK)


def test_the_operating_point_is_chosen_on_validation_and_applied_to_test() -> None:
    """Validation's completed jobs score 0.2, 0.5, 0.75 and 0.6: at most 5 % of four is none,
    so the threshold is the lowest validation score above 0.75: the OOM job's 0.8. On the
    test part it catches the jobs at 0.9 and 0.95; the completed job at 0.7 is spared."""
    jobs, ticks = _jobs(), _ticks()
    bounds = judging.thresholds(jobs, ticks, ["m", "r"], VALIDATION, confirm=2)
    assert bounds["m"]["threshold"] == pytest.approx(0.8)
    assert bounds["m"]["validation"] == {"jobs": 5, "completed": 4, "alerted": 0}
    # the rule: validation jobs 0-3 never fire, job 4 fires: 1.0 alerts none of the four
    assert bounds["r"]["threshold"] == 1.0
    # the test part's risks play no part in the choice
    other = judging.thresholds(jobs, _ticks(RISK[:5] + [0.01, 0.99, 0.5, 0.99, 0.99]), ["m"], VALIDATION, 2)
    assert other["m"]["threshold"] == bounds["m"]["threshold"]

    b = judging.behaviour(jobs, ticks, np.array(VARIANTS, dtype=object), TEST, bounds, confirm=2, shipped=0.7)
    m = b["scorers"]["m"]
    # behaviour-visible test failures: 5 (procs OOM, 0.9) and 6 (stall TIMEOUT, 0.65); the crash (7) is
    # left out; healthy: 8 (0.7) and 9 (0.3)
    assert b["states"] == {"OUT_OF_MEMORY": 1, "TIMEOUT": 1}
    assert (m["failed"], m["completed"], m["unscored"]) == (2, 2, 0)
    assert m["auc_jobs"] == pytest.approx(0.75)             # 0.9 beats both, 0.65 only 0.3
    # shipped 0.7: catches 5, alarms on 8 (0.7 >= 0.7)
    assert m["shipped"]["coverage"] == {"caught": 1, "failed": 2, "rate": 0.5}
    assert m["shipped"]["false_alarms"] == {"alerted": 1, "completed": 2, "rate": 0.5}
    # bounded 0.8: catches 5 only, no false alarm; held from the fourth tick (180 s): lead 420 s of 600
    bp = m["bounded"]
    assert bp["threshold"] == pytest.approx(0.8)
    assert bp["coverage"]["caught"] == 1 and bp["false_alarms"]["alerted"] == 0
    assert bp["lead_share_median"] == pytest.approx(0.7) and bp["lead_time_min_median"] == pytest.approx(7.0)
    # AUC ticks: each job's 10 ticks, each weighing 1/10: 2 ticks at 0.1 and 8 at the job's risk
    pos = np.r_[np.full(2, 0.1), np.full(8, 0.9), np.full(2, 0.1), np.full(8, 0.65)]
    neg = np.r_[np.full(2, 0.1), np.full(8, 0.7), np.full(2, 0.1), np.full(8, 0.3)]
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in pos for q in neg]
    assert m["auc_ticks"] == pytest.approx(np.mean(pairs))
    # the rule fires on 5 (held from its sixth tick, 360 s: lead 240 s) and on 8
    r = b["scorers"]["r"]
    assert r["auc_jobs"] == pytest.approx(0.5)              # {1, 0} against {1, 0}
    assert r["bounded"]["coverage"]["caught"] == 1 and r["bounded"]["false_alarms"]["alerted"] == 1
    assert r["bounded"]["lead_share_median"] == pytest.approx(0.4)
    text = judging.format_behaviour(b, {"m": "models", "r": "a rule"})
    assert "0.80 (0/4)" in text and "1/2 50%" in text
    assert [ln.split("  ")[0] for ln in text.splitlines()[3:5]] == ["models", "a rule"]


def test_no_operating_point_alerts_nothing() -> None:
    jobs = _jobs()
    risk = [0.9, 0.9, 0.9, 0.9, 0.9] + RISK[5:]          # validation's completed jobs at the top
    bounds = judging.thresholds(jobs, _ticks(risk), ["m"], VALIDATION, confirm=2)
    assert bounds["m"]["threshold"] is None
    b = judging.behaviour(jobs, _ticks(risk), np.array(VARIANTS, dtype=object), TEST, bounds, 2, 0.7)
    bp = b["scorers"]["m"]["bounded"]
    assert bp["coverage"]["caught"] == 0 and bp["false_alarms"]["alerted"] == 0 and bp["lead_share_median"] is None
    assert "none" in judging.format_behaviour(b, {})


def test_a_left_out_shape_is_judged_on_its_own_jobs_and_against_the_test_part() -> None:
    """Shape "stall": job 6 failed (0.65), job 9 completed (0.3). Own: 0.65 vs 0.3. Test: 0.65
    vs the test part's completed jobs 8 (0.7) and 9 (0.3)."""
    jobs, ticks = _jobs(), _ticks()
    bounds = judging.thresholds(jobs, ticks, ["m"], VALIDATION, confirm=2)
    s = judging.left_out(jobs, ticks, np.array(SHAPES, dtype=object), "stall", TEST, bounds, 2, 0.7)
    assert (s["jobs"], s["failed"], s["completed"], s["test_completed"]) == (2, 1, 1, 2)
    own, test = s["scorers"]["m"]["own"], s["scorers"]["m"]["test"]
    assert own["auc_jobs"] == 1.0 and test["auc_jobs"] == pytest.approx(0.5)
    assert own["shipped"]["coverage"]["caught"] == 0 and test["shipped"]["false_alarms"]["alerted"] == 1
    assert own["shipped"]["false_alarms"]["alerted"] == 0
    text = judging.format_left_out(s, {"m": "models"})
    assert text.startswith("the left-out shape stall alone: its 2 jobs, 1 failed (TIMEOUT 1)")
    each = judging.format_each({"shapes": {"stall": {"left_out": s}}, "took_s": 90.0}, {"m": "models"})
    assert "1.5 min in all" in each and any(ln.startswith("stall  models") for ln in each.splitlines())


def test_a_baseline_replays_as_it_was_fitted() -> None:
    """The baseline scorer normalises raw as-of features as training did: its risk is the
    fitted model's probability of the training pipeline's inputs."""
    from nomade.ml import train
    from nomade.ml.baselines import BaselineScorer, LogisticBaseline, inputs

    jobs, samples = train.synthetic_tables(200, seed=5)
    p = train.prepare(jobs, samples, 30.0, 8, max_per_job=2, source="synthetic")
    tr, te = p.rows("train"), p.rows("test")
    norm = features.Normalizer().fit(p.X[tr], p.mask[tr], p.w[tr])
    model = LogisticBaseline().fit(inputs(norm.transform(p.X[tr], p.mask[tr]), p.mask[tr]), p.y[tr], p.w[tr])
    expected = model.predict_proba(inputs(norm.transform(p.X[te], p.mask[te]), p.mask[te]))
    got = BaselineScorer("logistic_regression", model, norm).score(p.X[te], p.mask[te]).risk
    np.testing.assert_allclose(got, expected)
    assert 0.0 < got.min() < got.max() < 1.0
