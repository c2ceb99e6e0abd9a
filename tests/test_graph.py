"""The similarity graph against a brute-force reference, and its time rule."""

from __future__ import annotations

import numpy as np
import pytest

from nomade.ml import graph
from nomade.ml.graph import edge_list, neighbours


def brute(ref_X, ref_end, q_X, q_start, q_mask, threshold, k):
    """One query at a time, float64, the definition spelled out."""
    nq = len(q_X)
    idx, sim, valid = np.zeros((nq, k), int), np.zeros((nq, k)), np.zeros((nq, k), bool)
    for i in range(nq):
        q, R = q_X[i] * q_mask[i], ref_X * q_mask[i]
        nr, nq_ = np.linalg.norm(R, axis=1), np.linalg.norm(q)
        s = (R @ q) / np.where(nr > 0, nr, 1.0) / (nq_ if nq_ > 0 else 1.0)
        ok = np.flatnonzero((ref_end < q_start[i]) & (s >= threshold))
        ok = ok[np.lexsort((ok, -s[ok]))][:k]
        idx[i, :len(ok)], sim[i, :len(ok)], valid[i, :len(ok)] = ok, s[ok], True
    return idx, sim, valid


def jobs(n, rng, masked=0.3):
    centers = rng.normal(size=(8, 17))
    X = centers[rng.integers(0, 8, n)] + 0.6 * rng.normal(size=(n, 17))
    start = rng.uniform(0, 10_000, n)
    end = start + rng.exponential(500, n)
    end[rng.random(n) < 0.1] = np.nan  # still running: never a reference
    mask = np.ones((n, 17), bool)
    r = rng.random(n)
    mask[r < masked, 6:] = False
    mask[(r >= masked) & (r < masked + 0.2), 15] = False
    return X, start, end, mask


@pytest.mark.parametrize("seed,threshold,k", [(0, 0.7, 10), (1, 0.3, 3), (2, 0.9, 5), (3, -1.0, 4)])
def test_matches_brute_force(seed, threshold, k, monkeypatch):
    # small chunks and blocks so that padding, bands and several blocks are exercised
    monkeypatch.setattr(graph, "CHUNK", 16)
    monkeypatch.setattr(graph, "BLOCK_ELEMENTS", 4096)
    rng = np.random.default_rng(seed)
    X, start, end, mask = jobs(700, rng)
    got = neighbours(X, end, X, start, mask, threshold, k)
    want = brute(X, end, X, start, mask, threshold, k)
    assert got[2].sum() > 0
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[0][got[2]], want[0][want[2]])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    assert (got[1][~got[2]] == 0).all() and (got[0][~got[2]] == 0).all()


def test_no_edge_from_a_job_that_ended_after_the_receiver_started():
    rng = np.random.default_rng(5)
    X, start, end, mask = jobs(3000, rng)
    idx, sim, valid = neighbours(X, end, X, start, mask, threshold=0.0, k=10)
    rows = np.nonzero(valid)[0]
    assert len(rows) > 10_000
    assert (end[idx[valid]] < start[rows]).all()
    assert not np.isnan(end[idx[valid]]).any()
    assert (sim[valid] >= 0.0).all()
    assert (np.diff(sim, axis=1)[valid[:, 1:]] <= 0).all()  # best first


def test_edge_list_sends_from_reference_to_query():
    rng = np.random.default_rng(6)
    X, start, end, mask = jobs(200, rng)
    idx, sim, valid = neighbours(X, end, X, start, mask, threshold=0.5, k=4)
    src, dst, w = edge_list(idx, sim, valid)
    assert len(src) == valid.sum() > 0
    assert (end[src] < start[dst]).all()
    assert sorted(zip(dst.tolist(), w.tolist(), strict=True)) == sorted(
        (i, float(s)) for i, row in enumerate(sim) for s, v in zip(row, valid[i], strict=True) if v)


def test_equal_end_and_start_is_not_before():
    X = np.ones((2, 3))
    idx, sim, valid = neighbours(X, np.array([5.0, 9.0]), X, np.array([5.0, 5.0 + 1e-6]), k=2)
    assert not valid[0].any()
    assert valid[1].tolist() == [True, False] and idx[1, 0] == 0


def test_similarity_only_over_what_the_query_knows():
    ref = np.array([[1.0, 0.0, 5.0]])
    q = np.array([[1.0, 0.0, -5.0]])
    args = (ref, np.array([0.0]), q, np.array([1.0]))
    assert not neighbours(*args, threshold=0.7, k=1)[2].any()
    idx, sim, valid = neighbours(*args, q_mask=np.array([[True, True, False]]), threshold=0.7, k=1)
    assert valid[0, 0] and sim[0, 0] == pytest.approx(1.0)


def test_separate_reference_and_query_sets_and_empty_inputs():
    rng = np.random.default_rng(7)
    R, Q = rng.normal(size=(50, 17)), rng.normal(size=(20, 17))
    ends, starts = rng.uniform(0, 10, 50), rng.uniform(0, 10, 20)
    got = neighbours(R, ends, Q, starts, None, 0.2, 4)
    want = brute(R, ends, Q, starts, np.ones((20, 17), bool), 0.2, 4)
    np.testing.assert_array_equal(got[0][got[2]], want[0][want[2]])
    assert neighbours(R, ends, Q[:0], starts[:0], None, 0.7, 3)[0].shape == (0, 3)
    assert not neighbours(R, np.full(50, np.nan), Q, starts, None, 0.0, 3)[2].any()
    assert neighbours(R, ends, Q, starts, None, 0.7, 0)[0].shape == (20, 0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(threshold=1.5), "threshold"), (dict(k=-1), "k must"),
    (dict(q_mask=np.ones((3, 2), bool)), "q_mask")])
def test_bad_arguments_are_refused(kwargs, message):
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match=message):
        neighbours(X, np.zeros(3), X, np.ones(3), **kwargs)
    with pytest.raises(ValueError, match="one time per row"):
        neighbours(X, np.zeros(2), X, np.ones(3))


@pytest.mark.parametrize("width", [1, 17, 70])
def test_mask_patterns_are_the_distinct_rows(width):
    rng = np.random.default_rng(width)
    mask = rng.random((500, width)) < 0.3
    mask[::7] = mask[0]   # repeated rows
    patterns, which = graph._mask_patterns(mask)
    np.testing.assert_array_equal(patterns[which], mask)
    assert len(patterns) == len(np.unique(mask, axis=0))
