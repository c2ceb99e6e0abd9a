"""NØMADE: live failure prediction for Slurm jobs.

This package's top level imports nothing heavy: the Slurm hooks import
``nomade.spool`` with ``python -I -S`` and must start in milliseconds.
"""

__version__ = "0.1.0"
