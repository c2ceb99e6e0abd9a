"""As-of features: values, masks, no information from after t, channels, normalisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nomade.features import (
    CHANNELS,
    FEATURES,
    FS_HORIZON_H,
    IOWAIT_MAX_AGE_S,
    N_FEATURES,
    N_START,
    PRIOR_STRENGTH,
    JobTable,
    Normalizer,
    SampleTable,
    asof_features,
    label_of,
    node_asof,
    sequences,
    snapshots,
)

F = {name: i for i, name in enumerate(FEATURES)}
GB = 2**30


def job(job_id, user="alice", start=1000.0, end=None, state=None, **kw):
    rec = dict(job_id=job_id, user=user, req_cpus=4, req_mem_bytes=8 * GB, req_gpus=0,
               time_limit_s=3600.0, submit_ts=start - 10, start_ts=start, end_ts=end, state=state)
    rec.update(kw)
    return rec


def sample(job_id, ts, i, **kw):
    """The i-th 30 s sample of a job using 2 of 4 CPUs, growing 10 MB per sample."""
    rec = dict(job_id=job_id, ts=ts, alloc_cpus=4, cpu_user_s=60.0 * i, cpu_system_s=0.0,
               mem_bytes=GB + i * 1e7, mem_peak_bytes=None, mem_limit_bytes=4 * GB,
               read_bytes=i * 3e7, write_bytes=i * 6e7, nfs_write_bytes=i * 1.5e7,
               major_faults=i * 5, mem_limit_hits=0, oom_kills=0, swap_bytes=0.0, io_pressure=2.5,
               fs_used_pct=50.0 + 2 * i)
    rec.update(kw)
    return rec


def test_labels_follow_design():
    assert label_of("COMPLETED") == 0.0
    assert [label_of(s) for s in ("FAILED", "TIMEOUT", "CANCELLED by 12", "OUT_OF_MEMORY")] == [1.0] * 4
    assert math.isnan(label_of("RUNNING")) and math.isnan(label_of(None))


def test_runtime_values_by_hand():
    jobs = JobTable.from_records([job("1")])
    samples = SampleTable.from_records(jobs, [sample("1", 1000 + 30 * i, i) for i in range(1, 6)])
    X, mask = asof_features(jobs, samples, np.array([1000 + 30 * 5 + 7.0]))
    x = dict(zip(FEATURES, X[0].astype(float), strict=True))
    assert mask[0].sum() == N_FEATURES - 1 and not mask[0, F["user_last_failed"]]  # no ended job yet
    assert x["log_req_cpus"] == pytest.approx(math.log1p(4))
    assert x["log_req_mem_mb"] == pytest.approx(math.log1p(8192))
    assert x["log_time_limit_min"] == pytest.approx(math.log1p(60))
    assert x["elapsed_frac"] == pytest.approx(150 / 3600)
    assert x["cpu_eff"] == pytest.approx(0.5)
    assert x["cpu_eff_change"] == pytest.approx(0.0, abs=1e-6)
    assert x["mem_frac"] == pytest.approx((GB + 5e7) / (4 * GB), rel=1e-5)
    assert x["mem_peak_frac"] == pytest.approx((GB + 5e7) / (4 * GB), rel=1e-5)
    assert x["mem_growth_frac_h"] == pytest.approx(1e7 / 30 * 3600 / (4 * GB), rel=1e-5)
    assert x["log_read_mbps"] == pytest.approx(math.log1p(1.0), rel=1e-5)
    assert x["log_write_mbps"] == pytest.approx(math.log1p(2.0), rel=1e-5)
    assert x["nfs_write_share"] == pytest.approx(0.25)
    assert x["io_pressure"] == pytest.approx(0.025)
    assert x["mem_pressure"] == pytest.approx(math.log1p(10.0), rel=1e-5)
    assert x["fs_fill_frac_h"] == pytest.approx(0.06 / 90 * 3600, rel=1e-5)   # 54 % -> 60 % in 90 s
    assert x["log_fs_full_h"] == pytest.approx(math.log1p(0.40 / 2.4), rel=1e-5)  # 40 % left at 240 %/h


def test_a_job_writing_to_no_disk_has_no_filesystem_features():
    jobs = JobTable.from_records([job("1")])
    samples = SampleTable.from_records(jobs, [sample("1", 1000 + 30 * i, i, fs_used_pct=None) for i in range(1, 4)])
    _, mask = asof_features(jobs, samples, np.array([1100.0]))
    assert not mask[0, F["log_fs_full_h"]] and not mask[0, F["fs_fill_frac_h"]] and mask[0, F["mem_frac"]]
    one = SampleTable.from_records(jobs, [sample("1", 1030, 1)])
    _, mask = asof_features(jobs, one, np.array([1100.0]))
    assert not mask[0, F["log_fs_full_h"]] and not mask[0, F["fs_fill_frac_h"]]   # a fill rate needs two


@pytest.mark.parametrize(("used", "expected_h"), [(95.0, FS_HORIZON_H), (100.0, 0.0)])
def test_a_disk_that_does_not_fill_is_never_full_unless_it_is_full_now(used, expected_h):
    """A site's scratch sitting at 95 % says nothing; one at 100 % is full now."""
    jobs = JobTable.from_records([job("1")])
    samples = SampleTable.from_records(jobs, [sample("1", 1000 + 30 * i, i, fs_used_pct=used) for i in range(1, 4)])
    X, mask = asof_features(jobs, samples, np.array([1100.0]))
    assert mask[0, F["log_fs_full_h"]] and X[0, F["log_fs_full_h"]] == pytest.approx(math.log1p(expected_h))
    assert X[0, F["fs_fill_frac_h"]] == 0.0


def test_recent_change_and_peak_follow_the_last_samples():
    jobs = JobTable.from_records([job("1")])
    recs = [sample("1", 1000 + 30 * i, i) for i in range(1, 5)]
    # then the job stops computing and frees memory
    recs += [sample("1", 1000 + 30 * i, i, cpu_user_s=240.0, mem_bytes=0.5 * GB) for i in range(5, 9)]
    samples = SampleTable.from_records(jobs, recs)
    X, _ = asof_features(jobs, samples, np.array([1240.0]))
    x = dict(zip(FEATURES, X[0].astype(float), strict=True))
    assert x["cpu_eff"] == pytest.approx(240 / (4 * 240))
    assert x["cpu_eff_change"] == pytest.approx(-0.25)
    assert x["mem_frac"] == pytest.approx(0.125)
    assert x["mem_peak_frac"] == pytest.approx((GB + 4e7) / (4 * GB), rel=1e-5)
    assert x["mem_growth_frac_h"] == 0.0


def test_masks_no_samples_unknown_inputs_and_node_iowait():
    jobs = JobTable.from_records([job("1"), job("2", req_mem_bytes=None), job("3", user=None)])
    recs = [sample("2", 1030, 1, io_pressure=None, iowait_pct=7.0, mem_limit_bytes=None,
                   nfs_write_bytes=None)]
    samples = SampleTable.from_records(jobs, recs)
    X, mask = asof_features(jobs, samples, np.full(3, 1100.0))
    assert not mask[0, N_START:].any() and (X[0, N_START:] == 0).all()
    assert mask[0, :N_START - 1].all() and not mask[0, F["user_last_failed"]]
    assert not mask[1, F["log_req_mem_mb"]] and not mask[1, F["mem_frac"]]
    assert not mask[1, F["nfs_write_share"]] and not mask[1, F["mem_growth_frac_h"]]
    assert mask[1, F["io_pressure"]] and X[1, F["io_pressure"]] == pytest.approx(0.07)
    assert not mask[2, F["user_fail_rate"]] and not mask[2, F["user_last_failed"]]


def test_user_history_smoothed_and_last_failed():
    recs = [job("1", start=0, end=100, state="FAILED"), job("2", start=0, end=200, state="COMPLETED"),
            job("3", user="bob", start=0, end=150, state="FAILED"), job("4", start=500)]
    jobs = JobTable.from_records(recs)
    X, mask = asof_features(jobs, SampleTable.empty(), np.array([150.0, 150.0, 150.0, 500.0]),
                            rows=np.array([3, 3, 2, 3]))
    prior_150 = (1 + 1) / (1 + 2)  # one failed job ended before 150
    assert X[0, F["user_fail_rate"]] == pytest.approx((1 + PRIOR_STRENGTH * prior_150) / (1 + PRIOR_STRENGTH))
    assert X[0, F["user_last_failed"]] == 1.0
    prior_500 = (2 + 1) / (3 + 2)
    assert X[3, F["user_fail_rate"]] == pytest.approx((1 + PRIOR_STRENGTH * prior_500) / (2 + PRIOR_STRENGTH))
    assert X[3, F["user_last_failed"]] == 0.0 and mask[3, F["user_last_failed"]]
    # bob's own failure ends exactly at 150: not before t
    assert X[2, F["user_fail_rate"]] == pytest.approx(prior_150) and not mask[2, F["user_last_failed"]]


def brute_history(jobs, rows, t):
    rate, last = [], []
    for r, tt in zip(rows, t, strict=True):
        done = np.isfinite(jobs.end_ts) & np.isfinite(jobs.label) & (jobs.end_ts < tt)
        g = jobs.label[done]
        prior = (g.sum() + 1) / (len(g) + 2)
        mine = done & (jobs.user == jobs.user[r])
        order = np.argsort(jobs.end_ts[mine], kind="stable")
        lab = jobs.label[mine][order]
        rate.append((lab.sum() + PRIOR_STRENGTH * prior) / (len(lab) + PRIOR_STRENGTH))
        last.append(lab[-1] if len(lab) else np.nan)
    return np.array(rate), np.array(last)


@pytest.mark.parametrize("seed", range(4))
def test_history_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    n = 300
    start = rng.uniform(0, 1e5, n)
    end = np.round(start + rng.exponential(3000, n), -2)  # rounded: many equal end times
    recs = [job(str(i), user=f"u{rng.integers(0, 12)}", start=start[i], end=end[i],
                state=rng.choice(["COMPLETED", "FAILED", "TIMEOUT", "RUNNING"])) for i in range(n)]
    jobs = JobTable.from_records(recs)
    rows = rng.integers(0, n, 500)
    t = np.where(rng.random(500) < 0.3, end[rows], rng.uniform(0, 1.2e5, 500))
    X, mask = asof_features(jobs, SampleTable.empty(), t, rows=rows)
    rate, last = brute_history(jobs, rows, t)
    np.testing.assert_allclose(X[:, F["user_fail_rate"]], rate, rtol=1e-6)
    known = ~np.isnan(last)
    np.testing.assert_array_equal(mask[:, F["user_last_failed"]], known)
    # with equal end times the "last" job is any of them: check against the set
    for i in np.flatnonzero(known):
        r = rows[i]
        mine = (jobs.user == jobs.user[r]) & np.isfinite(jobs.label) & (jobs.end_ts < t[i])
        latest = jobs.end_ts[mine].max()
        assert X[i, F["user_last_failed"]] in set(jobs.label[mine & (jobs.end_ts == latest)])


@pytest.mark.parametrize("seed", range(5))
def test_the_future_does_not_change_a_feature(seed):
    """A job whose future (its own later samples and end, the user's jobs ending after t,
    other jobs' samples) changes must keep every feature and channel at t."""
    rng = np.random.default_rng(seed)
    t = 1000.0 + 30 * rng.integers(3, 12) + rng.uniform(0, 29)
    def world(future: bool):
        recs = [job("past", start=0, end=500, state="COMPLETED"),
                job("me", start=1000, end=5000 if future else None, state="FAILED" if future else None)]
        if future:
            recs.append(job("later", start=100, end=t + 1, state="FAILED"))
        jobs = JobTable.from_records(recs)
        srecs = [sample("me", 1000 + 30 * i, i, cpu_user_s=60.0 * i * rng.uniform(0.5, 1)) for i in range(1, 40)]
        srecs = [s for s in srecs if s["ts"] <= t or future]
        if future:  # a spike right after t, and the samples of the later job
            srecs = [dict(s, mem_bytes=4 * GB, major_faults=1e6) if t < s["ts"] < t + 60 else s for s in srecs]
            srecs += [sample("later", 200 + 30 * i, i) for i in range(1, 50)]
        # feature 16 from the node's iowait (no job PSI, as on cgroup v1): node samples
        # 20 s before each job sample, and in the future world one with a huge iowait
        # just after t (nearer to the last sample than the past one, most seeds)
        nodes = [(1000.0 + 30 * i - 20, float(rng.uniform(0, 10))) for i in range(1, 40)]
        nodes = [n for n in nodes if n[0] <= t or future]
        nodes += [(t + 1e-3, 100.0)] if future else []
        srecs = [dict(s, io_pressure=None) for s in srecs]
        iowait = node_asof(np.zeros(len(srecs)), np.array([s["ts"] for s in srecs]),
                           np.zeros(len(nodes)), *np.array(nodes).T)
        srecs = [dict(s, iowait_pct=w) for s, w in zip(srecs, iowait, strict=True)]
        return jobs, SampleTable.from_records(jobs, srecs)
    base_rng = rng.bit_generator.state
    jobs_a, samp_a = world(False)
    rng.bit_generator.state = base_rng
    jobs_b, samp_b = world(True)
    a = asof_features(jobs_a, samp_a, np.array([t]), rows=np.array([1]))
    b = asof_features(jobs_b, samp_b, np.array([t]), rows=np.array([1]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1][0, F["io_pressure"]] and 0 < a[0][0, F["io_pressure"]] <= 0.1   # the node's past iowait
    sa = sequences(jobs_a, samp_a, np.array([t]), 8, 30.0, rows=np.array([1]))
    sb = sequences(jobs_b, samp_b, np.array([t]), 8, 30.0, rows=np.array([1]))
    np.testing.assert_array_equal(sa[0], sb[0])
    assert sa[1][0] == sb[1][0]


def brute_node_asof(node, ts, ref_node, ref_ts, ref_value, max_age_s):
    out = []
    for n, t in zip(node, ts, strict=True):
        cand = [(rt, v) for rn, rt, v in zip(ref_node, ref_ts, ref_value, strict=True)
                if rn == n and rt <= t and np.isfinite(v) and np.isfinite(rt)]
        best = max(cand, default=None)   # latest time, then the largest value
        out.append(best[1] if best is not None and t - best[0] <= max_age_s else np.nan)
    return np.array(out)


def test_node_asof_by_hand():
    """The latest known reading of the sample's own node at or before it, within the
    bound; never a later one, never another node's."""
    ref_node = np.array([7, 7, 7, 7, 3, 7])
    ref_ts = np.array([100.0, 130.0, 160.0, 165.0, 150.0, np.nan])
    ref_val = np.array([1.0, 2.0, 3.0, np.nan, 9.0, 5.0])
    node = np.array([7, 7, 7, 7, 7, 3, 5, 7])
    ts = np.array([99.0, 100.0, 159.9, 170.0, 220.0 + 1e-9, 150.0, 150.0, np.nan])
    got = node_asof(node, ts, ref_node, ref_ts, ref_val, max_age_s=60.0)
    np.testing.assert_array_equal(got, [np.nan, 1.0, 2.0, 3.0, np.nan, 9.0, np.nan, np.nan])
    assert IOWAIT_MAX_AGE_S == 60.0
    assert np.isnan(node_asof(np.array([1]), np.array([5.0]), np.zeros(0), np.zeros(0), np.zeros(0))).all()


@pytest.mark.parametrize("seed", range(4))
def test_node_asof_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    ref_node = rng.integers(-1, 6, 400)
    ref_ts = np.round(rng.uniform(0, 3000, 400), -1)          # rounded: ties within a node
    ref_val = np.where(rng.random(400) < 0.1, np.nan, rng.uniform(0, 100, 400))
    node, ts = rng.integers(-1, 7, 600), np.round(rng.uniform(-50, 3100, 600), -1)
    got = node_asof(node, ts, ref_node, ref_ts, ref_val, max_age_s=45.0)
    np.testing.assert_array_equal(got, brute_node_asof(node, ts, ref_node, ref_ts, ref_val, 45.0))
    perm = rng.permutation(400)   # the input order of the readings does not matter
    np.testing.assert_array_equal(got, node_asof(node, ts, ref_node[perm], ref_ts[perm],
                                                 ref_val[perm], max_age_s=45.0))
    sparse = 10**9   # codes far apart: looked up by binary search, not through a table
    np.testing.assert_array_equal(got, node_asof(node * sparse, ts, ref_node * sparse, ref_ts,
                                                 ref_val, max_age_s=45.0))


def test_sequences_are_left_padded_and_end_at_the_asof_features():
    jobs = JobTable.from_records([job("1"), job("2")])
    samples = SampleTable.from_records(jobs, [sample("1", 1000 + 30 * i, i) for i in range(1, 4)])
    t = np.array([1095.0, 1095.0])
    S, lengths = sequences(jobs, samples, t, 5, 30.0)
    assert S.shape == (2, 5, len(CHANNELS)) and S.dtype == np.float32
    assert lengths.tolist() == [3, 0]
    assert np.isnan(S[0, :2]).all() and np.isfinite(S[0, 2:, 0]).all()
    assert np.isnan(S[1]).all()
    X, mask = asof_features(jobs, samples, t)
    np.testing.assert_allclose(np.nan_to_num(S[0, -1]), X[0, N_START:], rtol=1e-6)
    norm = Normalizer().fit(X, mask)
    Z = norm.transform_sequences(S)
    assert np.isfinite(Z).all() and (Z[1] == 0).all()
    with pytest.raises(ValueError, match="length"):
        sequences(jobs, samples, t, 0, 30.0)


def test_snapshots_weigh_every_job_once():
    recs = [job("1", start=0, end=95, state="FAILED"), job("2", start=0, end=3000, state="COMPLETED"),
            job("3", start=0), job("4", start=10, end=10, state="COMPLETED")]
    jobs = JobTable.from_records(recs)
    rows, t, w = snapshots(jobs, SampleTable.empty(), 30.0, max_per_job=10)
    assert set(rows.tolist()) == {0, 1, 3}
    assert t[rows == 0].tolist() == [0.0, 30.0, 60.0, 90.0]
    assert len(t[rows == 1]) == 10 and (np.diff(t[rows == 1]) > 0).all() and t[rows == 1].max() < 3000
    assert t[rows == 3].tolist() == [10.0]
    np.testing.assert_allclose(np.bincount(rows, weights=w)[[0, 1, 3]], 1.0)
    assert ((t >= jobs.start_ts[rows]) & ((t < jobs.end_ts[rows]) | (rows == 3))).all()


def test_normalizer_fits_known_values_and_round_trips_through_json():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(400, N_FEATURES)).astype(np.float32)
    mask = rng.random((400, N_FEATURES)) < 0.8
    X[~mask] = 0.0
    norm = Normalizer().fit(X, mask)
    Z = norm.transform(X, mask)
    assert (Z[~mask] == 0).all()
    assert abs(Z[mask[:, 0], 0].mean()) < 1e-5 and Z[mask[:, 0], 0].std() == pytest.approx(1.0, rel=1e-4)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.transform(X, mask), Z)
    assert (Normalizer().fit(np.zeros((3, N_FEATURES)), np.ones((3, N_FEATURES), bool)).std_ == 1.0).all()


def test_normalizer_refuses_misuse():
    with pytest.raises(RuntimeError, match="not fitted"):
        Normalizer().transform(np.zeros((1, N_FEATURES)), np.ones((1, N_FEATURES), bool))
    data = Normalizer().fit(np.ones((2, N_FEATURES)), np.ones((2, N_FEATURES), bool)).to_dict()
    with pytest.raises(ValueError, match="another feature set"):
        Normalizer.from_dict(dict(data, features=data["features"][::-1]))
    with pytest.raises(ValueError, match=f"{N_FEATURES} numbers"):
        Normalizer.from_dict(dict(data, std=[0.0] * N_FEATURES))


def test_tables_refuse_bad_input():
    jobs = JobTable.from_records([job("1")])
    with pytest.raises(ValueError, match="unknown sample columns"):
        SampleTable(np.zeros(1), np.zeros(1), {"cpu_seconds": np.zeros(1)})
    with pytest.raises(ValueError, match="finite"):
        asof_features(jobs, SampleTable.empty(), np.array([np.nan]))
    with pytest.raises(ValueError, match="rows must index"):
        asof_features(jobs, SampleTable.empty(), np.array([1.0]), rows=np.array([3]))
    with pytest.raises(ValueError, match="one time per example"):
        asof_features(jobs, SampleTable.empty(), np.array([1.0, 2.0]))
    samples = SampleTable.from_records(jobs, [sample("1", 1030, 1), sample("nope", 1030, 1),
                                              sample("1", None, 2)])
    assert len(samples) == 1  # unknown job and sample without a time dropped
    assert jobs.take(np.array([0, 0])).job_id.tolist() == ["1", "1"]


def test_samples_of_a_multi_node_job_become_job_totals():
    jobs = JobTable.from_records([job("1", start=0.0), job("2", start=0.0)])
    recs = []
    for i in range(1, 5):
        recs.append(dict(job_id="1", node="n1", ts=30 * i, cpu_user_s=60 * i, mem_bytes=100 + i,
                         io_pressure=1.0, alloc_cpus=4))
        recs.append(dict(job_id="1", node="n2", ts=30 * i + 3, cpu_user_s=None if i == 2 else 90 * i,
                         mem_bytes=200 + i, io_pressure=2.0, alloc_cpus=4))
        recs.append(dict(job_id="2", node="n3", ts=30 * i + 1, cpu_user_s=i, mem_bytes=None if i < 3 else 7))
    s = SampleTable.from_records(jobs, recs)
    one = s.job_index == 0
    assert s.ts[one].tolist() == [30, 33, 60, 63, 90, 93, 120, 123]
    # each row: every node's latest known value at that time, summed (n2's gap keeps its last)
    assert s.cpu_user_s[one].tolist() == [60, 150, 210, 210, 270, 450, 510, 600]
    assert s.mem_bytes[one].tolist() == [101, 302, 303, 304, 305, 306, 307, 308]
    assert s.alloc_cpus[one].tolist() == [4, 8, 8, 8, 8, 8, 8, 8]
    assert s.io_pressure[one].tolist() == [1, 2, 1, 2, 1, 2, 1, 2]  # pressure is not summed
    assert s.cpu_user_s[~one].tolist() == [1, 2, 3, 4]
    assert np.isnan(s.mem_bytes[~one][:2]).all() and s.mem_bytes[~one][2:].tolist() == [7, 7]
    X, _ = asof_features(jobs, s, np.array([123.0, 121.0]))
    assert X[0, F["cpu_eff"]] == pytest.approx(600 / (8 * 123), rel=1e-6)


def test_recent_window_is_measured_in_time():
    """Samples every 10 s: the recent change looks back 90 s, not three samples."""
    jobs = JobTable.from_records([job("1", start=0.0)])
    busy = [sample("1", 10.0 * i, 0, cpu_user_s=40.0 * i) for i in range(1, 31)]  # 4 CPUs busy
    idle = [sample("1", 300 + 10.0 * i, 0, cpu_user_s=1200.0) for i in range(1, 7)]  # then idle 60 s
    s = SampleTable.from_records(jobs, busy + idle)
    X, _ = asof_features(jobs, s, np.array([360.0]))
    eff = 1200 / (4 * 360)
    recent = (1200 - 40 * 27) / (4 * 90)  # the window starts at the sample 90 s back (t=270)
    assert X[0, F["cpu_eff_change"]] == pytest.approx(recent - eff, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_last_sample_matches_a_plain_loop(seed):
    """The binary search finds the last sample at or before t of the example's own job,
    with equal times, queries exactly at sample times, before the first and NaN."""
    from nomade.features.lookups import _last_sample

    rng = np.random.default_rng(seed)
    n_jobs = 30
    jobs = JobTable.from_records([job(str(i)) for i in range(n_jobs)])
    recs = [sample(str(rng.integers(0, n_jobs - 3)), float(rng.integers(0, 40)) * 30.0, 1)
            for _ in range(400)]   # on a coarse grid: many equal times; jobs 27-29 have none
    samples = SampleTable.from_records(jobs, recs)
    rows = rng.integers(0, n_jobs, 300)
    t = np.where(rng.random(300) < 0.5, rng.integers(-1, 41, 300) * 30.0, rng.uniform(-50, 1250, 300))
    t[:5] = np.nan
    last, first = _last_sample(samples, rows, t)
    for e, (r, tt) in enumerate(zip(rows, t, strict=True)):
        mine = np.flatnonzero(samples.job_index == r)
        ok = mine[samples.ts[mine] <= tt]
        assert last[e] == (ok[-1] if len(ok) else -1)
        if len(mine):
            assert first[e] == mine[0]


def test_job_totals_fill_gaps_on_one_node_and_do_not_depend_on_row_order():
    jobs = JobTable.from_records([job("1", start=0.0), job("2", start=0.0)])
    recs = [dict(job_id="1", node="a", ts=30.0 * i, mem_bytes=None if i == 2 else 10 * i,
                 read_bytes=5 * i) for i in range(1, 5)]
    recs += [dict(job_id="2", node=n, ts=30.0 * i + k, mem_bytes=100 * i + k, io_pressure=float(k))
             for i in range(1, 4) for k, n in enumerate(("b", "c"))]
    s = SampleTable.from_records(jobs, recs)
    one = s.job_index == 0
    # a single-node job in a table of several nodes: an unknown value keeps the last known
    assert s.mem_bytes[one].tolist() == [10, 10, 30, 40] and s.read_bytes[one].tolist() == [5, 10, 15, 20]
    assert s.mem_bytes[~one].tolist() == [100, 201, 301, 401, 501, 601]   # b + c, latest of each
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = [recs[i] for i in rng.permutation(len(recs))]
        again = SampleTable.from_records(jobs, shuffled)
        for c in SampleTable.empty().cols:
            np.testing.assert_array_equal(again.cols[c], s.cols[c])


def test_thin_keeps_one_sample_per_interval_of_each_job() -> None:
    from nomade.features import SampleTable, sampling_interval, thin
    ts = np.concatenate([1000.0 + 3.0 * np.arange(200), 5000.0 + 3.0 * np.arange(50)])
    job = np.repeat([0, 1], [200, 50])
    s = SampleTable(job, ts, {"mem_bytes": ts * 10})
    assert sampling_interval(s) == 3.0
    t = thin(s, 30.0, seed=1)
    assert 19 <= (t.job_index == 0).sum() <= 21 and 4 <= (t.job_index == 1).sum() <= 6
    gaps = np.diff(t.ts)[np.diff(t.job_index) == 0]
    assert gaps.min() >= 3.0 and abs(np.median(gaps) - 30.0) <= 3.0
    np.testing.assert_array_equal(t.mem_bytes, t.ts * 10)   # kept samples are kept as they were
    assert len(thin(s, 1.0)) == len(s)


def test_idle_minutes_counts_the_trailing_idle_steps_of_the_window() -> None:
    from nomade.features import CHANNELS, idle_minutes
    S = np.full((3, 8, len(CHANNELS)), np.nan)
    eff, change = CHANNELS.index("cpu_eff"), CHANNELS.index("cpu_eff_change")
    S[:, :, eff] = 0.5
    S[:, :, change] = np.array([0.4, 0.4, 0.4, -0.48, -0.49, -0.5, -0.5, -0.5])   # idle from step 3
    S[1, -1, change] = 0.0                                                     # busy again at the end
    out = idle_minutes(S, np.array([8, 8, 2]), 15.0)
    np.testing.assert_allclose(out, [5 * 15 / 60, 0.0, 2 * 15 / 60])   # job 2: only 2 valid steps


def test_normalizer_reads_values_beyond_the_training_range_as_its_edge() -> None:
    """The range is what the training values fill, not their extremes: a few outliers
    (here 1 in 400, as the corpus's three page-thrashing examples at 77 % CPU) do not
    stretch it, and the mean and spread are of the clipped values."""
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 0.1, size=(400, N_FEATURES))
    X[0, 7] = 0.77                                        # one outlier
    mask = np.ones(X.shape, bool)
    mask[:, 16] = False                                   # never known: unbounded
    norm = Normalizer().fit(X, mask)
    assert norm.hi_[7] < 0.1 and norm.lo_[7] > 0.0 and np.isinf(norm.hi_[16])
    assert norm.std_[7] == pytest.approx(np.clip(X[:, 7], norm.lo_[7], norm.hi_[7]).std())
    busy = X[:2].copy()
    busy[:, 7] = [0.8, -5.0]                              # far outside what training filled
    edge = busy.copy()
    edge[:, 7] = [np.quantile(X[:, 7], q, method="inverted_cdf") for q in (0.995, 0.005)]
    np.testing.assert_allclose(norm.transform(busy, np.ones_like(mask[:2])), norm.transform(edge, np.ones_like(mask[:2])))
    S = np.full((1, 3, len(CHANNELS)), np.nan)
    S[0, 2, 7 - 6] = 0.8
    assert norm.transform_sequences(S)[0, 2, 1] == pytest.approx(norm.transform(edge, np.ones_like(mask[:2]))[0, 7])
    assert norm.transform_sequences(S)[0, 0, 1] == 0.0    # padding stays 0
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.transform(busy, np.ones_like(mask[:2])), norm.transform(busy, np.ones_like(mask[:2])))
    old = {k: v for k, v in norm.to_dict().items() if k not in ("lo", "hi")}   # a model file of before
    assert Normalizer.from_dict(old).lo_ is None
