"""Python side of the Slurm hooks: draining hook events from a spool (no torch, no zmq).

The hooks themselves are the shell scripts in ``prolog/`` and ``epilog/``.
"""
