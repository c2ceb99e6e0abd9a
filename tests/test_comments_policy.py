"""CommentPolicy decisions (pure) and applying them to a real Slurm job's Comment."""

from __future__ import annotations

import pytest
from slurmtools import SlurmCluster, submit, wait_final, wait_state

from nomade import wire
from nomade.agent import advice, comment_segment
from nomade.agent.comment_policy import ALERT, FELL, CommentPolicy, apply
from nomade.config import AlertsConfig

T0 = 1_700_000_000.0
FACTORS = [{"name": "mem_frac", "value": 0.93, "normal": 0.4, "contribution": 0.2},
           {"name": "cpu_eff", "value": 0.23, "normal": 0.78, "contribution": 0.1}]


def policy(threshold: float = 0.7, enabled: bool = True, confirm: int = 1) -> CommentPolicy:
    return CommentPolicy(AlertsConfig(high_risk_threshold=threshold, alert_on_prediction=enabled,
                                      confirm_predictions=confirm))


def test_writes_when_risk_reaches_threshold_and_rewrites_only_on_level_change() -> None:
    p = policy()
    assert p.decide_job("1", 0.5, "moderate", T0, FACTORS) is None          # below threshold
    first = p.decide_job("1", 0.72, "high", T0 + 30, FACTORS)
    assert first is not None and (first.reason, first.level) == (ALERT, "high")
    assert first.segment == advice.segment_text(0.72, "high", FACTORS, T0 + 30)
    assert first.segment.startswith("risk high 0.72 at ") and "Memory at 93% of the request" in first.segment
    assert p.decide_job("1", 0.78, "high", T0 + 60, FACTORS) is None        # same level: no rewrite
    up = p.decide_job("1", 0.85, "critical", T0 + 90, FACTORS)
    assert up is not None and up.level == "critical" and up.segment.startswith("risk critical 0.85")
    down = p.decide_job("1", 0.75, "high", T0 + 120, FACTORS)                # back to high: a change
    assert down is not None and down.level == "high"
    assert p.written("1") == "high"


def test_fall_back_is_marked_once_and_a_new_rise_writes_again() -> None:
    p = policy()
    assert p.decide_job("7", 0.9, "critical", T0, FACTORS) is not None
    fell = p.decide_job("7", 0.2, "low", T0 + 30)
    assert fell is not None and fell.reason == FELL
    assert fell.segment == advice.fell_text("low", 0.2, T0 + 30, "critical")
    assert fell.segment.startswith("risk fell below the alert threshold: low 0.20 at ")
    assert fell.segment.endswith("(was critical)")
    assert p.decide_job("7", 0.4, "moderate", T0 + 60) is None               # marked once only
    assert p.decide_job("7", 0.1, "low", T0 + 90) is None
    again = p.decide_job("7", 0.7, "high", T0 + 120, FACTORS)                # exactly the threshold
    assert again is not None and again.reason == ALERT


def test_threshold_is_the_configured_one_not_the_level() -> None:
    p = policy(threshold=0.85)
    assert p.decide_job("2", 0.82, "critical", T0, FACTORS) is None
    assert p.decide_job("2", 0.86, "critical", T0, FACTORS) is not None
    low = policy(threshold=0.4)
    assert low.decide_job("3", 0.45, "moderate", T0, FACTORS) is not None


def test_alert_on_prediction_off_never_writes() -> None:
    p = policy(enabled=False)
    assert all(p.decide_job("4", r, lvl, T0) is None
               for r, lvl in [(0.9, "critical"), (0.1, "low"), (0.75, "high")])
    assert p.written("4") is None


def test_jobs_that_never_alerted_get_no_mark_and_ended_jobs_are_forgotten() -> None:
    p = policy()
    assert p.decide_job("5", 0.1, "low", T0) is None
    assert p.decide_job("6", 0.9, "critical", T0, FACTORS) is not None
    assert p.decide_job("8", 0.9, "critical", T0, FACTORS) is not None
    assert p.retain(["8", "9"]) == 1
    assert p.written("6") is None and p.written("8") == "critical"
    p.forget("8")
    assert p.written("8") is None
    # a forgotten job id (e.g. reused after a cluster restart) starts over
    assert p.decide_job("6", 0.9, "critical", T0, FACTORS) is not None


def test_restore_reads_the_level_back_from_the_comment() -> None:
    p = policy()
    p.restore("10", comment_segment.merge("mine", advice.segment_text(0.9, "critical", FACTORS, T0)))
    assert p.decide_job("10", 0.95, "critical", T0, FACTORS) is None
    p.restore("11", comment_segment.merge("", advice.fell_text("low", 0.1, T0, "high")))
    assert p.written("11") == "fell" and p.decide_job("11", 0.2, "low", T0) is None
    p.restore("12", "only the user's [text]")
    assert p.written("12") is None


@pytest.mark.slurm
def test_apply_keeps_the_users_text_on_a_real_job(slurm_cluster: SlurmCluster) -> None:
    c, slurm = slurm_cluster, slurm_cluster.slurm
    job_id = submit(c, "sleep 60", "--time=5", "--mem=50M", "--comment=my run 3",
                    as_user=c.test_user, name="t-advice")
    try:
        wait_state(slurm, job_id, ["RUNNING", "PENDING"], timeout=30)
        p = policy()
        update = p.decide_job(job_id, 0.75, "high", T0, FACTORS)
        assert update is not None and apply(slurm, update) is True
        assert comment_segment.extract(slurm.get_comment(job_id)) == ("my run 3", update.segment)
        assert apply(slurm, update) is False                          # already there
        slurm.set_comment(job_id, "edited by me " + slurm.get_comment(job_id))  # the user edits
        fell = p.decide_job(job_id, 0.2, "low", T0 + 60)
        assert fell is not None and apply(slurm, fell) is True
        stored = slurm.get_comment(job_id)
        assert comment_segment.extract(stored) == ("edited by me my run 3", fell.segment)
        assert len(stored.encode()) <= comment_segment.MAX_BYTES
    finally:
        slurm.cancel(job_id)
    wait_final(slurm, job_id, timeout=30)


def test_decide_takes_a_ticks_prediction_bodies_and_forgets_ended_jobs() -> None:
    factors = advice.wire_factors(factors_raw())
    bodies = [wire.make("prediction", "agent", 1, {
        "job_id": j, "user": "alice", "risk": r, "level": wire.level_for(r),
        "parts": {"gnn": r}, "factors": factors, "ts": T0}).body
        for j, r in (("20", 0.9), ("21", 0.2), ("22", 0.72))]
    p = policy()
    updates = p.decide(bodies, running=["20", "21", "22"])
    assert [(u.job_id, u.level, u.reason) for u in updates] == [("20", "critical", ALERT),
                                                               ("22", "high", ALERT)]
    # the factors came back from the wire in display units: same text as from the scorer
    assert updates[0].segment == advice.segment_text(0.9, "critical", factors_raw(), T0)
    assert "High write rate (120 MB/s), 12x normal" in updates[0].segment
    assert p.decide(bodies, running=["20", "21", "22"]) == []            # same levels: nothing
    assert p.decide([], running=["22"]) == [] and p.written("20") is None


def factors_raw() -> list[dict]:
    return FACTORS + [{"name": "log_write_mbps", "value": 4.795790545596741,
                       "normal": 2.3978952727983707, "contribution": 0.05}]


@pytest.mark.slurm
def test_the_agents_comment_writer_applies_the_policy(slurm_cluster: SlurmCluster) -> None:
    """The agent core's loader and writer (nomade.agent.daemon) with this policy."""
    import logging

    from nomade.agent import daemon
    from nomade.agent.exporter import Metrics
    from nomade.agent.ingest import RateLimitedLog
    from nomade.config import Config

    c, slurm = slurm_cluster, slurm_cluster.slurm
    job_id = submit(c, "sleep 60", "--time=5", "--mem=50M", "--comment=keep me",
                    as_user=c.test_user, name="t-agent-advice")
    try:
        wait_state(slurm, job_id, ["RUNNING", "PENDING"], timeout=30)
        policy_ = daemon.load_comment_policy(Config())
        assert isinstance(policy_, CommentPolicy)
        body = {"job_id": job_id, "risk": 0.93, "level": "critical", "ts": T0,
                "factors": advice.wire_factors(FACTORS)}
        metrics = Metrics()
        errors = RateLimitedLog(logging.getLogger("test"))
        assert daemon.apply_comment_updates(policy_.decide([body]), slurm, metrics, errors) == 0  # unconfirmed
        body = {**body, "ts": T0 + 30}
        assert daemon.apply_comment_updates(policy_.decide([body]), slurm, metrics, errors) == 1
        user, segment = comment_segment.extract(slurm.get_comment(job_id))
        assert user == "keep me" and segment is not None
        assert segment.startswith("risk critical 0.93") and "Memory at 93% of the request" in segment
        assert daemon.apply_comment_updates(policy_.decide([body]), slurm, metrics, errors) == 0
    finally:
        slurm.cancel(job_id)
    wait_final(slurm, job_id, timeout=30)


def test_a_one_tick_spike_is_not_written_until_confirmed() -> None:
    # e2e on the real cluster: a steady job's first tick (no sample yet) scored 1.00, then 0.58 ... 0.02
    p = policy(confirm=2)
    assert p.decide_job("9", 1.0, "critical", T0, FACTORS) is None          # the spike alone
    assert p.decide_job("9", 0.58, "moderate", T0 + 30, FACTORS) is None    # below: forgotten
    assert p.decide_job("9", 0.9, "critical", T0 + 60, FACTORS) is None     # counts from 1 again
    second = p.decide_job("9", 0.75, "high", T0 + 90, FACTORS)
    assert second is not None and second.level == "high" and p.written("9") == "high"
    assert p.decide_job("9", 0.72, "high", T0 + 120, FACTORS) is None       # same level: no rewrite
    assert p.decide_job("9", 0.85, "critical", T0 + 150, FACTORS).level == "critical"   # level change
    p.forget("9")
    assert p.decide_job("9", 0.9, "critical", T0 + 180, FACTORS) is None    # a forgotten job starts over
