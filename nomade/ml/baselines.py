"""Plain baselines and the evaluation both they and the ensemble are judged by.

``time_split`` orders examples by time and cuts 80/10/10; ``evaluate`` gives AUC-ROC,
AUC-PR (average precision), precision/recall/F1 at a threshold (``nomade.ml.metrics``).
``LogisticBaseline`` and ``BoostingBaseline`` wrap scikit-learn (the ``eval`` extra,
imported inside ``fit``) behind ``fit(X, y, weight) -> self`` / ``predict_proba(X)``.

Run on SWF traces (start-time features, time-ordered split)::

    python -m nomade.ml.baselines ../shared/data/traces/*.swf.gz
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nomade.ml import metrics


def time_split(ts: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the train, validation and test parts: examples ordered by ``ts``
    (stable; NaN times are left out), earliest ``fractions[0]`` first."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ts = np.asarray(ts, dtype=np.float64)
    order = np.flatnonzero(np.isfinite(ts))
    order = order[np.argsort(ts[order], kind="stable")]
    a = int(round(fractions[0] * len(order)))
    b = int(round((fractions[0] + fractions[1]) * len(order)))
    return order[:a], order[a:b], order[b:]


@dataclass(frozen=True)
class Metrics:
    """Scores of probabilities against 0/1 labels; NaN where undefined (:mod:`nomade.ml.metrics`)."""

    n: int
    positives: int
    auc_roc: float
    auc_pr: float
    precision: float
    recall: float
    f1: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float = 0.5,
             weight: np.ndarray | None = None) -> Metrics:
    """All the scores of DESIGN "Evaluation" for probabilities ``p`` of failure
    (:mod:`nomade.ml.metrics`; ValueError on labels other than 0/1 or lengths that differ)."""
    precision, recall, f1 = metrics.precision_recall_f1(y, p, threshold, weight)
    return Metrics(int(np.size(y)), int(np.sum(np.asarray(y) == 1)), metrics.auc_roc(y, p, weight),
                   metrics.auc_pr(y, p, weight), precision, recall, f1, float(threshold))


class _SklearnBaseline:
    """fit/predict_proba over a scikit-learn classifier built in ``fit``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _make(self) -> Any:
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> _SklearnBaseline:
        """Train on ``X`` (normalised features) and 0/1 ``y``; returns self."""
        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            raise ValueError("training labels must contain both classes")
        self.model_ = self._make().fit(np.asarray(X, np.float64), y.astype(np.int64), sample_weight=weight)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of failure per row, float64[n]."""
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")
        return self.model_.predict_proba(np.asarray(X, np.float64))[:, 1]


class LogisticBaseline(_SklearnBaseline):
    """Logistic regression, scikit-learn defaults (L2, C=1) with enough iterations."""

    def _make(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(max_iter=1000)


class BoostingBaseline(_SklearnBaseline):
    """Histogram gradient boosting, scikit-learn defaults, seeded."""

    def _make(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier
        return HistGradientBoostingClassifier(random_state=self.seed)


BASELINES = {"logistic_regression": LogisticBaseline, "gradient_boosting": BoostingBaseline}


def inputs(Xn: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What a baseline reads: the normalised features and the mask of which are known."""
    return np.concatenate([Xn, np.asarray(mask).astype(np.float32)], axis=1)


@dataclass
class _Risk:
    risk: np.ndarray


class BaselineScorer:
    """A fitted baseline with the scorer interface ``nomade.ml.replay`` needs, so it is
    replayed tick by tick as the models are: the raw as-of features normalised by the
    models' ``Normalizer`` (``norm.transform(X, mask)``), as it was fitted on them."""

    def __init__(self, name: str, model: _SklearnBaseline, norm: Any) -> None:
        self.name, self.model, self.norm = name, model, norm
        self.models: dict[str, Any] = {}

    def score(self, X: np.ndarray, mask: np.ndarray, S: np.ndarray | None = None,
              lengths: np.ndarray | None = None, start_ts: np.ndarray | None = None,
              explain: bool = False, neighbours: Any = None) -> _Risk:
        """The baseline's probability of failure of each row as its risk."""
        if not len(X):
            return _Risk(np.zeros(0))
        return _Risk(self.model.predict_proba(inputs(self.norm.transform(X, mask), mask)))

    def neighbours(self, X: np.ndarray, mask: np.ndarray, start_ts: np.ndarray | None) -> Any:
        raise ValueError("a baseline has no graph neighbours")


def run_baselines(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                  threshold: float = 0.5, seed: int = 0) -> dict[str, Metrics]:
    """Fit every baseline on the training part and score it on the test part."""
    return {name: evaluate(y_test, cls(seed).fit(X_train, y_train).predict_proba(X_test), threshold)
            for name, cls in BASELINES.items()}


def start_time_dataset(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A trace's jobs as of their start: (X normalised by the train part, y, start ts),
    rows in trace order; only labelled, started jobs."""
    from nomade.features import Normalizer, SampleTable, asof_features
    from nomade.traces import read_swf

    jobs = read_swf(path).jobs
    ok = np.flatnonzero(np.isfinite(jobs.label) & np.isfinite(jobs.start_ts))
    X, mask = asof_features(jobs, SampleTable.empty(), jobs.start_ts[ok], rows=ok)
    train, _, _ = time_split(jobs.start_ts[ok])
    Z = Normalizer().fit(X[train], mask[train]).transform(X, mask)
    return np.concatenate([Z, mask.astype(np.float32)], axis=1), jobs.label[ok], jobs.start_ts[ok]


def main(argv: list[str] | None = None) -> int:
    """Print each baseline's test scores on each SWF trace (80/10/10 by start time)."""
    parser = argparse.ArgumentParser(prog="python -m nomade.ml.baselines", description=main.__doc__)
    parser.add_argument("traces", nargs="+", help="SWF files (.gz ok)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    out = {}
    for path in args.traces:
        X, y, ts = start_time_dataset(path)
        train, _, test = time_split(ts)
        out[path] = {k: m.as_dict() for k, m in run_baselines(X[train], y[train], X[test], y[test]).items()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for path, rows in out.items():
        print(path)
        for name, m in rows.items():
            print(f"  {name:20s} AUC-ROC {m['auc_roc']:.3f}  AUC-PR {m['auc_pr']:.3f}  "
                  f"P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                  f"(test n={m['n']}, failed={m['positives']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
