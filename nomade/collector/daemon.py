"""The collector's loop: sample on a jittered interval, drain the hook spool, deliver.

One thread, one ``zmq.Poller``, and no timer between samples: the loop sleeps until
the next sample is due, an ack or a connection event arrives, an ack deadline passes,
a hook event lands in the spool (``watch.SpoolWatch``, inotify) or a signal arrives
(``wakeup_fd``, for ``signal.set_wakeup_fd``). Every ``interval_s`` (± ``jitter_s``/2,
and a random first delay in [0, ``jitter_s``), so that nodes started together drift
apart) it puts one batch into the outbox: a ``job.sample`` per job cgroup and a
``node.sample``. Hook events are forwarded as one batch as soon as they land, then
confirmed; the spool is also read at start and at every sample (a safety net for a
lost notification), and once a second where inotify cannot be had. A ``job.start``
also asks for a sample of that job at once, retried four times a second until its
cgroup appears (up to ``early_wait_s``): a job that starts and ends between two ticks
is still seen. Batches go to the agent through ``Sender``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from nomade import jobenv, wire
from nomade.collector.outbox import Outbox
from nomade.collector.sampler import JobSampler, NodeSampler
from nomade.collector.sender import Sender
from nomade.collector.watch import SpoolWatch
from nomade.spool import Spool, SpoolError, SpoolItem

if TYPE_CHECKING:
    from nomade.zmqkeys import ClientKeys

log = logging.getLogger(__name__)

_SPOOL_POLL_S = 1.0           # only where inotify cannot be had
_EARLY_EVERY_S = 0.25
_BATCH_ITEMS = 1000


class Collector:
    """A node collector; build it, then ``run`` until ``should_stop()`` says so."""

    def __init__(self, *, node: str, endpoint: str, cgroup_root: str, outbox_dir: str,
                 outbox_max_bytes: int, spool_dir: str | None, interval_s: float = 30.0,
                 jitter_s: float = 5.0, ack_timeout_s: float = 10.0, node_filter: str | None = None,
                 curve: ClientKeys | None = None, early_wait_s: float = 30.0) -> None:
        self.node = node
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.early_wait_s = early_wait_s
        self.outbox = Outbox(outbox_dir, outbox_max_bytes)
        self.jobs = JobSampler(cgroup_root, default_node=node, node_filter=node_filter)
        self.nodes = NodeSampler(node)
        self.spool = Spool(spool_dir) if spool_dir else None
        self.watch = self._watch_spool()
        self._spool_mtime = -1
        self._early: dict[str, float] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ctx = zmq.Context(io_threads=1)
        self.sender = Sender(self.ctx, endpoint, self.outbox, ack_timeout_s, curve)
        self.ticks = 0
        self.write_errors = 0
        self._write_failing = False
        self.next_tick = time.monotonic() + random.uniform(0.0, jitter_s)

    def _watch_spool(self) -> SpoolWatch | None:
        """Watch the spool, making it first if it is missing (the hooks need it to exist)."""
        if self.spool is None:
            return None
        try:
            self.spool.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            return SpoolWatch(self.spool.dir)
        except OSError as e:
            log.warning("no inotify on the spool (%s): looking at it once a second", e)
            return None

    @property
    def wakeup_fd(self) -> int:
        """A non-blocking descriptor that wakes ``run`` when written to (give it to
        ``signal.set_wakeup_fd`` so that a stop signal is seen at once)."""
        return self._wake_w

    def run(self, should_stop: Callable[[], bool], deadline: float | None = None) -> None:
        """Loop until ``should_stop()`` is true; it is checked after every wake-up, which
        comes at the latest at ``deadline`` (monotonic) when one is given."""
        poller = zmq.Poller()
        for fd in (self.sender.socket, self.sender.monitor, self._wake_r):
            poller.register(fd, zmq.POLLIN)
        if self.watch is not None:
            poller.register(self.watch.fd, zmq.POLLIN)
        next_spool = next_early = time.monotonic()
        while not should_stop():
            now = time.monotonic()
            if now >= next_spool:
                self.drain_spool(force=self.watch is not None)
                next_spool = math.inf if self.watch is not None else now + _SPOOL_POLL_S
            if self._early and now >= next_early:
                self._sample_early(now)
                next_early = now + _EARLY_EVERY_S
            if now >= self.next_tick:
                self.tick()
            due = self.sender.pump(time.monotonic())
            wake = min(self.next_tick, next_spool, next_early if self._early else math.inf,
                       math.inf if due is None else due, math.inf if deadline is None else deadline)
            timeout_ms = None if wake == math.inf else max(0.0, wake - time.monotonic()) * 1000
            for sock, _ in poller.poll(timeout_ms):
                if sock is self.sender.socket:
                    self.sender.on_readable()
                elif sock is self.sender.monitor:
                    self.sender.on_monitor()
                elif sock == self._wake_r:
                    _drain_pipe(self._wake_r)
                elif self.watch is not None and sock == self.watch.fd:
                    self.watch.drain()
                    self.drain_spool(force=True)

    def tick(self) -> None:
        """Sample every job and the node now and put the batch into the outbox; then read
        the spool whatever its mtime says (a notification may have been lost). The next
        tick is due one jittered interval after the one this replaces (at least half an
        interval from now)."""
        now = time.monotonic()
        self.next_tick = max(self.next_tick + self.interval_s
                             + random.uniform(-self.jitter_s, self.jitter_s) / 2,
                             now + self.interval_s / 2)
        ts = time.time()
        items = [("job.sample", b) for b in self.jobs.sample_all(ts)]
        items.append(("node.sample", {**self.nodes.sample(ts), "outbox_dropped": self.outbox.dropped,
                                      "outbox_write_errors": self.write_errors}))
        self.ticks += 1
        self._enqueue(items, ts)
        self.drain_spool(force=True)

    def drain_spool(self, force: bool = False) -> int:
        """Forward the hook events waiting in the spool, ``_BATCH_ITEMS`` files a batch,
        until it is empty; return how many files were handled.

        Without ``force`` the directory is read only if its mtime changed since the last look.
        """
        if self.spool is None or not (self._spool_changed() or force):
            return 0
        handled = 0
        while True:
            try:
                taken = self.spool.take(limit=_BATCH_ITEMS)
            except SpoolError as e:
                log.warning("%s", e)
                return handled
            if not self._forward(taken):
                return handled     # the outbox cannot be written: they stay for the next look
            handled += len(taken)
            if len(taken) < _BATCH_ITEMS:
                return handled

    def _forward(self, taken: list[SpoolItem]) -> bool:
        """One batch of these events (and early samples of started jobs), then confirm
        them; False (nothing confirmed) when the outbox cannot be written."""
        assert self.spool is not None
        ts = time.time()
        items = [kb for item in taken for kb in self._events(item)]
        for kind, body in items:
            if kind == "job.start":
                self._early[body["job_id"]] = time.monotonic() + self.early_wait_s
            elif kind == "job.end":
                self._early.pop(body["job_id"], None)
        if self._early:
            items.extend(("job.sample", b) for b in self._early_samples(ts))
        if items and not self._enqueue(items, ts):
            return False
        for item in taken:
            self.spool.confirm(item)
        return True

    def _spool_changed(self) -> bool:
        assert self.spool is not None
        try:
            mtime = os.stat(self.spool.dir).st_mtime_ns
        except OSError:
            return False
        if mtime == self._spool_mtime:
            return False
        self._spool_mtime = mtime
        return True

    @staticmethod
    def _events(item: SpoolItem) -> list[tuple[str, dict]]:
        events = jobenv.events(item.record)
        if not events:
            log.warning("spool event %s says nothing about a job; dropped", item.id)
        return [(kind, dict(body)) for kind, body in events]

    def _sample_early(self, now: float) -> None:
        for job_id in [j for j, deadline in self._early.items() if deadline <= now]:
            log.info("job %s: no cgroup within %.0f s of its start event", job_id, self.early_wait_s)
            del self._early[job_id]
        ts = time.time()
        bodies = self._early_samples(ts)
        if bodies:
            self._enqueue([("job.sample", b) for b in bodies], ts)

    def _early_samples(self, ts: float) -> list[dict]:
        bodies, missing = self.jobs.sample_jobs(set(self._early), ts)
        for job_id in set(self._early) - missing:
            del self._early[job_id]
        return bodies

    def _enqueue(self, items: list[tuple[str, dict]], ts: float) -> bool:
        """Put ``items`` into the outbox; False when it cannot be written (a full disk):
        counted in ``write_errors`` (reported in the next node sample), logged once until a
        write succeeds again, never raised, so the collector keeps running and retries."""
        try:
            for start in range(0, len(items), _BATCH_ITEMS):
                chunk = items[start:start + _BATCH_ITEMS]
                self.outbox.add(lambda seq: self._frame(chunk, seq, ts))  # noqa: B023 - add() calls it at once
        except OSError as e:
            self.write_errors += 1
            if not self._write_failing:
                log.error("outbox %s cannot be written (%s): samples are lost and hook events "
                          "kept in the spool until it can; retrying every sample",
                          self.outbox.dir, e.strerror or e)
            self._write_failing = True
            return False
        if self._write_failing:
            log.warning("outbox %s writable again after %d failed writes", self.outbox.dir,
                        self.write_errors)
            self._write_failing = False
        return True

    def _frame(self, items: list[tuple[str, dict]], seq: int, ts: float) -> bytes:
        """The encoded batch. ``encode`` validates every item; only when that fails are the
        items validated one by one, and the invalid ones logged and left out."""
        messages = [wire.Message(wire.PROTOCOL_VERSION, kind, self.node, seq, ts, body)
                    for kind, body in items]
        try:
            return wire.encode(wire.Message(wire.PROTOCOL_VERSION, "batch", self.node, seq, ts,
                                            {"items": messages}))
        except wire.WireError:
            valid = []
            for kind, body in items:
                try:
                    valid.append(wire.make(kind, self.node, seq, body, ts))
                except wire.WireError as e:
                    log.warning("not sent, invalid %s: %s", kind, e)
            return wire.encode(wire.make_batch(self.node, seq, valid, ts))

    def close(self) -> None:
        """Close the sockets, descriptors and cgroup readers; the outbox keeps what is
        unacknowledged."""
        self.sender.close()
        self.jobs.close()
        self.ctx.term()
        if self.watch is not None:
            self.watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
