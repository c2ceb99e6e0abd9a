"""Model files: save→load scores identically, plain-tensor files, atomic set, and a
clear ModelError (never a traceback-worthy crash) for broken or foreign files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import nomade
from nomade import features
from nomade.ml import persist
from nomade.ml.ensemble import Weights
from nomade.ml.models import AutoencoderScorer, GNNClassifier, LSTMClassifier, Neighbours, Reference

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted() -> dict:
    rng = np.random.default_rng(0)
    n = 200
    X = rng.normal(size=(n, 17)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(np.float32)
    idx = rng.integers(0, n, (n, 4))
    nb = Neighbours(idx, rng.random((n, 4)).astype(np.float32), rng.random((n, 4)) < 0.7)
    ref = Reference.build(X, y, np.arange(n, dtype=float), nb)
    S = rng.normal(size=(n, 5, 11)).astype(np.float32)
    L = rng.integers(0, 6, n)
    mask = np.ones((n, 17), bool)
    models = {"gnn": GNNClassifier(hidden_dim=8, out_dim=4, epochs=2).fit(ref, X, nb, y),
              "lstm": LSTMClassifier(hidden_dim=8, out_dim=4, epochs=2).fit(S, L, y),
              "autoencoder": AutoencoderScorer(epochs=2).fit(X, mask, y)}
    norm = features.Normalizer().fit(X, mask).to_dict()
    return {"models": models, "norm": norm, "X": X, "nb": nb, "S": S, "L": L, "mask": mask}


def _scores(models: dict, d: dict) -> list[np.ndarray]:
    return [models["gnn"].predict_proba(d["X"], d["nb"]), models["lstm"].predict_proba(d["S"], d["L"]),
            models["autoencoder"].score(d["X"], d["mask"])]


def test_save_then_load_gives_identical_scores(tmp_path: Path, fitted: dict) -> None:
    meta = persist.save(tmp_path, fitted["models"], fitted["norm"], {"gnn": {"graph": {"k": 4}}},
                        Weights(0.5, 0.3, 0.2), {"jobs": 200})
    loaded = {k: persist.load_model(tmp_path, k)[0] for k in persist.FILES}
    for a, b in zip(_scores(fitted["models"], fitted), _scores(loaded, fitted), strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    assert persist.load_model(tmp_path, "gnn")[1] == fitted["norm"]
    assert meta["models"]["gnn"]["graph"] == {"k": 4}
    on_disk = json.loads((tmp_path / "metadata.json").read_text())
    assert on_disk["nomade_version"] == nomade.__version__ and on_disk["features"] == list(features.FEATURES)
    assert on_disk["training_data"] == {"jobs": 200}
    assert persist.load_weights(tmp_path, Weights()) == (Weights(0.5, 0.3, 0.2), "learned")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*persist.FILES.values(), "ensemble_weights.json",
                                                                 "metadata.json"])  # no temp files left


def test_files_are_plain_tensors(tmp_path: Path, fitted: dict) -> None:
    persist.save(tmp_path, fitted["models"], fitted["norm"], {})
    for name in persist.FILES.values():
        blob = torch.load(tmp_path / name, weights_only=True)
        assert blob["format"] == persist.FORMAT
        assert all(isinstance(v, torch.Tensor) for v in blob["model"]["state_dict"].values())


def test_training_one_model_keeps_the_others(tmp_path: Path, fitted: dict) -> None:
    persist.save(tmp_path, fitted["models"], fitted["norm"], {})
    before = json.loads((tmp_path / "metadata.json").read_text())["models"]["lstm"]
    persist.save(tmp_path, {"gnn": fitted["models"]["gnn"]}, fitted["norm"], {})
    after = json.loads((tmp_path / "metadata.json").read_text())["models"]
    assert set(after) == set(persist.FILES) and after["lstm"] == before
    persist.load_model(tmp_path, "lstm")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "swapped"])
def test_broken_files_give_a_model_error(tmp_path: Path, fitted: dict, damage: str) -> None:
    persist.save(tmp_path, fitted["models"], fitted["norm"], {})
    path = tmp_path / persist.FILES["gnn"]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif damage == "missing":
        path.unlink()
    else:
        path.write_bytes((tmp_path / persist.FILES["lstm"]).read_bytes())
    with pytest.raises(persist.ModelError, match="gnn_model.pt"):
        persist.load_model(tmp_path, "gnn")


def _record_hash(models_dir: Path, kind: str) -> None:
    """Record the file's hash in the metadata, as a trusted trainer would."""
    import hashlib
    import json

    meta_path = models_dir / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"models": {}}
    data = (models_dir / persist.FILES[kind]).read_bytes()
    meta["models"][kind] = {"file": persist.FILES[kind], "sha256": hashlib.sha256(data).hexdigest()}
    meta_path.write_text(json.dumps(meta))


def test_foreign_content_is_refused(tmp_path: Path, fitted: dict) -> None:
    persist.save(tmp_path, {"lstm": fitted["models"]["lstm"]}, fitted["norm"], {})
    (tmp_path / persist.FILES["gnn"]).write_bytes((tmp_path / persist.FILES["lstm"]).read_bytes())
    with pytest.raises(persist.ModelError, match="records no SHA-256"):   # nothing unpickled
        persist.load_model(tmp_path, "gnn")
    (tmp_path / "metadata.json").unlink()
    with pytest.raises(persist.ModelError, match="records no SHA-256"):
        persist.load_model(tmp_path, "gnn")
    _record_hash(tmp_path, "gnn")
    with pytest.raises(persist.ModelError, match="not a NØMADE gnn model"):
        persist.load_model(tmp_path, "gnn")
    torch.save({"format": 1, "kind": "gnn", "model": {"params": {}}, "normalizer": {}}, tmp_path / "gnn_model.pt")
    _record_hash(tmp_path, "gnn")
    with pytest.raises(persist.ModelError, match="does not fit"), pytest.warns(persist.VersionWarning):
        persist.load_model(tmp_path, "gnn")


@pytest.mark.parametrize("what", ["model", "metadata", "directory"])
def test_files_others_may_write_are_refused(tmp_path: Path, fitted: dict, what: str) -> None:
    models = tmp_path / "models"
    persist.save(models, {"lstm": fitted["models"]["lstm"]}, fitted["norm"], {})
    target = {"model": models / persist.FILES["lstm"], "metadata": models / "metadata.json",
              "directory": models}[what]
    target.chmod(target.stat().st_mode | 0o002)
    with pytest.raises(persist.ModelError, match="writable by group or others"):
        persist.load_model(models, "lstm")
    target.chmod(target.stat().st_mode & ~0o022)
    persist.load_model(models, "lstm")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_model_file_of_another_user_is_refused(tmp_path: Path, fitted: dict) -> None:
    persist.save(tmp_path, {"lstm": fitted["models"]["lstm"]}, fitted["norm"], {})
    os.chown(tmp_path / persist.FILES["lstm"], 65534, 65534)
    with pytest.raises(persist.ModelError, match="owned by uid 65534"):
        persist.load_model(tmp_path, "lstm")


def test_a_symlinked_model_file_is_refused(tmp_path: Path, fitted: dict) -> None:
    persist.save(tmp_path, {"lstm": fitted["models"]["lstm"]}, fitted["norm"], {})
    path = tmp_path / persist.FILES["lstm"]
    path.rename(tmp_path / "real.pt")
    path.symlink_to(tmp_path / "real.pt")
    with pytest.raises(persist.ModelError, match="cannot read"):
        persist.load_model(tmp_path, "lstm")


def test_version_mismatch_warns(tmp_path: Path, fitted: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nomade, "__version__", "0.0.1")
    persist.save(tmp_path, {"autoencoder": fitted["models"]["autoencoder"]}, fitted["norm"], {})
    monkeypatch.undo()
    with pytest.warns(persist.VersionWarning, match="nomade 0.0.1"):
        persist.load_model(tmp_path, "autoencoder")


def test_bad_metadata_and_weights(tmp_path: Path) -> None:
    assert persist.read_metadata(tmp_path) == {}
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(persist.ModelError, match="metadata"):
        persist.read_metadata(tmp_path)
    (tmp_path / "ensemble_weights.json").write_text('{"gnn": "x"}')
    with pytest.raises(persist.ModelError, match="ensemble weights"):
        persist.load_weights(tmp_path, Weights())


def test_agent_state_round_trip(tmp_path: Path) -> None:
    assert persist.read_agent_state(tmp_path) is None
    persist.write_agent_state(tmp_path, "/m", "123.000")
    state = persist.read_agent_state(tmp_path)
    assert state is not None and state["running"] and state["model_version"] == "123.000"


def test_weights_say_where_they_came_from(tmp_path: Path) -> None:
    (tmp_path / persist.WEIGHTS_FILE).write_text('{"gnn": 1, "lstm": 2, "autoencoder": 0}')
    assert persist.load_weights(tmp_path, Weights()) == (Weights(1, 2, 0), "learned")   # files of before
    (tmp_path / persist.WEIGHTS_FILE).write_text('{"gnn": 1, "lstm": 2, "autoencoder": 0, "source": "pinned"}')
    assert persist.load_weights(tmp_path, Weights()) == (Weights(1, 2, 0), "pinned")
    assert persist.load_weights(tmp_path / "none", Weights()) == (Weights(), "config")
