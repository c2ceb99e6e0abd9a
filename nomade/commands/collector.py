"""``nomade collector``: run the node collector (the service ``collector/`` deploys).

It samples the Slurm jobs' cgroups and the node every ``[collector] interval_s``,
forwards the hook events of the node's spool, and delivers both to the agent over
ZeroMQ, keeping unacknowledged batches on disk (``outbox_dir``). With
``[collector] node_name`` set, only that node's cgroup directories are sampled (one
collector per slurmd); empty, every Slurm job of the host is, named by its node.
SIGTERM or SIGINT stops it after the current step (the signal wakes its loop at
once); a second SIGINT exits at once. With ``[security] curve_enabled`` the socket
uses the CURVE keys that ``nomade.zmqkeys.client_keys`` loads and checks.
"""

from __future__ import annotations

import argparse
import resource
import signal
from types import FrameType
from typing import TYPE_CHECKING

from nomade.config import Config, check_endpoint

if TYPE_CHECKING:
    from nomade.zmqkeys import ClientKeys

NAME = "collector"
HELP = "run the node collector: sample jobs and node, forward hook events to the agent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``collector [--once]``."""
    parser.add_argument("--once", action="store_true",
                        help="take one sample, deliver it (waiting up to ack_timeout_s), exit")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run until stopped by a signal (or after one delivered sample with --once)."""
    import time

    from nomade.collector.daemon import Collector

    _raise_fd_limit()
    paths = cfg.paths()
    c = cfg.collector
    check_endpoint(cfg, "collector.agent_endpoint", c.agent_endpoint)
    collector = Collector(
        node=paths.node_name, endpoint=c.agent_endpoint, cgroup_root=c.cgroup_root,
        outbox_dir=str(paths.outbox_dir), outbox_max_bytes=c.outbox_max_mb * 2**20,
        spool_dir=str(paths.collector_spool_dir), interval_s=c.interval_s, jitter_s=c.jitter_s,
        ack_timeout_s=c.ack_timeout_s, node_filter=c.node_name or None, curve=curve_keys(cfg))
    stop = _StopFlag(collector.wakeup_fd)
    _release_freed_heap()
    try:
        if args.once:
            collector.tick()
            collector.next_tick = float("inf")          # one sample, then only delivery
            deadline = time.monotonic() + c.ack_timeout_s
            collector.run(lambda: stop.set or not collector.outbox.pending()
                          or time.monotonic() >= deadline, deadline=deadline)
            return 0 if not collector.outbox.pending() else 1
        collector.run(lambda: stop.set)
        return 0
    finally:
        stop.restore()
        collector.close()


def curve_keys(cfg: Config) -> ClientKeys | None:
    """The client's CURVE keys when ``[security] curve_enabled``, else None (and then
    ``nomade.zmqkeys`` is not imported). Raises ``NomadeError`` naming a missing or bad key file."""
    if not cfg.security.curve_enabled:
        return None
    from nomade.zmqkeys import client_keys

    return client_keys(cfg.security)


def _release_freed_heap() -> None:
    """Return to the kernel the heap pages start-up allocated and freed: glibc keeps them,
    and the wire validators compiled at import alone leave about 1.5 MB of them in RSS
    (the collector's budget is 25 MB). Nothing happens on a libc without ``malloc_trim``."""
    import ctypes  # already loaded by the spool watch

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _raise_fd_limit() -> None:
    """The readers keep a few descriptors open per job: use the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _StopFlag:
    """SIGTERM/SIGINT set ``set`` and wake the collector through ``wakeup_fd``; a second
    SIGINT raises KeyboardInterrupt. Never logs; ``restore`` puts the previous handlers
    and wake-up descriptor back."""

    def __init__(self, wakeup_fd: int) -> None:
        self.set = False
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        self._previous_fd = signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def restore(self) -> None:
        """Put the previous handlers and wake-up descriptor back."""
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
