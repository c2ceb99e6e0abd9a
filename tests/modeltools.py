"""Small real models for tests that need a ``Scorer`` (not a test module)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nomade import config


def train_small_models(out: Path, seed: int) -> Path:
    """Train all three models (2 epochs, batch 256) on 600 synthetic jobs of ``seed``
    into ``out``; returns ``out``. The size, not the quality, is what the callers need."""
    import torch

    from nomade.ml import train

    torch.set_num_threads(1)
    cfg = config.Config()
    cfg = dataclasses.replace(cfg, ml=dataclasses.replace(cfg.ml, training=dataclasses.replace(
        cfg.ml.training, epochs=2, patience=1, batch_size=256)))
    jobs, samples = train.synthetic_tables(600, seed=seed)
    train.fit_and_save(train.prepare(jobs, samples, 30.0, 8), cfg, out)
    return out
