"""The model set the agent scores with: the site's own models, or the starter model
shipped with nomade until they beat it (``nomade.ml.starter.choose``), loaded lazily and
again whenever the site's ``metadata.json`` changes. When there is none, or the files are
broken, the agent scores nothing and says why once per change of reason; ``nomade ml
status`` reads which set is in use from ``agent_state.json`` beside the store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from nomade.agent import scoring
from nomade.config import Config

log = logging.getLogger(__name__)

#: Most threads that run the tick's LSTM batches (one a usable CPU, up to this): the tick
#: blocks the agent's thread anyway, and a batch a worker needs no barrier between threads.
MAX_LSTM_WORKERS = 4


class ModelSet:
    """``current()`` is the scorer to use now, or None (the reason logged and exported as
    ``model_loaded`` 0 on ``metrics``)."""

    def __init__(self, cfg: Config, models_dir: str | Path, state_dir: Path, metrics: Any) -> None:
        self.cfg, self.models_dir, self.state_dir, self.metrics = cfg, models_dir, state_dir, metrics
        self.scorer: scoring.ScorerLike | None = None
        self.choice: Any = None   # nomade.ml.starter.Choice of the loaded set
        self._mtime: float | None = None
        self._watch = scoring.ModelWatch()

    def current(self) -> scoring.ScorerLike | None:
        """The loaded model set, (re)loaded when the site's metadata changes."""
        if not self.cfg.ml.enabled:
            return self._none("[ml] enabled = false")
        from nomade.ml import persist

        meta = Path(self.models_dir) / persist.METADATA_FILE
        try:
            mtime: float | None = meta.stat().st_mtime
        except OSError:
            mtime = None
        if self.scorer is None or mtime != self._mtime:
            self._mtime = mtime
            try:
                self.scorer = self._load()
            except Exception as e:  # broken or half-written files: say so, retry on change
                self.scorer = None
                return self._none(f"{self.models_dir}: {e}")
            if self.scorer is None:
                return self._none(f"no {meta}, and no starter model ([ml] starter); run `nomade train`")
        self._said(None)
        return self.scorer

    def _load(self) -> scoring.ScorerLike | None:
        """The chosen model set loaded (None: there is none), its choice logged."""
        import torch

        from nomade.ml import starter
        from nomade.ml.ensemble import Weights
        from nomade.ml.inference import Scorer

        shipped = starter.starter_dir_of(self.cfg)
        choice = starter.choose(self.models_dir, shipped)
        if choice.which == "none":
            return None
        # Scorer.score runs each op on one thread; this sets its LSTM workers (nomade.ml.inference)
        torch.set_num_threads(max(1, min(MAX_LSTM_WORKERS, len(os.sched_getaffinity(0)))))
        e = self.cfg.ml.ensemble
        weights = Weights(e.gnn_weight, e.lstm_weight, e.autoencoder_weight)
        try:
            scorer = Scorer.load(choice.models_dir, weights)
        except Exception as err:  # e.g. the site's models predate the features: the starter meanwhile
            if choice.which != "site" or shipped is None or not starter.has_models(shipped):
                raise
            choice = starter.Choice(shipped, "starter", f"the starter model: the site's models in "
                                    f"{choice.models_dir} cannot be loaded ({err})")
            scorer = Scorer.load(choice.models_dir, weights)
        self.choice = choice
        log.info("models in use: %s", choice.reason)
        return scorer

    def _none(self, reason: str) -> None:
        self.scorer = None
        self._said(reason)
        return None

    def _said(self, reason: str | None) -> None:
        line = self._watch.update(reason)
        self.metrics.model_loaded = int(reason is None)
        if line is not None:
            (log.info if reason is None else log.warning)(line)
            self._write_state()

    def _write_state(self) -> None:
        """Tell `nomade ml status` (agent_state.json beside the store) which models are in use."""
        from nomade.ml import persist

        version = self.scorer.version if self.scorer is not None else None
        choice = self.choice if self.scorer is not None else None
        try:
            persist.write_agent_state(self.state_dir, self.models_dir if choice is None else choice.models_dir,
                                      version, which=None if choice is None else choice.which,
                                      reason=None if choice is None else choice.reason)
        except OSError as e:
            log.warning("cannot record the agent state beside the store: %s", e)
