"""``nomade config show [--json]``: the settings in effect and the file they come from.

The text form is valid TOML (comments name the source and the resolved paths), so it
can be saved and edited as a config file; ``--json`` gives
``{"source": ..., "config": {...}, "paths": {...}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from nomade.config import Config

NAME = "config"
HELP = "show the settings in effect and the file they come from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``config show [--json]``."""
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the effective config (TOML, or JSON with --json)",
                              description="Print the effective config and its source file. "
                                          "Empty paths are resolved at the end.")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print the effective config to stdout; returns 0."""
    print(render_json(cfg) if args.json else render_toml(cfg), end="")
    return 0


def source_text(cfg: Config) -> str:
    """Where ``cfg`` came from, for people."""
    return str(cfg.source) if cfg.source is not None else "built-in defaults (no config file)"


def resolved_paths(cfg: Config) -> dict[str, Any]:
    """``cfg.paths()`` as a flat JSON-ready mapping (nested key files flattened)."""
    paths = dataclasses.asdict(cfg.paths())
    keys = paths.pop("keys")
    return {name: str(value) for name, value in {**paths, **keys}.items()}


def render_json(cfg: Config) -> str:
    """JSON with ``source`` (file path or null), ``config`` and resolved ``paths``."""
    data = {"source": None if cfg.source is None else str(cfg.source),
            "config": cfg.to_dict(), "paths": resolved_paths(cfg)}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_toml(cfg: Config) -> str:
    """The config as TOML, headed by its source and followed by the resolved paths."""
    lines = [f"# source: {source_text(cfg)}"]
    _emit_table(cfg.to_dict(), [], lines)
    lines += ["", "# resolved paths:"]
    lines += [f"#   {name} = {value}" for name, value in resolved_paths(cfg).items()]
    return "\n".join(lines) + "\n"


def _emit_table(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if prefix:
        lines += ["", f"[{'.'.join(prefix)}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in scalars.items()]
    for key, value in table.items():
        if isinstance(value, dict):
            _emit_table(value, prefix + [key], lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    # JSON string escapes are valid TOML basic-string escapes; TOML also forbids raw DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
