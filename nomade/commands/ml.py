"""``nomade ml status [--json]``: which models exist, when and on what they were
trained, how good they were on validation data, whether retraining is due, and
whether a running agent uses them.

Example::

    models in /home/ada/.local/share/nomade/models (set 1767001234.000, nomade 0.1.0, torch 2.13.0)
    model        trained           age   jobs   data                     val AUC  val F1
    gnn          2026-11-29 02:40  0.1d  80000  2026-10-01 .. 2026-11-28  0.931    0.801
    ...
    ensemble weights: gnn 0.40  lstm 0.35  autoencoder 0.25 (config)
    retraining: not due (interval 7 days)
    agent: pid 4242 running, uses this model set

The agent says what it loaded in ``agent_state.json`` beside its store
(``persist.write_agent_state``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from nomade.config import Config

NAME = "ml"
HELP = "state of the trained failure models (ml status)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ml status [--json] [--models-dir DIR]``."""
    actions = parser.add_subparsers(dest="ml_action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="which models exist, their training and validation metrics",
                                description=__doc__.split("\n\n", 1)[0])
    status.add_argument("--models-dir", metavar="DIR", help="models directory (default: [ml] models_dir)")
    status.add_argument("--json", action="store_true", help="print JSON")


def status(cfg: Config, models_dir: Path, now: float | None = None) -> dict[str, Any]:
    """The status as a JSON-ready dict (raises ``ModelError`` for unreadable metadata)."""
    from nomade.ml import persist
    from nomade.ml.ensemble import Weights
    now = time.time() if now is None else now
    meta = persist.read_metadata(models_dir)
    models = {}
    for kind, entry in meta.get("models", {}).items():
        val = entry.get("metrics", {}).get("validation", {})
        models[kind] = {"trained_ts": entry.get("trained_ts"), "age_days": (now - entry.get("trained_ts", now)) / 86400,
                        "data": entry.get("data", {}), "validation": val,
                        "test": entry.get("metrics", {}).get("test", {}),
                        "file_present": (models_dir / entry.get("file", "")).is_file()}
    default = Weights(cfg.ml.ensemble.gnn_weight, cfg.ml.ensemble.lstm_weight,
                              cfg.ml.ensemble.autoencoder_weight)
    weights, source = persist.load_weights(models_dir, default)
    due = persist.retrain_due(meta, cfg.ml.retrain_interval_days, now)
    version = persist.model_version(meta)
    from nomade.ml import starter
    choice = starter.choose(models_dir, starter.starter_dir_of(cfg))
    in_use = {"which": choice.which, "models_dir": str(choice.models_dir), "reason": choice.reason,
              "model_version": persist.model_version(persist.read_metadata(choice.models_dir)),
              "starter_comparison": meta.get(starter.COMPARISON)}
    agent = persist.read_agent_state(cfg.paths().db_path.parent)
    if agent is not None:
        agent["uses_this_set"] = agent.get("model_version") == version and version is not None
        agent["uses_chosen_set"] = agent.get("model_version") == in_use["model_version"] is not None
    return {"in_use": in_use, "models_dir": str(models_dir), "model_version": version,
            "nomade_version": meta.get("nomade_version"),
            "torch_version": meta.get("torch_version"), "models": models,
            "weights": weights.as_dict(), "weights_source": source,
            "retrain_interval_days": cfg.ml.retrain_interval_days, "retrain_due": due, "agent": agent}


def _day(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d", time.localtime(ts))


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def render(s: dict[str, Any]) -> str:
    """The status for people (see the module docstring)."""
    use = s["in_use"]
    head = f"in use: {use['reason']}" + (f" (set {use['model_version']})" if use["model_version"] else "")
    if not s["models"]:
        return (f"{head}\nno trained models of the site's own in {s['models_dir']}; run `nomade train --prepare` "
                "then `nomade train`" + _agent_line(s["agent"], use["model_version"]))
    lines = [head, (f"models in {s['models_dir']} (set {s['model_version']}, nomade {s['nomade_version']}, "
                    f"torch {s['torch_version']})"),
             f"{'model':<12} {'trained':<16}  {'age':>6}  {'jobs':>7}  {'data':<24}  {'val AUC':>7}  {'val F1':>6}"]
    for kind, m in s["models"].items():
        d = m["data"]
        trained = "-" if m["trained_ts"] is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(m["trained_ts"]))
        missing = "" if m["file_present"] else "  (file missing!)"
        lines.append(f"{kind:<12} {trained:<16}  {m['age_days']:>5.1f}d  {d.get('jobs') or '-':>7}  "
                     f"{_day(d.get('first_start_ts')) + ' .. ' + _day(d.get('last_end_ts')):<24}  "
                     f"{_num(m['validation'].get('auc_roc')):>7}  {_num(m['validation'].get('f1')):>6}{missing}")
    w = s["weights"]
    lines.append(f"ensemble weights: gnn {w['gnn']:.2f}  lstm {w['lstm']:.2f}  autoencoder {w['autoencoder']:.2f}"
                 f" ({s['weights_source']})")
    lines.append(f"retraining: {'DUE' if s['retrain_due'] else 'not due'} "
                 f"(interval {s['retrain_interval_days']:g} days)")
    return "\n".join(lines) + _agent_line(s["agent"], use["model_version"], s["model_version"])


def _agent_line(a: dict[str, Any] | None, chosen: str | None, site: str | None = None) -> str:
    """What the running agent reported it uses (agent_state.json)."""
    if a is None:
        return "\nagent: none has reported which models it uses"
    state = "running" if a["running"] else "not running"
    version = a.get("model_version")
    if version is not None and version == site:
        use = "uses the site's model set above"
    elif version is not None and version == chosen:
        use = "uses the model set in use above"
    else:
        use = f"uses model set {version}" + (f" ({a['which']})" if a.get("which") else "")
    return f"\nagent: pid {a['pid']} {state}, {use}"


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print the status; 0."""
    models_dir = Path(args.models_dir).expanduser() if args.models_dir else cfg.paths().models_dir
    s = status(cfg, models_dir)
    print(json.dumps(s, indent=2) if args.json else render(s))
    return 0
