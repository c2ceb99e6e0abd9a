"""The collector's loop: sample on a jittered interval, drain the hook spool, deliver.

One thread, one ``zmq.Poller``. Every ``interval_s`` (± ``jitter_s``/2, and a random
first delay in [0, ``jitter_s``), so that nodes started together drift apart) it puts
one batch into the outbox: a ``job.sample`` per job cgroup and a ``node.sample``. Once a
second it looks at the spool directory (one ``stat``; the files are read only when the
directory changed) and forwards the hook events as one batch, then confirms them. A
``job.start`` also asks for a sample of that job at once, retried four times a second
until its cgroup appears (up to ``early_wait_s``): a job that starts and ends between
two ticks is still seen. Batches go to the agent through ``Sender``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

import zmq

from nomade import jobenv, wire
from nomade.collector.outbox import Outbox
from nomade.collector.sampler import JobSampler, NodeSampler
from nomade.collector.sender import CurveKeys, Sender
from nomade.spool import Spool, SpoolError, SpoolItem

log = logging.getLogger(__name__)

_SPOOL_EVERY_S = 1.0
_EARLY_EVERY_S = 0.25
_BATCH_ITEMS = 1000


class Collector:
    """A node collector; build it, then ``run`` until ``should_stop()`` says so."""

    def __init__(self, *, node: str, endpoint: str, cgroup_root: str, outbox_dir: str,
                 outbox_max_bytes: int, spool_dir: str | None, interval_s: float = 30.0,
                 jitter_s: float = 5.0, ack_timeout_s: float = 10.0, node_filter: str | None = None,
                 curve: CurveKeys | None = None, early_wait_s: float = 30.0) -> None:
        self.node = node
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.early_wait_s = early_wait_s
        self.outbox = Outbox(outbox_dir, outbox_max_bytes)
        self.jobs = JobSampler(cgroup_root, default_node=node, node_filter=node_filter)
        self.nodes = NodeSampler(node)
        self.spool = Spool(spool_dir) if spool_dir else None
        self._spool_mtime = -1
        self._early: dict[str, float] = {}
        self.ctx = zmq.Context(io_threads=1)
        self.sender = Sender(self.ctx, endpoint, self.outbox, ack_timeout_s, curve)
        self.ticks = 0

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Loop until ``should_stop()`` is true (checked at least once a second)."""
        poller = zmq.Poller()
        poller.register(self.sender.socket, zmq.POLLIN)
        poller.register(self.sender.monitor, zmq.POLLIN)
        now = time.monotonic()
        next_tick = now + random.uniform(0.0, self.jitter_s)
        next_spool = now
        while not should_stop():
            now = time.monotonic()
            if now >= next_spool:
                next_spool = now + _SPOOL_EVERY_S
                self.drain_spool()
            if self._early:
                self._sample_early(now)
            if now >= next_tick:
                self.tick()
                next_tick += self.interval_s + random.uniform(-self.jitter_s, self.jitter_s) / 2
                next_tick = max(next_tick, now + self.interval_s / 2)
            self.sender.pump(time.monotonic())
            wake = min(next_tick, next_spool, now + _EARLY_EVERY_S if self._early else next_spool)
            for sock, _ in poller.poll(max(0.0, wake - time.monotonic()) * 1000):
                if sock is self.sender.socket:
                    self.sender.on_readable()
                else:
                    self.sender.on_monitor()

    def tick(self) -> None:
        """Sample every job and the node now and put the batch into the outbox."""
        ts = time.time()
        items = [("job.sample", b) for b in self.jobs.sample_all(ts)]
        items.append(("node.sample", self.nodes.sample(ts)))
        self.ticks += 1
        self._enqueue(items, ts)

    def drain_spool(self) -> int:
        """Forward the hook events waiting in the spool; return how many files were handled."""
        if self.spool is None or not self._spool_changed():
            return 0
        try:
            taken = self.spool.take(limit=_BATCH_ITEMS)
        except SpoolError as e:
            log.warning("%s", e)
            return 0
        if len(taken) == _BATCH_ITEMS:
            self._spool_mtime = -1               # more are waiting: look again next time
        ts = time.time()
        items = [kb for item in taken for kb in self._events(item)]
        for kind, body in items:
            if kind == "job.start":
                self._early[body["job_id"]] = time.monotonic() + self.early_wait_s
            elif kind == "job.end":
                self._early.pop(body["job_id"], None)
        if self._early:
            items.extend(("job.sample", b) for b in self._early_samples(ts))
        if items:
            self._enqueue(items, ts)
        for item in taken:
            self.spool.confirm(item)
        return len(taken)

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

    def _enqueue(self, items: list[tuple[str, dict]], ts: float) -> None:
        for start in range(0, len(items), _BATCH_ITEMS):
            chunk = items[start:start + _BATCH_ITEMS]
            self.outbox.add(lambda seq: self._frame(chunk, seq, ts))

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
        """Close the sockets and the cgroup readers; the outbox keeps what is unacknowledged."""
        self.sender.close()
        self.jobs.close()
        self.ctx.term()
