"""Baselines, metrics and the time-ordered split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nomade.ml import metrics
from nomade.ml.baselines import BoostingBaseline, LogisticBaseline, evaluate, main, run_baselines, time_split
from nomade.ml.metrics import auc_pr, auc_roc

skm = pytest.importorskip("sklearn.metrics")


@pytest.fixture(autouse=True)
def one_thread():
    """OpenMP threads on a shared 2-core machine make boosting 8x slower."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        yield


@pytest.mark.parametrize("seed", range(4))
def test_aucs_agree_with_scikit_learn_including_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(500) < 0.3).astype(float)
    p = np.round(rng.random(500) * 0.6 + 0.4 * y, 1)  # coarse: many ties
    w = rng.uniform(0.1, 2.0, 500)
    assert auc_roc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert auc_roc(y, p, w) == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w))
    assert auc_pr(y, p) == pytest.approx(skm.average_precision_score(y, p))
    assert auc_pr(y, p, w) == pytest.approx(skm.average_precision_score(y, p, sample_weight=w))


def test_evaluate_threshold_scores_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])
    m = evaluate(y, p, threshold=0.5)
    assert (m.n, m.positives) == (7, 3)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.auc_roc == pytest.approx(skm.roc_auc_score(y, p))
    assert json.dumps(m.as_dict())
    one_class = evaluate(np.zeros(3), np.array([0.1, 0.9, 0.2]))
    assert np.isnan(one_class.auc_roc) and np.isnan(one_class.recall) and one_class.precision == 0.0
    with pytest.raises(ValueError, match="0 or 1"):
        evaluate(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="one value per example"):
        evaluate(np.array([0, 1]), np.array([0.1]))


def test_evaluate_is_the_one_metrics_module_and_f1_without_a_warning_is_zero():
    """Baselines and models are judged by the same numbers; a model that warns of nothing
    while jobs fail gets F1 0 (scikit-learn's value too), not NaN that a comparison skips."""
    rng = np.random.default_rng(5)
    y, p, w = (rng.random(300) < 0.2).astype(float), rng.random(300), rng.uniform(0.5, 2, 300)
    m = evaluate(y, p, 0.6, w)
    assert {k: v for k, v in m.as_dict().items() if k != "positives"} == \
        {k: v for k, v in metrics.summary(y, p, 0.6, w).items() if k != "positives"}
    silent = evaluate(np.array([1, 0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.5)
    assert silent.f1 == 0.0 == skm.f1_score([1, 0, 1, 0], [0, 0, 0, 0], zero_division=0)
    assert silent.recall == 0.0 and np.isnan(silent.precision)
    assert np.isnan(evaluate(np.zeros(3), np.array([0.1, 0.2, 0.3])).f1)  # nothing to find, nothing said


def test_time_split_orders_by_time_and_drops_unknown():
    ts = np.array([5.0, 1.0, np.nan, 3.0, 2.0, 4.0, 9.0, 8.0, 7.0, 6.0, 0.0])
    train, val, test = time_split(ts)
    assert len(train) + len(val) + len(test) == 10 and 2 not in np.concatenate([train, val, test])
    assert ts[train].max() < ts[val].min() <= ts[val].max() < ts[test].min()
    assert ts[train].tolist() == sorted(ts[train].tolist())
    with pytest.raises(ValueError, match="fractions"):
        time_split(ts, (0.5, 0.5, 0.5))


def test_baselines_learn_a_signal_and_refuse_misuse():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=2000) > 0.6).astype(float)
    scores = run_baselines(X[:1500], y[:1500], X[1500:], y[1500:])
    assert set(scores) == {"logistic_regression", "gradient_boosting"}
    assert scores["logistic_regression"].auc_roc > 0.85
    assert scores["gradient_boosting"].auc_roc > 0.9
    p = LogisticBaseline().fit(X, y, weight=np.ones(2000)).predict_proba(X[:3])
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(RuntimeError, match="not fitted"):
        BoostingBaseline().predict_proba(X)
    with pytest.raises(ValueError, match="both classes"):
        LogisticBaseline().fit(X, np.zeros(2000))


def test_main_on_a_synthetic_trace(tmp_path, capsys):
    """Users who fail keep failing: the user-history features carry the signal."""
    rng = np.random.default_rng(1)
    lines, t = ["; UnixStartTime: 0"], 0.0
    bad_users = set(range(5))
    for i in range(1, 1201):
        t += rng.exponential(300)
        user = int(rng.integers(0, 20))
        failed = rng.random() < (0.7 if user in bad_users else 0.1)
        procs, limit = int(rng.choice([1, 4, 16])), int(rng.choice([600, 3600]))
        lines.append(f"{i} {t:.0f} 10 {rng.integers(10, 500)} {procs} -1 -1 {procs} {limit} -1 "
                     f"{0 if failed else 1} {user} 1 -1 -1 -1 -1 -1")
    path = tmp_path / "synthetic.swf"
    path.write_text("\n".join(lines) + "\n")
    assert main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)[str(path)]
    assert out["logistic_regression"]["auc_roc"] > 0.75
    assert out["gradient_boosting"]["auc_roc"] > 0.75
    assert out["logistic_regression"]["n"] == 120
    assert main([str(path)]) == 0
    assert "logistic_regression" in capsys.readouterr().out
