"""Live scoring through Scorer: batch scores, renormalised ensemble, levels, parts that
are missing, and occlusion explanations that mean what they say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from nomade import config, features
from nomade.ml import ensemble, persist, train
from nomade.ml.ensemble import Weights, combine
from nomade.ml.inference import Scorer, reference_for, reference_stats
from nomade.ml.models import LSTMClassifier

torch.set_num_threads(1)


def small_config(**training: int) -> config.Config:
    cfg = config.load(None)
    t = dataclasses.replace(cfg.ml.training, **{"epochs": 3, "patience": 2, **training})
    return dataclasses.replace(cfg, ml=dataclasses.replace(cfg.ml, training=t))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, train.Prepared]:
    out = tmp_path_factory.mktemp("models")
    jobs, samples = train.synthetic_tables(500, seed=3)
    prepared = train.prepare(jobs, samples, 30.0, 10, max_per_job=6, source="synthetic")
    train.fit_and_save(prepared, small_config(), out)
    return out, prepared


def _batch(p: train.Prepared, n: int = 300) -> tuple[np.ndarray, ...]:
    rows = p.rows("test")[:n]
    return p.X[rows], p.mask[rows], p.S[rows], p.lengths[rows], p.start_ts[rows]


def test_scores_a_batch(trained: tuple[Path, train.Prepared]) -> None:
    models_dir, p = trained
    scorer = Scorer.load(models_dir)
    X, mask, S, lengths, start = _batch(p)
    s = scorer.score(X, mask, S, lengths, start)
    assert s.risk.shape == (len(X),) and ((s.risk >= 0) & (s.risk <= 1)).all()
    assert list(s.level) == [ensemble.level(r) for r in s.risk]
    assert np.allclose(s.risk, combine(s.parts, scorer.weights))
    no_samples = np.flatnonzero(lengths == 0)
    assert len(no_samples) and all(s.parts_of(i)["lstm"] is None for i in no_samples)
    assert all(s.parts_of(i)["lstm"] is not None for i in np.flatnonzero(lengths > 0))
    # without sequences: no LSTM part, risk renormalised over GNN and autoencoder
    s2 = scorer.score(X, mask, None, None, start, explain=False)
    w = scorer.weights
    expect = (w.gnn * s.parts[:, 0] + w.autoencoder * s.parts[:, 2]) / (w.gnn + w.autoencoder)
    assert np.isnan(s2.parts[:, 1]).all() and np.allclose(s2.risk, expect, atol=1e-6)
    assert s2.contributions is None and s2.factors(0) == []
    # explaining chosen rows of an existing score == scoring them again with explain=rows
    plain = scorer.score(X, mask, S, lengths, start, explain=False)
    later = scorer.explain(plain, np.array([3, 0]))
    again = scorer.score(X, mask, S, lengths, start, explain=np.array([3, 0]))
    assert plain.contributions is None and later.risk is plain.risk
    np.testing.assert_array_equal(later.contributions, again.contributions)
    assert later.factors(3) == again.factors(3) and later.factors(1) == []
    # the whole batch's explanation agrees up to float32 arithmetic (batch-size dependent sums)
    assert same_factors(later.factors(3), s.factors(3))
    assert scorer.version == persist.model_version(persist.read_metadata(models_dir))
    kept = scorer.neighbours(X, mask, start)  # what an agent may keep per job
    again = scorer.score(X, mask, S, lengths, None, neighbours=kept)
    assert np.array_equal(again.risk, s.risk) and np.array_equal(again.contributions, s.contributions)


def test_explanations_are_occlusion_against_normal(trained: tuple[Path, train.Prepared]) -> None:
    models_dir, p = trained
    scorer = Scorer.load(models_dir)
    X, mask, S, lengths, start = _batch(p, 100)
    s = scorer.score(X, mask, S, lengths, start)
    assert (s.contributions[~mask] == 0).all() and np.isfinite(s.contributions).all()
    # the GNN's neighbourhood is held fixed while occluding; without a GNN the
    # contribution is exactly the risk change when the feature is set to normal, in the
    # features and, for a runtime feature, in the LSTM's sequence of that channel
    no_gnn = {k: scorer.models[k] for k in ("lstm", "autoencoder")}
    scorer = Scorer(no_gnn, scorer.normalizers, scorer.weights, scorer.metadata)
    s = scorer.score(X, mask, S, lengths, start)
    f = features.FEATURES.index("mem_peak_frac")
    occluded = X.copy()
    occluded[:, f] = np.where(mask[:, f], s.reference_median[:, f], X[:, f])
    seq = S.copy()
    seq[:, :, f - features.N_START] = s.reference_median[:, None, f]
    again = scorer.score(occluded, mask, seq, lengths, start, explain=False)
    assert np.allclose(s.contributions[:, f], np.where(mask[:, f], s.risk - again.risk, 0.0), atol=1e-5)
    start_f = features.FEATURES.index("log_req_mem_mb")   # not an LSTM channel: features only
    occluded = X.copy()
    occluded[:, start_f] = np.where(mask[:, start_f], s.reference_median[:, start_f], X[:, start_f])
    again = scorer.score(occluded, mask, S, lengths, start, explain=False)
    assert np.allclose(s.contributions[:, start_f], np.where(mask[:, start_f], s.risk - again.risk, 0.0),
                       atol=1e-5)
    i = int(np.argmax(s.contributions.max(axis=1)))
    top = s.factors(i)
    assert top and top[0]["contribution"] == pytest.approx(float(s.contributions[i].max()))
    assert [t["contribution"] for t in top] == sorted((t["contribution"] for t in top), reverse=True)
    assert top[0]["value"] == pytest.approx(float(X[i, features.FEATURES.index(top[0]["name"])]))
    some = scorer.score(X, mask, S, lengths, start, explain=np.array([i, 3]))
    assert np.allclose(some.contributions[[i, 3]], s.contributions[[i, 3]], atol=1e-6)
    assert np.isnan(np.delete(some.contributions, [i, 3], axis=0)).all() and some.factors(i) == top
    assert some.factors(0 if i != 0 else 1) == []


def test_reference_statistics_per_shape() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, features.N_FEATURES)).astype(np.float32)
    X[:, 0] = np.repeat([0.5, 1.0, 2.0, 3.0], 100)  # four CPU sizes
    X[:, 2] = 0.0
    X[:, 9] = X[:, 0] * 10  # memory fraction follows the job size
    mask = np.ones(X.shape, bool)
    ref = reference_stats(X, mask, np.zeros(400))
    med, spread = reference_for(ref, np.array([[3.0] + [0.0] * 16, [0.5] + [0.0] * 16], np.float32))
    assert med[0, 9] == pytest.approx(30.0) and med[1, 9] == pytest.approx(5.0)
    assert (spread >= 0).all()
    failed_only = reference_stats(X, mask, np.ones(400))  # no completed jobs: zeros, not NaN
    assert np.isfinite(reference_for(failed_only, X)[0]).all()


def test_load_errors(tmp_path: Path, trained: tuple[Path, train.Prepared]) -> None:
    with pytest.raises(persist.ModelError, match="no trained models"):
        Scorer.load(tmp_path)
    rng = np.random.default_rng(0)
    other = LSTMClassifier(hidden_dim=4, out_dim=4, epochs=1).fit(  # a model for 4 channels, not 11
        rng.normal(size=(20, 3, 4)).astype(np.float32), np.full(20, 3), (rng.random(20) < 0.5).astype(np.float32))
    persist.save(tmp_path, {"lstm": other}, persist.read_metadata(trained[0])["normalizer"], {})
    with pytest.raises(persist.ModelError, match="lstm model reads 4 inputs"):
        Scorer.load(tmp_path)
    scorer = Scorer.load(trained[0])
    X, mask, S, lengths, _ = _batch(trained[1], 5)
    with pytest.raises(ValueError, match="start_ts"):
        scorer.score(X, mask, S, lengths, None)
    with pytest.raises(ValueError, match=rf"\[n, {features.N_FEATURES}\]"):
        scorer.score(X[:, :5], mask[:, :5], S, lengths, None)


def test_levels_and_combine() -> None:
    assert [ensemble.level(r) for r in (0.0, 0.29, 0.3, 0.59, 0.6, 0.79, 0.8, 1.0)] == \
        ["low", "low", "moderate", "moderate", "high", "high", "critical", "critical"]
    assert list(ensemble.levels(np.array([0.1, 0.8, np.nan]))) == ["low", "critical", "unknown"]
    parts = np.array([[0.5, np.nan, 1.0], [np.nan, np.nan, np.nan]])
    risk = combine(parts, Weights())
    assert risk[0] == pytest.approx((0.4 * 0.5 + 0.25 * 1.0) / 0.65) and np.isnan(risk[1])
    with pytest.raises(ValueError):
        Weights(0, 0, 0)


def test_learned_weights_favour_the_informative_part_and_score_every_job() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.3).astype(float)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 3000), 0, 1)
    parts = np.stack([rng.random(3000), np.where(rng.random(3000) < 0.5, good, np.nan), rng.random(3000)], 1)
    weights, cv = ensemble.learn_weights(parts, y, step=0.1)
    assert weights.lstm >= 0.6 and weights.gnn + weights.autoencoder > 0  # LSTM alone would leave jobs unscored
    assert cv["cv_auc"] > cv["default_cv_auc"]
    with pytest.raises(ValueError, match="both"):
        ensemble.learn_weights(parts, np.zeros(3000))


def same_factors(a: list[dict], b: list[dict]) -> bool:
    """Equal factor lists, numbers equal to float32 precision."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] if isinstance(x[k], str) else
                                     np.isclose(x[k], y[k], rtol=1e-5, atol=1e-6) for k in x)
        for x, y in zip(a, b, strict=True))


def test_auc_standard_error_shrinks_with_the_counts() -> None:
    # Hanley & McNeil (1982), table II: AUC 0.8 with 50 and 50 cases has SE about 0.044
    assert ensemble.auc_standard_error(0.8, 50, 50) == pytest.approx(0.044, abs=0.001)
    assert ensemble.auc_standard_error(0.8, 250, 250) < ensemble.MAX_AUC_SE < ensemble.auc_standard_error(0.8, 200, 200)
    assert ensemble.auc_standard_error(0.8, 0, 100) == float("inf")


def _validation(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Parts where only the GNN column knows the label (the autoencoder is noise)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    gnn = np.clip(y * 0.5 + rng.normal(0.25, 0.2, n), 0, 1)
    return np.stack([gnn, np.full(n, np.nan), rng.random(n)], 1), y


def test_weights_are_learned_only_on_a_validation_split_large_enough_to_trust() -> None:
    config = Weights(0.4, 0.35, 0.25)
    parts, y = _validation(4000)
    big = ensemble.choose_weights(parts, y, None, config)
    assert big.source == "learned" and big.weights.gnn > big.weights.autoencoder
    assert big.detail["cv_auc"] >= big.detail["default_cv_auc"] and big.detail["auc_se"] <= ensemble.MAX_AUC_SE
    small = ensemble.choose_weights(parts[:150], y[:150], None, config)
    assert small.source == "config" and small.weights == config and small.learned is None
    assert "too small" in small.reason and small.detail["auc_se"] > ensemble.MAX_AUC_SE
    # job counts come from the example weights (four ticks of one job weigh 1/4 each)
    ticks = ensemble.choose_weights(np.repeat(parts[:400], 4, 0), np.repeat(y[:400], 4), np.full(1600, 0.25), config)
    assert ticks.detail["validation_failed_jobs"] + ticks.detail["validation_completed_jobs"] == pytest.approx(400)
    forced = ensemble.choose_weights(parts[:150], y[:150], None, config, mode="learned")
    assert forced.source == "learned"
    assert ensemble.choose_weights(parts, y, None, config, mode="config").weights == config


def test_learned_weights_that_lose_in_cross_validation_are_not_used() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(4000) < 0.4).astype(float)
    # both parts equally informative and independent: no mix beats the even one the config gives
    a, b = (np.clip(y * 0.4 + rng.normal(0.3, 0.25, 4000), 0, 1) for _ in range(2))
    choice = ensemble.choose_weights(np.stack([a, np.full(4000, np.nan), b], 1), y, None, Weights(0.5, 0, 0.5))
    assert choice.source == "config" and "cross-validation" in choice.reason and choice.learned is not None
    assert choice.detail["cv_auc"] < choice.detail["default_cv_auc"]
