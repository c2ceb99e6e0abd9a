"""Sub-commands of ``nomade``: one module per command.

Each module defines ``NAME`` (the word after ``nomade``), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args, cfg) -> int``. A command module imports
only the standard library and ``nomade.config`` at top level, so that building the
parser never imports torch or zmq; the work happens inside ``run``.
"""
