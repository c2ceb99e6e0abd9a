"""nomade.cli: help, config show, error handling, command discovery, import weight."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import nomade
from nomade import cli, commands
from nomade.config import Config, load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "nomade.example.toml"
HEAVY = {"torch", "zmq"}


def nomade_cmd(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOMADE_CONFIG"}
    return subprocess.run([sys.executable, *python_flags, "-m", "nomade", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def imported_top_level(importtime_stderr: str) -> set[str]:
    """Top-level package names from ``-X importtime`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_help_teaches() -> None:
    done = nomade_cmd("--help")
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout and "nomade config show" in done.stdout
    assert "--config FILE" in done.stdout and "--verbose" in done.stdout
    assert "config" in done.stdout.split("commands:", 1)[1]
    assert done.stderr == ""


@pytest.mark.parametrize("args", [("--help",), ("config", "show")])
def test_no_torch_or_zmq_imported(args: tuple[str, ...]) -> None:
    done = nomade_cmd(*args, python_flags=("-X", "importtime"))
    assert done.returncode == 0
    names = imported_top_level(done.stderr)
    assert "nomade" in names  # the parse works, so an empty set cannot pass
    assert not names & HEAVY


@pytest.mark.parametrize("args", [("collector", "--help"), ("-v", "--config", "agent", "import", "--help")])
def test_a_named_command_imports_no_other_command_module(args: tuple[str, ...]) -> None:
    """The collector's RSS budget has no room for the other commands' imports."""
    script = ("import sys\nfrom nomade import cli\ntry:\n    cli.main(sys.argv[1:])\n"
              "except SystemExit:\n    pass\n"
              "print(*sorted(m for m in sys.modules if m.startswith('nomade.commands.')), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: nomade" in done.stdout
    assert done.stderr.split() == [f"nomade.commands.{args[-2].replace('import', 'import_')}"]


def test_version() -> None:
    done = nomade_cmd("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"nomade {nomade.__version__}"


def test_no_command_is_usage_error() -> None:
    done = nomade_cmd()
    assert done.returncode == 2 and "usage: nomade" in done.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``nomade ... | head``: the pipe closed before the command wrote; exit 141 (as a shell
    tool killed by SIGPIPE), no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "NOMADE_CONFIG"}
    with subprocess.Popen([sys.executable, "-m", "nomade", "--config", str(EXAMPLE), "config", "show"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        rc = proc.wait(timeout=60)
    assert rc == cli.EXIT_BROKEN_PIPE and "Traceback" not in err and "Exception" not in err, err


def test_config_show_json_names_source() -> None:
    done = nomade_cmd("--config", str(EXAMPLE), "config", "show", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["source"] == str(EXAMPLE)
    assert data["config"] == Config().to_dict()
    assert data["paths"]["models_dir"].endswith("nomade/models")
    assert data["paths"]["authorized_clients_dir"].endswith("authorized_clients")


def test_config_show_text_is_loadable_toml(tmp_path: Path) -> None:
    custom = tmp_path / "custom.toml"
    custom.write_text('[ml]\nseed = 3\n[agent]\nspool_dirs = ["/a", "/b \\"q\\""]\n', encoding="utf-8")
    done = nomade_cmd("--config", str(custom), "config", "show")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"# source: {custom}\n")
    saved = tmp_path / "saved.toml"
    saved.write_text(done.stdout, encoding="utf-8")
    assert tomllib.loads(done.stdout) == load(custom).to_dict()
    assert load(saved) == load(custom)


def test_env_var_config_is_used(tmp_path: Path) -> None:
    custom = tmp_path / "env.toml"
    custom.write_text("[ml]\nseed = 11\n", encoding="utf-8")
    env = {**os.environ, "NOMADE_CONFIG": str(custom)}
    done = subprocess.run([sys.executable, "-m", "nomade", "config", "show", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(done.stdout)["config"]["ml"]["seed"] == 11


def test_bad_config_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ml.ensemble]\ngnn_weight = 2\n", encoding="utf-8")
    done = nomade_cmd("--config", str(bad), "config", "show")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and "ml.ensemble.gnn_weight = 2" in lines[0]
    assert lines[0].startswith("nomade: error: ")


def test_bad_toml_and_verbose_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ml\n", encoding="utf-8")
    quiet = nomade_cmd("--config", str(bad), "config", "show")
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert "not valid TOML" in quiet.stderr
    loud = nomade_cmd("-v", "--config", str(bad), "config", "show")
    assert loud.returncode == 2 and "Traceback" in loud.stderr


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """cli.main configures the root logger; undo it so other tests see the old setup."""
    handlers, level = list(logging.root.handlers), logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture
def extra_commands(tmp_path: Path) -> Iterator[Path]:
    """Add a directory to nomade.commands' search path for fake command modules."""
    original = list(commands.__path__)
    commands.__path__.append(str(tmp_path))
    yield tmp_path
    commands.__path__[:] = original
    for name in [n for n in sys.modules if n.startswith("nomade.commands.zz")]:
        del sys.modules[name]


GOOD_COMMAND = '''
from nomade.errors import NomadeError
NAME = "zzgood"
HELP = "a test command"
def add_arguments(parser):
    parser.add_argument("--fail", action="store_true")
def run(args, cfg):
    if args.fail:
        raise NomadeError("cannot do that: try --help")
    print("seed", cfg.ml.seed)
    return 5
'''


def test_broken_module_does_not_hide_others(extra_commands: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (extra_commands / "zzbroken.py").write_text("import no_such_module_xyz\n", encoding="utf-8")
    (extra_commands / "zzpartial.py").write_text("NAME = 'zzpartial'\n", encoding="utf-8")
    (extra_commands / "zzgood.py").write_text(GOOD_COMMAND, encoding="utf-8")
    names = [module.NAME for module in cli.discover()]
    assert "config" in names and "zzgood" in names
    assert "zzbroken" not in names and "zzpartial" not in names
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "nomade.commands.zzbroken failed to import (ModuleNotFoundError" in err[0]
    assert "nomade.commands.zzpartial lacks HELP, add_arguments, run" in err[1]


def test_main_dispatches_and_reports_user_errors(extra_commands: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (extra_commands / "zzgood.py").write_text(GOOD_COMMAND, encoding="utf-8")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[ml]\nseed = 4\n", encoding="utf-8")
    assert cli.main(["--config", str(cfg_file), "zzgood"]) == 5
    assert capsys.readouterr().out == "seed 4\n"
    assert cli.main(["--config", str(cfg_file), "zzgood", "--fail"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "nomade: error: cannot do that: try --help\n"
