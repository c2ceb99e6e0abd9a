"""The starter model: trained on the project's lab corpus, shipped in the package, used
until a site's own models beat it.

``nomade train --starter --db CORPUS`` writes it to :data:`STARTER_DIR` (package data,
``nomade/starter/``). :func:`choose` says which model set to load: the site's
(``[ml] models_dir``) when it has models and they did not lose to the starter, else
the starter, with the reason, for the agent's log, ``nomade predict`` and ``nomade ml
status``. :func:`compare` is what ``nomade train`` runs after training a site's models:
both sets score the site's validation examples (its recent jobs, which neither trained
on) and the site's ensemble must reach the starter's AUC-ROC there to take over; the
decision goes into the site's ``metadata.json`` (``starter_comparison``).

The GNN's reference jobs ship inside its model file, so the starter needs nothing of
the site but what any model reads live: the site's own running jobs and user history
(from the agent's store).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nomade.ml import persist

log = logging.getLogger(__name__)

STARTER_DIR = Path(__file__).resolve().parent.parent / "starter"
"""Where the shipped starter model lives (package data)."""
COMPARISON = "starter_comparison"
"""The key of the site's ``metadata.json`` that records the decision."""


@dataclass(frozen=True)
class Choice:
    """The model set to load: ``models_dir``, ``which`` ("site", "starter" or "none")
    and why, in words."""

    models_dir: Path
    which: str
    reason: str


def has_models(models_dir: Path) -> bool:
    """Whether ``models_dir`` holds a model set (``ModelError`` if its metadata is unreadable)."""
    return bool(persist.read_metadata(models_dir).get("models"))


def choose(models_dir: str | Path, starter_dir: str | Path | None = STARTER_DIR) -> Choice:
    """The site's models unless they lost to the starter on the site's validation jobs
    (or there are none); then the starter, if one is shipped (``starter_dir`` None: no
    starter, ``[ml] starter = false``)."""
    models_dir = Path(models_dir)
    starter = Path(starter_dir) if starter_dir is not None and has_models(Path(starter_dir)) else None
    if has_models(models_dir):
        verdict = persist.read_metadata(models_dir).get(COMPARISON)
        if starter is None or not verdict:
            return Choice(models_dir, "site", f"the site's own models in {models_dir}"
                          + ("" if starter else " (no starter model)"))
        if verdict.get("use") == "site":
            return Choice(models_dir, "site", f"the site's own models in {models_dir}: {_said(verdict)}")
        return Choice(starter, "starter", f"the starter model: the site's models in {models_dir} "
                      f"did not beat it ({_said(verdict)})")
    if starter is not None:
        return Choice(starter, "starter", f"the starter model shipped with nomade: no models of the "
                      f"site's own in {models_dir} yet")
    return Choice(models_dir, "none", f"no models in {models_dir} and no starter model")


def starter_dir_of(cfg: Any) -> Path | None:
    """The starter directory ``[ml] starter`` allows (None: off)."""
    return STARTER_DIR if cfg.ml.starter else None


def _said(verdict: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"
    return (f"validation AUC-ROC {num(verdict.get('site_auc'))} against the starter's "
            f"{num(verdict.get('starter_auc'))} on {verdict.get('jobs', '?')} recent jobs")


def compare(site_scores: np.ndarray, p: Any, starter_dir: str | Path = STARTER_DIR,
            default_weights: Any = None) -> dict[str, Any] | None:
    """The decision for a site's freshly trained models: their ensemble's scores of
    ``p``'s validation examples (``site_scores``) against the starter's scores of the
    same examples, by weighted AUC-ROC. ``p`` is the ``train.Prepared`` dataset.
    None when no starter is shipped or the validation split cannot rank (one class)."""
    from nomade import features
    from nomade.ml import metrics
    from nomade.ml.inference import START_PART, Scorer

    if not has_models(Path(starter_dir)):
        return None
    va = p.rows("validation")
    y, w = p.y[va], p.w[va]
    if len(np.unique(y)) < 2:
        return None
    scorer = Scorer.load(starter_dir, default_weights)
    step, length = scorer.grid
    S, lengths = _on_grid(p.S[va], p.lengths[va], length)
    if not np.isclose(step, features.GRID_STEP_S):
        S = lengths = None   # another time scale: the starter is judged without its LSTM
    start_X = p.ref_start_X[np.searchsorted(p.ref_job, p.job[va])]
    nbrs = None
    if "gnn" in scorer.models:
        nbrs = scorer.neighbours(start_X, np.broadcast_to(START_PART, start_X.shape), p.start_ts[va])
    starter = scorer.score(p.X[va], p.mask[va], S, lengths, p.start_ts[va], explain=False,
                           neighbours=nbrs).risk
    ok = np.isfinite(site_scores) & np.isfinite(starter)
    site_auc = metrics.auc_roc(y[ok], site_scores[ok], w[ok])
    starter_auc = metrics.auc_roc(y[ok], starter[ok], w[ok])
    use = "site" if site_auc >= starter_auc else "starter"
    verdict = {"use": use, "site_auc": float(site_auc), "starter_auc": float(starter_auc),
               "jobs": len(np.unique(p.job[va])), "examples": int(ok.sum()),
               "starter_version": scorer.version}
    log.info("site models against the starter on %d validation jobs: AUC-ROC %.3f against %.3f: using the %s's",
             verdict["jobs"], site_auc, starter_auc, use)
    return verdict


def _on_grid(S: np.ndarray, lengths: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences (left-padded) cut or padded on the left to ``length`` steps of the same grid."""
    T = S.shape[1]
    if T >= length:
        return S[:, T - length:], np.minimum(lengths, length)
    pad = np.full((len(S), length - T, S.shape[2]), np.nan, S.dtype)
    return np.concatenate([pad, S], axis=1), lengths
