"""The ``nomade`` command: global options, sub-command discovery, error handling.

Sub-commands live in ``nomade/commands/`` (one module each, see that package's
docstring). Building the parser imports only the named command's module (every one for
``nomade --help`` or an unknown name), and those import no torch or zmq at top level: the
collector's RSS budget has no room for the other commands' imports. This is the only place that
configures logging. Expected errors (``NomadeError``, which includes ``ConfigError``)
become one line per problem on stderr and exit status 2; a traceback only with -v.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

import nomade
from nomade import commands
from nomade.config import load
from nomade.errors import NomadeError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, what a shell tool reports when its reader (``| head``) went away."""
_CONTRACT = ("NAME", "HELP", "add_arguments", "run")

DESCRIPTION = """\
NØMADE predicts, while a Slurm job runs, how likely it is to fail, and tells the
user (in the job's Comment) and the admins (a ZeroMQ stream).

examples:
  nomade config show                    settings in effect and the file they come from
  nomade --config site.toml config show --json
  nomade keys generate --server         CURVE key pair for the agent host
  nomade keys generate --client         CURVE key pair for a compute node
  nomade keys authorize node01.key      let that node's collector talk to the agent
  nomade COMMAND --help                 a command's own options
"""

EPILOG = """\
The config file is --config FILE, else $NOMADE_CONFIG, else /etc/nomade/nomade.toml
if it exists, else built-in defaults (every key: docs/nomade.example.toml).
Exit status: 0 success, 2 bad usage, bad config or another error explained in one line.
"""


def discover(only: str | None = None) -> list[ModuleType]:
    """Import every command module in nomade.commands, sorted by name; with ``only``, just
    the module of that command (``import_`` for ``import``) when it exists and loads.

    A module that fails to import or lacks part of the contract is skipped with one
    warning line on stderr, so one broken command never hides the others.
    """
    infos = sorted((i for i in pkgutil.iter_modules(commands.__path__) if not i.name.startswith("_")),
                   key=lambda i: i.name)
    named = [i.name for i in infos if i.name.rstrip("_") == only]
    if named:
        module = _load(named[0])
        if module is not None and module.NAME == only:
            return [module]
    found = (_load(i.name) for i in infos if i.name not in named)
    return [m for m in found if m is not None]


def _load(name: str) -> ModuleType | None:
    """The command module ``name``, or None (and a warning) if it fails or lacks the contract."""
    qualified = f"{commands.__name__}.{name}"
    try:
        module = importlib.import_module(qualified)
    except Exception as exc:  # any failure must only disable this command
        _warn(f"command module {qualified} failed to import ({type(exc).__name__}: {exc}); skipped")
        return None
    missing = [attr for attr in _CONTRACT if not hasattr(module, attr)]
    if missing:
        _warn(f"command module {qualified} lacks {', '.join(missing)}; skipped")
        return None
    return module


def _command_word(argv: Sequence[str]) -> str | None:
    """The first word of ``argv`` that is neither a global option nor ``--config``'s value."""
    words = iter(argv)
    for arg in words:
        if arg == "--config":
            next(words, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(modules: Sequence[ModuleType]) -> argparse.ArgumentParser:
    """The top-level parser with global options and one sub-parser per module."""
    parser = argparse.ArgumentParser(
        prog="nomade", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="config file (default: $NOMADE_CONFIG, "
                        "else /etc/nomade/nomade.toml if it exists, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug) and show tracebacks")
    parser.add_argument("--version", action="version", version=f"nomade {nomade.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in modules:
        child = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(child)
        child.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nomade`` with ``argv`` (default sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(discover(_command_word(argv)))
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args, load(args.config)))
    except NomadeError as exc:
        if args.verbose:
            traceback.print_exc()
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"nomade: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader closed the pipe: stop quietly, and point stdout at /dev/null so
        # that the interpreter's last flush does not print a second traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _warn(message: str) -> None:
    print(f"nomade: warning: {message}", file=sys.stderr)
