"""``nomade agent``: run the agent (the service ``agent/`` deploys).

It receives the collectors' batches on ``[agent] ingest_endpoint`` (ROUTER), stores
them, drains the hook spools of ``[agent] spool_dirs``, asks Slurm for the final state
of ended jobs, scores every running job each ``[agent] interval_s`` and publishes the
predictions on ``[agent] publish_endpoint`` (PUB), with metrics on ``metrics_address``.
Without a trained model it says so and publishes no risk. SIGTERM or SIGINT stops it
cleanly (what has arrived is stored and acknowledged); a second SIGINT exits at once.
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from nomade.config import Config

NAME = "agent"
HELP = "run the agent: ingest samples, score running jobs, publish predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``agent [--no-slurm]``."""
    parser.add_argument("--no-slurm", action="store_true",
                        help="do not call Slurm (no final-state polling, no Comment advice)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run until stopped by a signal; 0 after a clean stop."""
    from nomade.agent.daemon import Agent, load_comment_policy
    from nomade.slurm import Slurm

    slurm = None if args.no_slurm else Slurm.from_config(cfg)
    comments = None if slurm is None else load_comment_policy(cfg)
    stop = _StopFlag()
    try:
        agent = Agent(cfg, slurm=slurm, comments=comments)
        try:
            agent.run(lambda: stop.set)
        finally:
            agent.close()
    finally:
        stop.restore()
    return 0


class _StopFlag:
    """SIGTERM/SIGINT set ``set``; a second SIGINT raises KeyboardInterrupt. Never logs."""

    def __init__(self) -> None:
        self.set = False
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
