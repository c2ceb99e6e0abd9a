"""Metrics against hand-computed values; the three estimators learn what they should,
are reproducible, and keep the estimator contract."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nomade.ml import graph, metrics
from nomade.ml.models import (
    AutoencoderScorer,
    GNNClassifier,
    LSTMClassifier,
    Neighbours,
    NotFittedError,
    Reference,
    balance,
    with_padding_flag,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------ metrics

def test_auc_roc_hand_computed() -> None:
    # pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, 0.1) ok, (0.8, 0.4) ok -> 3/4
    assert metrics.auc_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc_roc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert metrics.auc_roc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert np.isnan(metrics.auc_roc([1, 1], [0.2, 0.3]))


def test_auc_roc_matches_pair_counting_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 5, 60) / 4.0  # many ties
    w = rng.integers(1, 4, 60).astype(float)
    num = den = 0.0
    for i, j in itertools.product(np.flatnonzero(y == 1), np.flatnonzero(y == 0)):
        den += w[i] * w[j]
        num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert metrics.auc_roc(y, s, w) == pytest.approx(num / den)
    # weight 2 == the example twice
    assert metrics.auc_roc(y, s, np.full(60, 2.0)) == pytest.approx(metrics.auc_roc(np.r_[y, y], np.r_[s, s]))


def test_auc_pr_and_threshold_metrics_hand_computed() -> None:
    y, s = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
    # thresholds 0.9: P=1 R=.5; 0.8: P=.5 (no recall gain); 0.7: P=2/3 R=1 -> .5*1 + .5*2/3
    assert metrics.auc_pr(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert metrics.precision_recall_f1(y, s, 0.75) == pytest.approx((0.5, 0.5, 0.5))
    p, r, f = metrics.precision_recall_f1(y, s, 0.95)
    assert np.isnan(p) and r == 0.0 and f == 0.0  # every failure missed: the worst F1, not unknown
    with pytest.raises(ValueError):
        metrics.auc_roc([0, 2], [0.1, 0.2])


# ------------------------------------------------------------------ training helpers

def test_balance_modes() -> None:
    y = np.array([0, 0, 0, 1], float)
    w = np.array([0.5, 0.5, 1.0, 1.0])
    lw, p, size = balance(y, w, "weights")
    assert size == 3 and p == pytest.approx(w / w.sum())
    assert (lw * p)[y == 0].sum() == pytest.approx((lw * p)[y == 1].sum())  # classes weigh the same
    lw, p, _ = balance(y, w, "oversample")
    assert (lw == 1).all() and p[y == 0].sum() == pytest.approx(0.5) and p[y == 1].sum() == pytest.approx(0.5)
    lw, p, _ = balance(y, w, "none")
    assert (lw == 1).all() and p == pytest.approx(w / w.sum())
    with pytest.raises(ValueError):
        balance(y, w, "smote")


def test_padding_flag_marks_left_padding() -> None:
    S = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1) + 1
    out = with_padding_flag(S, np.array([1, 3]))
    assert out.shape == (2, 3, 2)
    assert out[0, :, 1].tolist() == [1, 1, 0] and out[0, :, 0].tolist() == [0, 0, 3]
    assert out[1, :, 1].tolist() == [0, 0, 0] and out[1, :, 0].tolist() == [4, 5, 6]


# ------------------------------------------------------------------ GNN

def _graph_data(n: int = 1200, seed: int = 0):
    """Jobs in 6 clusters of similar feature vectors; a cluster's failure rate is
    0.05 or 0.9. Time order: start sorted, each runs 1-20 h."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 17)).astype(np.float32)
    c = rng.integers(0, 6, n)
    X = centres[c] + 0.3 * rng.normal(size=(n, 17)).astype(np.float32)
    y = (rng.random(n) < np.where(c % 2 == 0, 0.9, 0.05)).astype(np.float32)
    start = np.sort(rng.uniform(0, 3e6, n))
    end = start + rng.uniform(3600, 72000, n)
    idx, sim, valid = graph.neighbours(X, end, X, start, None, 0.5, 8)
    return X, y, start, end, Neighbours(idx, sim, valid)


def test_reference_agg_is_the_similarity_weighted_mean_of_neighbour_messages() -> None:
    x = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]], np.float32)
    y = np.array([1.0, 0.0, 1.0], np.float32)
    own = Neighbours(np.array([[0, 0], [0, 0], [0, 1]]), np.array([[0, 0], [0.5, 0], [0.75, 0.25]], np.float32),
                     np.array([[False, False], [True, False], [True, True]]))
    ref = Reference.build(x, y, np.arange(3.0), own)
    assert ref.agg[0].tolist() == [0, 0, 0]  # no neighbour: nothing
    assert ref.agg[1].tolist() == [1, 0, 1]
    assert ref.agg[2] == pytest.approx([0.75, 0.25, 0.75])


def test_gnn_learns_from_similar_jobs_and_is_reproducible() -> None:
    X, y, start, end, nb = _graph_data()
    ref = Reference.build(X, y, end, nb)
    tr, va = np.arange(900), np.arange(900, 1200)
    sub = lambda r: Neighbours(nb.idx[r], nb.sim[r], nb.valid[r])
    fit = lambda: GNNClassifier(hidden_dim=16, out_dim=8, epochs=15, patience=5, seed=1).fit(
        ref, X[tr], sub(tr), y[tr], val=(X[va], sub(va), y[va], None))
    a, b = fit(), fit()
    pa = a.predict_proba(X[va], sub(va))
    assert metrics.auc_roc(y[va], pa) > 0.85
    assert np.array_equal(pa, b.predict_proba(X[va], sub(va)))
    assert 1 <= a.best_epoch_ <= len(a.history_) <= 15
    lonely = Neighbours(np.zeros((2, 8), int), np.zeros((2, 8), np.float32), np.zeros((2, 8), bool))
    assert np.isfinite(a.predict_proba(X[:2], lonely)).all()  # a job with no neighbours still gets a score


def test_gnn_keep_recent_and_not_fitted() -> None:
    with pytest.raises(NotFittedError):
        GNNClassifier().predict_proba(np.zeros((1, 17), np.float32),
                                      Neighbours(np.zeros((1, 1), int), np.zeros((1, 1)), np.zeros((1, 1), bool)))
    X, y, start, end, nb = _graph_data(300)
    model = GNNClassifier(hidden_dim=8, out_dim=4, epochs=1).fit(Reference.build(X, y, end, nb), X, nb, y)
    keep = model.keep_recent(50)
    assert len(model.reference_.x) == 50 and set(keep) == set(np.argsort(end)[-50:])
    assert model.get_params()["hidden_dim"] == 8


# ------------------------------------------------------------------ LSTM

def test_lstm_learns_a_sequence_signal_and_skips_jobs_without_samples() -> None:
    rng = np.random.default_rng(2)
    n, T = 800, 8
    y = (rng.random(n) < 0.3).astype(np.float32)
    S = rng.normal(size=(n, T, 3)).astype(np.float32)
    S[:, :, 0] += np.where(y[:, None] == 1, np.linspace(0, 2, T), 0.0)  # failing jobs: channel 0 climbs
    lengths = rng.integers(2, T + 1, n)
    lengths[:5] = 0
    tr, va = np.arange(600), np.arange(600, n)
    model = LSTMClassifier(hidden_dim=16, out_dim=8, epochs=12, patience=4, batch_size=64, seed=0).fit(
        S[tr], lengths[tr], y[tr], val=(S[va], lengths[va], y[va], None))
    p = model.predict_proba(S, lengths)
    assert np.isnan(p[:5]).all() and np.isfinite(p[5:]).all()
    assert metrics.auc_roc(y[va], p[va]) > 0.8
    again = LSTMClassifier(hidden_dim=16, out_dim=8, epochs=12, patience=4, batch_size=64, seed=0).fit(
        S[tr], lengths[tr], y[tr], val=(S[va], lengths[va], y[va], None))
    assert np.array_equal(np.nan_to_num(p), np.nan_to_num(again.predict_proba(S, lengths)))
    # the forward batch size changes the cost, not the scores (nor their rows)
    np.testing.assert_allclose(model.predict_proba(S, lengths, batch=97), p, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no example has a sample"):
        LSTMClassifier(epochs=1).fit(S[:3], np.zeros(3, int), y[:3])


def test_early_stopping_stops_before_epochs_on_noise() -> None:
    rng = np.random.default_rng(5)
    S = rng.normal(size=(200, 4, 2)).astype(np.float32)
    y = (rng.random(200) < 0.5).astype(np.float32)
    L = np.full(200, 4)
    model = LSTMClassifier(hidden_dim=4, out_dim=4, epochs=40, patience=2, batch_size=50).fit(
        S[:150], L[:150], y[:150], val=(S[150:], L[150:], y[150:], None))
    assert len(model.history_) < 40
    assert len(model.history_) - model.best_epoch_ == 2


# ------------------------------------------------------------------ autoencoder

def test_autoencoder_scores_unusual_jobs_higher_and_uses_completed_jobs_only() -> None:
    rng = np.random.default_rng(4)
    n = 1500
    base = rng.normal(size=(n, 3))
    X = np.concatenate([base, base @ rng.normal(size=(3, 14))], axis=1).astype(np.float32)  # 3-d manifold
    y = np.zeros(n, np.float32)
    odd = rng.normal(scale=2.0, size=(300, 17)).astype(np.float32)  # off the manifold
    X_all, y_all = np.concatenate([X, odd]), np.concatenate([y, np.ones(300, np.float32)])
    mask = np.ones(X_all.shape, bool)
    model = AutoencoderScorer(epochs=30, patience=5, batch_size=128, seed=0).fit(
        X_all[:1700], mask[:1700], y_all[:1700])
    s = model.score(X_all, mask)
    assert ((s >= 0) & (s <= 1)).all()
    assert s[1500:].mean() > s[1200:1500].mean() + 0.2
    assert metrics.auc_roc(y_all, s) > 0.8
    # masked features do not count: changing them changes nothing
    m2 = mask.copy()
    m2[:, 5] = False
    X2 = X_all.copy()
    X2[:, 5] = 100.0
    assert np.array_equal(model.errors(X2, m2), model.errors(X_all, m2))
    with pytest.raises(ValueError, match="COMPLETED"):
        AutoencoderScorer(epochs=1).fit(X[:5], mask[:5], np.ones(5))


def test_training_runs_on_one_thread_and_restores_the_callers_setting() -> None:
    rng = np.random.default_rng(6)
    S, y = rng.normal(size=(64, 4, 2)).astype(np.float32), (rng.random(64) < 0.5).astype(np.float32)
    seen: list[int] = []
    torch.set_num_threads(2)
    try:
        LSTMClassifier(hidden_dim=4, out_dim=4, epochs=2, batch_size=16).fit(
            S, np.full(64, 4), y, val=(S, np.full(64, 4), y, None),
            progress=lambda e, n, s: seen.append(torch.get_num_threads()))
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
