"""Advice text from contributing factors: families, values, distance from normal, bounds."""

from __future__ import annotations

import math

import pytest

from nomade import wire
from nomade.agent import advice, comment_segment
from nomade.features import FEATURES

TS = 1_700_000_000.0


def f(name: str, value: float, normal: float | None, contribution: float = 0.1) -> dict:
    """A factor as ``Scores.factors`` returns it (raw units: log1p for log_* features)."""
    return {"name": name, "value": value, "normal": normal, "spread": 0.1,
            "contribution": contribution}


def test_nfs_factor_says_value_ratio_and_scratch() -> None:
    [(fam, text)] = advice.factor_phrases([f("nfs_write_share", 0.89, 0.3)])
    assert fam == "nfs"
    assert text == ("High NFS write ratio (0.89), 3x normal: consider local scratch: "
                    "export TMPDIR=/scratch/$USER")


def test_low_cpu_efficiency_gives_percent_and_normal() -> None:
    [(_, text)] = advice.factor_phrases([f("cpu_eff", 0.23, 0.78)])
    assert text == "Low CPU efficiency (23%), normal 78%: request fewer cores"


def test_memory_near_request_and_growing_uses_growth_from_the_job_values() -> None:
    [(_, text)] = advice.factor_phrases([f("mem_frac", 0.93, 0.9)],
                                        values={"mem_growth_frac_h": 0.12})
    assert text == ("Memory at 93% of the request, growing 12%/h, at the limit in ~35min: "
                    "request more memory (--mem)")
    [(_, steady)] = advice.factor_phrases([f("mem_frac", 0.93, 0.9)],
                                          values={"mem_growth_frac_h": 0.0})
    assert "growing" not in steady


def test_fast_growth_says_when_the_limit_is_reached_not_a_huge_rate() -> None:
    # nomade.tools.demo: "Memory growing 9624% of the request per hour" for a job leaking 5 MB/s
    [(_, level)] = advice.factor_phrases([f("mem_frac", 0.6, 0.3)], values={"mem_growth_frac_h": 96.24})
    assert level == ("Memory at 60% of the request, 2x normal, growing fast, at the limit in under a minute: "
                     "request more memory (--mem)")
    [(_, only)] = advice.factor_phrases([f("mem_growth_frac_h", 12.0, 0.01)], values={"mem_frac": 0.2})
    assert only == ("Memory growing fast (now 20% of the request), at the limit in ~4min: "
                    "request more memory or check for a leak")
    [(_, slow)] = advice.factor_phrases([f("mem_growth_frac_h", 0.5, 0.1)], values={"mem_frac": 0.5})
    assert slow.startswith("Memory growing 50% of the request per hour (now 50% of the request), 5x normal, "
                           "at the limit in ~60min")
    [(_, full)] = advice.factor_phrases([f("mem_peak_frac", 1.0, 0.5)], values={"mem_growth_frac_h": 0.3})
    assert full.startswith("Peak memory at 100% of the request, 2x normal, growing 30%/h:")  # no "limit in"


def test_one_phrase_per_family_ranked_by_contribution() -> None:
    phrases = advice.factor_phrases([
        f("mem_growth_frac_h", 0.4, 0.01, 0.05), f("cpu_eff", 0.2, 0.7, 0.02),
        f("mem_frac", 0.8, 0.3, 0.3), f("elapsed_frac", 0.95, 0.5, 0.1)])
    assert [fam for fam, _ in phrases] == ["memory", "time", "cpu"]
    assert phrases[0][1].startswith("Memory at 80% of the request, 2.7x normal, growing 40%/h, "
                                    "at the limit in ~30min")
    # the time rule uses the job's CPU efficiency to say progress is slow
    assert phrases[1][1].startswith("At 95% of the time limit, progress slow (CPU 20%)")


def test_log_features_are_shown_in_their_units() -> None:
    [(_, io)] = advice.factor_phrases([f("log_write_mbps", math.log1p(120), math.log1p(10))])
    assert io.startswith("High write rate (120 MB/s), 12x normal:")
    [(_, req)] = advice.factor_phrases([f("log_time_limit_min", math.log1p(2880),
                                          math.log1p(60))])
    assert req.startswith("Unusual request (2d limit), 48x normal:")


def test_every_feature_has_a_rule_with_printable_safe_text() -> None:
    for name in FEATURES:
        value, normal = (0.2, 0.9) if name in advice._BELOW_NORMAL else (0.9, 0.2)   # the direction that is news
        [(fam, text)] = advice.factor_phrases([f(name, value, normal)], values={"cpu_eff": 0.3})
        assert fam == advice.FAMILY[name]
        assert text and all(" " <= c <= "~" for c in text), text
        assert not set("[]|") & set(text)


@pytest.mark.parametrize(("raw", "safe"), [
    ("plain text", "plain text"),
    ("a [b] | c", "a (b) / c"),
    ("tab\tnew\nline  x", "tab new line x"),
    ("caf\u00e9 \u00d8MADE\x7f end", "caf MADE end"),
])
def test_safe_text_is_printable_ascii_without_markers(raw: str, safe: str) -> None:
    # the fast path (already printable ASCII) and the slow one give the same text
    assert advice._safe(raw) == safe


def test_unknown_feature_is_refused_and_unknown_value_left_out() -> None:
    with pytest.raises(ValueError, match="unknown feature 'bogus'"):
        advice.factor_phrases([f("bogus", 1.0, 1.0)])
    assert advice.factor_phrases([{"name": "cpu_eff", "value": None, "contribution": 1}]) == []


def test_no_distance_when_value_is_near_normal_or_normal_unknown() -> None:
    [(_, near)] = advice.factor_phrases([f("nfs_write_share", 0.5, 0.45)])
    [(_, unknown)] = advice.factor_phrases([f("nfs_write_share", 0.5, None)])
    assert "normal" not in near and "normal" not in unknown


def test_segment_text_head_factors_and_clock() -> None:
    text = advice.segment_text(0.74, "high", [f("nfs_write_share", 0.89, 0.3, 0.2),
                                              f("cpu_eff", 0.23, 0.78, 0.1)], TS)
    assert text == (f"risk high 0.74 at {advice.clock(TS)}: High NFS write ratio (0.89), 3x normal: "
                    "consider local scratch: export TMPDIR=/scratch/$USER; "
                    "Low CPU efficiency (23%), normal 78%: request fewer cores")


def test_segment_is_bounded_by_factor_count_and_chars_dropping_whole_phrases() -> None:
    many = [f(n, 0.9, 0.1, 1.0 - i / 20) for i, n in enumerate(FEATURES)]
    three = advice.segment_text(0.9, "critical", many, TS)
    assert three.count("; ") == 2 and len(three) <= advice.MAX_CHARS
    short = advice.segment_text(0.9, "critical", many, TS, max_chars=120)
    assert len(short) <= 120 and not short.endswith(";")
    head = advice.segment_text(0.9, "critical", many, TS, max_chars=10)
    assert head == f"risk critical 0.90 at {advice.clock(TS)}"


def test_segment_fits_the_comment_next_to_a_long_user_text() -> None:
    many = [f(n, 0.9, 0.1, 1.0 - i / 20) for i, n in enumerate(FEATURES)]
    text = advice.segment_text(0.9, "critical", many, TS)
    user = "u" * 700
    merged = comment_segment.merge(user, text)
    assert merged.startswith(user + " ") and len(merged.encode()) <= comment_segment.MAX_BYTES
    segment = comment_segment.extract(merged)[1]
    assert segment is not None and segment.startswith("risk critical 0.90 at ")
    assert segment == text or (segment.endswith("~") and text.startswith(segment[:-1]))


def test_wire_factors_make_a_valid_prediction() -> None:
    raw = [f("log_write_mbps", math.log1p(120), math.log1p(10), 0.2), f("cpu_eff", 0.23, 0.0, 0.1),
           f("nfs_write_share", 0.9, None, 0.05)]
    factors = advice.wire_factors(raw)
    assert factors[0] == {"name": "log_write_mbps", "value": 120.0, "normal": 10.0, "ratio": 12.0,
                          "text": advice.factor_phrases(raw[:1])[0][1]}
    assert factors[1]["ratio"] is None and factors[2]["normal"] is None
    msg = wire.make("prediction", "agent", 1, {
        "job_id": "42", "risk": 0.8, "level": "critical",
        "parts": {"gnn": 0.8, "lstm": None, "autoencoder": 0.7}, "factors": factors, "ts": TS})
    assert wire.decode(wire.encode(msg)).body["factors"] == factors


def test_fell_text() -> None:
    assert advice.fell_text("low", 0.21, TS, "high") == (
        f"risk fell below the alert threshold: low 0.21 at {advice.clock(TS)} (was high)")


def test_demo_case_a_fail_rate_below_normal_is_not_called_failing_often() -> None:
    # nomade.tools.demo, job 61: the model's contribution was positive for a 19% fail rate
    # against a normal 48%; "failed often" would be false, so it is not cited at all.
    low = f("user_fail_rate", 0.192308, 0.47619, 0.05)
    assert advice.factor_phrases([low]) == [] and advice.wire_factors([low]) == []
    [(_, high)] = advice.factor_phrases([f("user_fail_rate", 0.6, 0.3, 0.05)])
    assert high.startswith("Your recent jobs failed often (60%), 2x normal")


def test_only_factors_that_raise_the_risk_are_cited() -> None:
    for contribution in (0.0, -0.1):
        assert advice.factor_phrases([f("nfs_write_share", 0.89, 0.3, contribution)]) == []
    [(_, text)] = advice.factor_phrases([f("nfs_write_share", 0.89, 0.3, 1e-4)])
    assert text.startswith("High NFS write ratio")


@pytest.mark.parametrize("name", ["mem_frac", "mem_peak_frac", "mem_growth_frac_h", "nfs_write_share",
                                  "io_pressure", "mem_pressure", "elapsed_frac", "log_read_mbps",
                                  "log_write_mbps", "user_fail_rate", "user_last_failed"])
def test_a_phrase_that_says_high_needs_a_value_above_normal(name: str) -> None:
    assert advice.factor_phrases([f(name, 0.6, 0.8)]) == []     # below normal
    assert advice.factor_phrases([f(name, 0.8, 0.8)]) == []     # at normal
    assert len(advice.factor_phrases([f(name, 0.8, 0.6)])) == 1


@pytest.mark.parametrize(("name", "trickle", "high"), [
    ("log_read_mbps", math.log1p(0.004), math.log1p(5.0)),
    ("log_write_mbps", math.log1p(0.5), math.log1p(40.0)),
    ("io_pressure", 0.01, 0.3),
    ("nfs_write_share", 0.02, 0.9)])
def test_a_trickle_above_a_normal_of_zero_is_not_high(name: str, trickle: float, high: float) -> None:
    # nomade.tools.demo: "High read rate (0.00 MB/s): read less often ..." next to completed jobs reading 0
    assert advice.factor_phrases([f(name, trickle, 0.0)]) == []
    [(_, text)] = advice.factor_phrases([f(name, high, 0.0)])
    assert text.startswith("High ")


def test_memory_at_one_percent_is_no_reason_to_request_more() -> None:
    # nomade.tools.demo, jobs 63/64: "Memory at 1% of the request: request more memory (--mem)"
    small = [f("mem_frac", 0.0133972, 0.019104, 0.02), f("mem_peak_frac", 0.0149, 0.0215, 0.01)]
    assert advice.wire_factors(small) == []
    shrinking = f("mem_growth_frac_h", -1.0, -2.0, 0.02)   # above a negative normal, not growing
    assert advice.factor_phrases([shrinking]) == []


def test_two_way_phrases_follow_the_value() -> None:
    [(_, high)] = advice.factor_phrases([f("cpu_eff", 0.95, 0.5)])
    [(_, low)] = advice.factor_phrases([f("cpu_eff", 0.2, 0.5)])
    assert high.startswith("High CPU efficiency (95%)") and low.startswith("Low CPU efficiency (20%)")
    [(_, dropped)] = advice.factor_phrases([f("cpu_eff_change", -0.3, 0.01)], values={"cpu_eff": 0.1})
    assert dropped.startswith("CPU use dropped 30 points recently to 10%")
    # a rise smaller than the normal one, or no change, is not "rose"
    assert advice.factor_phrases([f("cpu_eff_change", 0.0036, 0.006)]) == []
    assert advice.factor_phrases([f("cpu_eff_change", 0.0, -0.1)]) == []
    # a drop that rounds to no point at all is not "dropped" (nomade.tools.demo, job 3:
    # "CPU use dropped 0 points recently to 0%")
    assert advice.factor_phrases([f("cpu_eff_change", -0.00405, -0.00028)], values={"cpu_eff": 0.0}) == []
    [(_, req)] = advice.factor_phrases([f("log_req_cpus", math.log1p(1), math.log1p(16))])
    assert req.startswith("Unusual request (1 CPUs), normal 16")


def test_wire_factors_read_back_keep_their_text_and_order() -> None:
    raw = [f("mem_frac", 0.9, 0.3, 0.2), f("user_fail_rate", 0.1, 0.5, 0.3), f("cpu_eff", 0.2, 0.6, 0.1)]
    wire_fs = advice.wire_factors(raw)
    assert [w["name"] for w in wire_fs] == ["mem_frac", "cpu_eff"]
    back = [advice.Factor.from_wire(w) for w in wire_fs]
    assert all(b.contribution is None and advice.cited(b) for b in back)
    assert advice.segment_text(0.8, "critical", back, TS) == advice.segment_text(0.8, "critical", raw, TS)
    assert advice.wire_factors([f("mem_growth_frac_h", 84.0, -0.31)])[0]["ratio"] is None


def test_memory_is_said_in_the_jobs_own_units_with_the_time_to_the_limit() -> None:
    # --mem=256M, at 85 %, growing 12 MB/min: (1 - 0.85) * 256 / 12 = 3.2 min to the limit
    values = {"log_req_mem_mb": math.log1p(256), "mem_growth_frac_h": 12 * 60 / 256}
    [(_, text)] = advice.factor_phrases([f("mem_frac", 0.85, 0.2)], values=values)
    assert text == ("Memory at 85% of --mem, 4.2x normal, growing about 12 MB/min, at the limit in about 3min: "
                    "request more memory (--mem) or check for a leak")
    [(_, growth)] = advice.factor_phrases([f("mem_growth_frac_h", 12 * 60 / 256, 0.0)],
                                          values={"log_req_mem_mb": math.log1p(256), "mem_frac": 0.5})
    assert growth.startswith("Memory at 50% of --mem, growing about 12 MB/min, at the limit in about 11min")


def test_a_filling_disk_is_said_with_the_time_until_it_is_full() -> None:
    # filling 60 % of the filesystem an hour, full in 3 min (0.05 h), beside jobs whose disk fills in weeks
    [(fam, text)] = advice.factor_phrases([f("log_fs_full_h", math.log1p(0.05), math.log1p(500))],
                                          values={"fs_fill_frac_h": 0.6})
    assert fam == "disk"
    assert text == ("Filesystem written to filling about 1% a minute, full in about 3min: "
                    "free space there or write elsewhere (df shows it)")
    [(_, full)] = advice.factor_phrases([f("log_fs_full_h", 0.0, math.log1p(500))], values={"fs_fill_frac_h": 0.0})
    assert full == "Filesystem written to is full: free space there or write elsewhere (df shows it)"
    assert advice.factor_phrases([f("log_fs_full_h", math.log1p(200), math.log1p(500))]) == []   # days away


def test_an_idle_cpu_is_said_with_the_time_left_to_the_limit() -> None:
    values = {"cpu_idle_min": 6.0, "log_time_limit_min": math.log1p(20), "elapsed_frac": 0.9}
    [(_, text)] = advice.factor_phrases([f("elapsed_frac", 0.9, 0.4)], values=values)
    assert text == "CPU idle for 6 min, 2min of the time limit left: check the job is not stuck, or request more time (--time)"
    [(_, cpu)] = advice.factor_phrases([f("cpu_eff", 0.1, 0.8)], values=values)
    assert cpu.startswith("CPU idle for 6 min, 2min of the time limit left: check the job is not stalled")
    # the time and CPU families both see the idle CPU: it is said once
    both = advice.factor_phrases([f("elapsed_frac", 0.9, 0.4, 0.2), f("cpu_eff", 0.1, 0.8, 0.1)], values=values)
    assert [fam for fam, _ in both] == ["time"]
    assert [w["name"] for w in advice.wire_factors([f("elapsed_frac", 0.9, 0.4, 0.2), f("cpu_eff", 0.1, 0.8, 0.1)],
                                                   values)] == ["elapsed_frac"]
    # busy: no idle claim
    [(_, busy)] = advice.factor_phrases([f("elapsed_frac", 0.9, 0.4)], values={**values, "cpu_idle_min": 0.0})
    assert busy.startswith("At 90% of the time limit (2min left)")


def test_runtime_evidence_comes_before_the_request_and_history_and_outweighs_weak_ones() -> None:
    fs = [f("log_time_limit_min", math.log1p(2), math.log1p(1), 0.30),
          f("user_last_failed", 1.0, 0.0, 0.25), f("mem_frac", 0.8, 0.2, 0.20),
          f("log_req_cpus", math.log1p(8), math.log1p(1), 0.05)]
    phrases = advice.factor_phrases(fs)
    assert [fam for fam, _ in phrases] == ["memory", "request", "history"]   # 0.05 < half of 0.20: dropped
    wire_fs = advice.wire_factors(fs)
    assert [w["name"] for w in wire_fs] == ["mem_frac", "log_time_limit_min", "user_last_failed"]
    # no runtime evidence: the start-time reasons as ranked
    assert [fam for fam, _ in advice.factor_phrases(fs[:2])] == ["request", "history"]


def test_a_predictions_text_is_kept_when_read_back() -> None:
    values = {"log_req_mem_mb": math.log1p(256), "mem_growth_frac_h": 3.0}
    wire_fs = advice.wire_factors([f("mem_frac", 0.85, 0.2)], values)
    back = [advice.Factor.from_wire(w) for w in wire_fs]
    assert "MB/min" in advice.segment_text(0.9, "critical", back, TS)
