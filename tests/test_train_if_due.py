"""``nomade train --if-due``: what a daily timer runs. It trains when there is no model
or the models are older than ``[ml] retrain_interval_days``, on data prepared afresh,
and otherwise does nothing and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nomade.ml import persist


def _nomade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nomade", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def _config(path: Path, interval_days: float) -> None:
    path.write_text(f"[ml]\nsequence_length = 8\nretrain_interval_days = {interval_days}\n"
                    "[ml.training]\nepochs = 2\npatience = 1\n")


def _trained_ts(models_dir: Path) -> dict[str, float]:
    return {k: e["trained_ts"] for k, e in persist.read_metadata(models_dir)["models"].items()}


@pytest.mark.slow
def test_if_due_trains_only_when_the_models_are_missing_or_old(tmp_path: Path) -> None:
    cfg = tmp_path / "nomade.toml"
    _config(cfg, 7)
    env = {**os.environ, "NOMADE_CONFIG": str(cfg), "XDG_DATA_HOME": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1"}
    models_dir = tmp_path / "data" / "nomade" / "models"
    source = ("--synthetic", "200", "--model", "gnn", "--quiet")

    first = _nomade("train", "--if-due", *source, env=env)        # no model yet: due
    assert first.returncode == 0, first.stderr
    before = _trained_ts(models_dir)
    assert set(before) == {"gnn"}

    fresh = _nomade("train", "--if-due", *source, env=env)        # just trained: not due
    assert fresh.returncode == 0, fresh.stderr
    assert "not due" in fresh.stderr and "retrain_interval_days = 7" in fresh.stderr
    assert fresh.stdout == "" and _trained_ts(models_dir) == before

    _config(cfg, 1e-9)                                              # every model is now old
    due = _nomade("train", "--if-due", *source, env=env)
    assert due.returncode == 0, due.stderr
    after = _trained_ts(models_dir)
    assert after["gnn"] > before["gnn"] and "ensemble" in due.stdout


def test_retrain_due_is_judged_by_the_oldest_model() -> None:
    day = 86400.0
    meta = {"models": {"gnn": {"trained_ts": 10 * day}, "lstm": {"trained_ts": 2 * day}}}
    assert persist.trained_age_days(meta, 12 * day) == pytest.approx(10.0)
    assert persist.retrain_due(meta, 7, 12 * day) and not persist.retrain_due(meta, 11, 12 * day)
    assert persist.retrain_due({}, 7, 0.0) and persist.trained_age_days({"models": {}}, 0.0) is None
