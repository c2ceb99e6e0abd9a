"""Model files in the models directory: write atomically, load safely.

Layout (``cfg.paths().models_dir``, default ``$XDG_DATA_HOME/nomade/models``)::

    gnn_model.pt  lstm_model.pt  autoencoder_model.pt   one per trained model
    ensemble_weights.json                               learned weights (optional)
    metadata.json                                       written last: what is there

Each ``.pt`` file is self-contained: ``{"format", "kind", "nomade_version",
"torch_version", "normalizer" (features.Normalizer.to_dict()), "model"
(estimator.to_state())}``, only tensors and plain containers, so it loads with
``torch.load(..., weights_only=True)``; a model trained alone later keeps working
beside older ones. ``metadata.json`` records, per model, its file's SHA-256, when and
on what it was trained, its hyper-parameters and metrics; a loader refuses a file
whose hash is not recorded or does not match (a crash between two renames, a copied-in
file), and, since unpickling is code the agent runs, a model file, ``metadata.json`` or
models directory that another user owns (root excepted) or that group or others may
write (``check_private``).

Every file is written to a temporary name in the same directory and renamed over the
old one; ``metadata.json`` goes last, so a reader sees either the old set or the new.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import nomade
from nomade.errors import NomadeError
from nomade.ml.ensemble import Weights
from nomade.ml.models import AutoencoderScorer, GNNClassifier, LSTMClassifier

FORMAT = 1
FILES: dict[str, str] = {"gnn": "gnn_model.pt", "lstm": "lstm_model.pt", "autoencoder": "autoencoder_model.pt"}
ESTIMATORS: dict[str, type] = {"gnn": GNNClassifier, "lstm": LSTMClassifier, "autoencoder": AutoencoderScorer}
WEIGHTS_FILE = "ensemble_weights.json"
METADATA_FILE = "metadata.json"
Model = GNNClassifier | LSTMClassifier | AutoencoderScorer


class ModelError(NomadeError):
    """Model files are missing, unreadable, inconsistent or of another format."""


class VersionWarning(UserWarning):
    """The models were written by another nomade or torch version."""


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_plain) + "\n").encode()


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays in metadata → plain Python (json.dumps ``default``)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def clean_json(obj: Any) -> Any:
    """NaN/inf → None, recursively (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return _plain(obj) if hasattr(obj, "tolist") else obj


def read_metadata(models_dir: str | Path) -> dict[str, Any]:
    """``metadata.json`` as a dict ({} if there is none); ``ModelError`` if unreadable."""
    path = Path(models_dir) / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read model metadata ({e}); retrain with `nomade train`") from e
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ModelError(f"{path}: not a NØMADE model metadata file; retrain with `nomade train`")
    return data


def save(models_dir: str | Path, models: Mapping[str, Model], normalizer: Mapping[str, Any],
         info: Mapping[str, Mapping[str, Any]], weights: Weights | None = None,
         summary: Mapping[str, Any] | None = None,
         reference: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
         weights_source: str = "learned") -> dict[str, Any]:
    """Write ``models`` (kind → fitted estimator), each with ``normalizer`` and its
    ``info[kind]`` (metrics, data range, ...) recorded in the metadata; models of
    other kinds already in the directory are kept. ``weights`` replace
    ``ensemble_weights.json``, which says where they came from (``weights_source``:
    ``learned``, or ``pinned`` for weights chosen with the models, as the
    starter's). ``extra``: more top-level metadata keys (e.g. the
    decision against the starter model). Returns the metadata written."""
    out = Path(models_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_metadata(out) if (out / METADATA_FILE).exists() else {}
    entries = dict(meta.get("models", {}))
    now = time.time()
    for kind, model in models.items():
        blob = {"format": FORMAT, "kind": kind, "nomade_version": nomade.__version__,
                "torch_version": str(torch.__version__), "normalizer": dict(normalizer),
                "model": model.to_state()}
        path = out / FILES[kind]
        with tempfile.TemporaryFile() as f:
            torch.save(blob, f)
            f.seek(0)
            data = f.read()
        _atomic_write(path, data)
        entries[kind] = {"file": FILES[kind], "sha256": hashlib.sha256(data).hexdigest(),
                         "trained_ts": now, "hyper_parameters": model.get_params(),
                         "best_epoch": model.best_epoch_, **info.get(kind, {})}
    if weights is not None:
        _atomic_write(out / WEIGHTS_FILE, _json_bytes({**weights.as_dict(), "learned_ts": now,
                                                       "source": weights_source}))
    meta = {"format": FORMAT, "nomade_version": nomade.__version__, "torch_version": str(torch.__version__),
            "created_ts": now, "features": list(normalizer.get("features", [])),
            "normalizer": dict(normalizer), "models": entries,
            "training_data": dict(summary or meta.get("training_data", {})),
            "reference": dict(reference or meta.get("reference", {})), **dict(extra or {})}
    _atomic_write(out / METADATA_FILE, _json_bytes(clean_json(meta)))
    return meta


def load_weights(models_dir: str | Path, default: Weights) -> tuple[Weights, str]:
    """The weights of ``ensemble_weights.json`` if it exists, else ``default``; with
    where they came from (the file's ``source``, ``"learned"`` by default, or
    ``"config"``)."""
    path = Path(models_dir) / WEIGHTS_FILE
    try:
        data = json.loads(path.read_text())
        return Weights.from_dict(data), str(data.get("source", "learned"))
    except FileNotFoundError:
        return default, "config"
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable ensemble weights ({e}); delete it or rerun "
                         "`nomade train --learn-weights`") from e


def load_model(models_dir: str | Path, kind: str, meta: Mapping[str, Any] | None = None
               ) -> tuple[Model, dict[str, Any]]:
    """One estimator and the normaliser dict it was trained with. ``ModelError`` when
    the file is missing, corrupt, of another format or shape, or does not match the
    metadata's hash; ``VersionWarning`` when written by another nomade/torch."""
    meta = read_metadata(models_dir) if meta is None else meta
    path = Path(models_dir) / FILES[kind]
    check_private(Path(models_dir))
    if (Path(models_dir) / METADATA_FILE).exists():
        check_private(Path(models_dir) / METADATA_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ModelError(f"{path}: cannot read the {kind} model ({e.strerror or e}); "
                         "train it with `nomade train`") from e
    with os.fdopen(fd, "rb") as f:
        check_private(path, os.fstat(f.fileno()))
        data = f.read()
    expected = meta.get("models", {}).get(kind, {}).get("sha256")
    if not isinstance(expected, str):
        raise ModelError(f"{path}: {METADATA_FILE} records no SHA-256 for the {kind} model; "
                         "retrain with `nomade train`")
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelError(f"{path}: does not match {METADATA_FILE} (changed after training or "
                         "a training run was interrupted); retrain with `nomade train`")
    blob = _unpickle(path, data)
    if not isinstance(blob, dict) or blob.get("kind") != kind or blob.get("format") != FORMAT:
        raise ModelError(f"{path}: not a NØMADE {kind} model of format {FORMAT}; retrain with `nomade train`")
    _warn_versions(path, blob)
    try:
        return ESTIMATORS[kind].from_state(blob["model"]), dict(blob["normalizer"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ModelError(f"{path}: the {kind} model does not fit this nomade ({type(e).__name__}: "
                         f"{str(e)[:200]}); retrain with `nomade train`") from e


def check_private(path: Path, info: os.stat_result | None = None) -> None:
    """``ModelError`` unless ``path`` (``info``: its fstat) is owned by this user or root
    and not writable by group or others: whoever may write it chooses what the agent runs."""
    if info is None:
        try:
            info = path.stat()
        except OSError as e:
            raise ModelError(f"{path}: cannot check ({e.strerror or e})") from e
    if info.st_uid not in (os.geteuid(), 0):
        raise ModelError(f"{path}: owned by uid {info.st_uid}, not by this user ({os.geteuid()}) "
                         "or root; refusing to load models others control")
    if info.st_mode & 0o022:
        raise ModelError(f"{path}: writable by group or others (mode {info.st_mode & 0o777:o}); "
                         f"chmod go-w {path}")


def _unpickle(path: Path, data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelError(f"{path}: corrupt or not a plain-tensor torch file ({type(e).__name__}: {first}); "
                         "retrain with `nomade train`") from e


def _warn_versions(path: Path, blob: Mapping[str, Any]) -> None:
    ours = {"nomade": nomade.__version__, "torch": str(torch.__version__)}
    theirs = {"nomade": blob.get("nomade_version"), "torch": blob.get("torch_version")}
    diff = [f"{k} {theirs[k]} (running {ours[k]})" for k in ours if theirs[k] != ours[k]]
    if diff:
        warnings.warn(f"{path} was written by {', '.join(diff)}; retrain if scores look wrong",
                      VersionWarning, stacklevel=3)


AGENT_STATE_FILE = "agent_state.json"
"""Written by a running agent next to its store (``cfg.paths().db_path.parent``)."""


def write_agent_state(state_dir: str | Path, models_dir: str | Path, model_version: str | None,
                      pid: int | None = None, which: str | None = None, reason: str | None = None) -> None:
    """Record which model set a running agent has loaded (``model_version`` =
    ``Scorer.version``, None when it runs without models; ``which``: "site" or
    "starter", and why), atomically."""
    state = {"pid": os.getpid() if pid is None else pid, "models_dir": str(models_dir),
             "model_version": model_version, "updated_ts": time.time(), "which": which, "reason": reason}
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(state_dir) / AGENT_STATE_FILE, _json_bytes(state))


def read_agent_state(state_dir: str | Path) -> dict[str, Any] | None:
    """The agent state with ``running`` (its pid exists on this host), or None if
    no agent ever wrote one here or the file is unreadable."""
    try:
        state = json.loads((Path(state_dir) / AGENT_STATE_FILE).read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
        running = True
    except ProcessLookupError:
        running = False
    except PermissionError:
        running = True
    return {**state, "running": running}


def trained_age_days(meta: Mapping[str, Any], now: float) -> float | None:
    """Days since the OLDEST model in ``meta`` was trained (None: no model, or no
    training time recorded): the set is as stale as its stalest part."""
    times = [e.get("trained_ts") for e in meta.get("models", {}).values()]
    known = [float(t) for t in times if isinstance(t, (int, float))]
    return (now - min(known)) / 86400 if known else None


def retrain_due(meta: Mapping[str, Any], interval_days: float, now: float) -> bool:
    """True when there is no trained model or the oldest is older than ``interval_days``."""
    age = trained_age_days(meta, now)
    return age is None or age > interval_days


def model_version(meta: Mapping[str, Any]) -> str | None:
    """The identifier of a model set: its metadata's creation time; None if empty."""
    ts = meta.get("created_ts")
    return None if ts is None else f"{float(ts):.3f}"
