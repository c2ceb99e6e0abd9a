"""Ingest: what the agent does with the frames its ROUTER socket receives.

``Ingest.handle(received)`` takes the multipart messages drained from the socket
(``[identity, frame]``, or ``[identity, b"", frame]`` from a REQ-style peer) and
returns the replies to send (``[identity, ack-frame]``). It does, in order:

1. decode and validate every frame with ``nomade.wire.decode_rows`` (the last frame of a
   message; the job samples come only as rows in the store's column order, not among
   the batch's items);
   a frame that fails, or that is not a ``batch``, is counted and dropped with a
   rate-limited log line: nothing a peer sends can stop the agent;
2. hold every batch to what a collector may say (``authority``): with CURVE the sender
   is the name of the key that sent it (its ZAP User-Id, ``nomade.zmqkeys``); a batch
   whose ``sender`` differs is counted (``refused_total``) and dropped unacked, so the
   store's duplicate check by (sender, seq) is per authenticated sender. A sample, node
   reading or start of a node that key does not speak for is counted and dropped, and
   the rest of the batch is stored and acked: one foreign sample (a misnamed node, a
   cgroup the collector should not have read) must not hold back, resent for ever, the
   batch of every real job sampled with it. From any collector a
   ``prediction`` item refuses the batch, and a ``job.end``'s final state (state, exit
   code, signal) is cleared: those come from the controller-side hooks and Slurm only;
3. write all batches of the round in one store transaction (``Store.write_batches``,
   idempotent by (sender, seq): a duplicate is not written again);
4. acknowledge every stored batch, duplicates included (the sender lost our ack);
5. feed the fresh batches to the job state: their other items (``JobState.apply``:
   job starts and ends, and ``node.sample`` iowait readings, which the scoring tick
   joins onto the job samples of that node), then their sample rows
   (``JobState.apply_rows``).

If the store write fails, nothing of the round is acked: the collectors keep the
batches in their outboxes and resend them. A batch the store refuses as such
(``ValueError``: cannot happen for a frame the wire accepted, but the store is the
judge) is dropped and acked, so it is not resent forever; the others are stored.
No socket here: the daemon owns it, tests call ``handle`` directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from nomade import wire
from nomade.agent.exporter import Metrics
from nomade.agent.jobstate import Changes, JobState

log = logging.getLogger(__name__)


class BatchStore(Protocol):
    """What ingest needs of ``nomade.store.Store``."""

    def write_batches(self, batches: Any) -> list[bool]: ...


class KeyNodes(Protocol):
    """What ingest needs of ``nomade.zmqkeys.AuthorizedKeys``."""

    def nodes_of(self, name: str) -> frozenset[str]: ...


#: ``job.end`` fields only the controller side may set (a node's would forge a label).
_FINAL_FIELDS = ("state", "exit_code", "signal")


class RateLimitedLog:
    """At most one warning per ``interval_s``; the next one says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = float("-inf")
        self._held = 0

    def warning(self, msg: str, *args: Any) -> None:
        """Log ``msg`` now, or count it if one was logged less than ``interval_s`` ago."""
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return
        if self._held:
            msg += " (and %d more like it since the last such line)"
            args = (*args, self._held)
        self._last, self._held = now, 0
        self.logger.warning(msg, *args)


class Ingest:
    """Decode, store, ack, and feed the state (see the module doc)."""

    def __init__(self, store: BatchStore, state: JobState, metrics: Metrics, agent_name: str,
                 *, keys: KeyNodes | None = None, log_interval_s: float = 10.0) -> None:
        self.store = store
        self.keys = keys
        self.state = state
        self.metrics = metrics
        self.agent_name = agent_name
        self.bad_log = RateLimitedLog(log, log_interval_s)
        self.changes = Changes()

    def handle(self, received: Sequence[Sequence[Any]],
               users: Sequence[str | None] | None = None) -> list[list[bytes]]:
        """The ack replies for ``received``; raises only what the store raises for a
        failed write (nothing is acked then). ``users[i]``: the authenticated name of
        message i's key (CURVE), held against what it says; None: no CURVE."""
        m = self.metrics
        m.frames_total += len(received)
        batches: list[tuple[bytes, wire.Message, list[tuple[Any, ...]]]] = []
        for i, frames in enumerate(received):
            decoded = self._decode(frames)
            if decoded is not None:
                decoded = self._authority(*decoded, None if users is None else users[i], frames)
            if decoded is not None:
                batches.append((bytes(frames[0]), *decoded))
        if not batches:
            return []
        fresh = self._write(batches)
        replies: list[list[bytes]] = []
        for (identity, batch, rows), is_fresh in zip(batches, fresh, strict=True):
            replies.append([identity, wire.encode(wire.make_ack(self.agent_name, batch.seq))])
            items = batch.body["items"]
            if is_fresh:
                m.batches_total += 1
                m.messages_total += len(items) + len(rows)
                changes = self.state.apply(items)
                for item in items:
                    if item.kind == "node.sample":
                        m.collector_reported(batch.sender, item.body["outbox_dropped"],
                                             item.body["outbox_write_errors"])
                m.samples_total += changes.samples + self.state.apply_rows(rows)
                self.changes.started += changes.started
                self.changes.ended += changes.ended
            elif is_fresh is False:
                m.duplicate_batches_total += 1
        return replies

    def take_changes(self) -> Changes:
        """What the state changed since the last call (jobs started and ended)."""
        changes, self.changes = self.changes, Changes()
        return changes

    def _decode(self, frames: Sequence[bytes]
                ) -> tuple[wire.Message, list[tuple[Any, ...]]] | None:
        """The batch of a received message and its job samples as store rows, or None
        (counted and logged) for anything else."""
        if len(frames) < 2:
            self._bad("a message without an identity and a frame", frames)
            return None
        try:
            msg, rows = wire.decode_rows(frames[-1], sample_items=False)
        except wire.WireError as e:
            self._bad(str(e), frames)
            return None
        if msg.kind != "batch":
            self._bad(f"expected a batch, got a {msg.kind}", frames)
            return None
        return msg, rows

    def _authority(self, batch: wire.Message, rows: list[tuple[Any, ...]], user: str | None,
                   frames: Sequence[Any]) -> tuple[wire.Message, list[tuple[Any, ...]]] | None:
        """The batch as far as its sender may say it (module doc, step 2), or None:
        refused, counted and logged."""
        items = batch.body["items"]
        if user is not None:
            if batch.sender != user:
                self._refuse("sender", f"batch of {batch.sender!r} sent with the key of {user!r}", frames)
                return None
            nodes = self.keys.nodes_of(user) if self.keys is not None else frozenset((user,))
            own = [row for row in rows if row[1] in nodes]
            mine = [item for item in items if not (
                item.kind == "node.sample" and item.body["node"] not in nodes
                or item.kind == "job.start" and item.body["nodes"] and nodes.isdisjoint(item.body["nodes"]))]
            dropped = len(rows) - len(own) + len(items) - len(mine)
            if dropped:
                self._refuse("node", f"{user!r} sent {dropped} samples or starts of nodes it does not speak "
                             f"for (dropped; the rest of its batch {batch.seq} is stored)", frames, dropped)
                rows, items = own, mine
                batch = batch._replace(body={**batch.body, "items": items})
        if any(item.kind == "prediction" for item in items):
            self._refuse("prediction", f"{batch.sender!r} sent a prediction", frames)
            return None
        if any(item.kind == "job.end" and any(item.body[k] is not None for k in _FINAL_FIELDS)
               for item in items):
            self.metrics.refused_total["final_state"] += 1
            items = [_without_final_state(item) if item.kind == "job.end" else item
                     for item in items]
            batch = batch._replace(body={**batch.body, "items": items})
        return batch, rows

    def _refuse(self, reason: str, why: str, frames: Sequence[Any], count: int = 1) -> None:
        self.metrics.refused_total[reason] += count
        self.bad_log.warning("refused: %s (peer %s)", why, bytes(frames[0]).hex()[:16])

    def _bad(self, why: str, frames: Sequence[bytes]) -> None:
        self.metrics.bad_frames_total += 1
        peer = bytes(frames[0]).hex()[:16] if frames else "?"
        self.bad_log.warning("dropped a bad frame from peer %s: %s (%d bad frames so far)",
                             peer, why, self.metrics.bad_frames_total)
        return None

    def _write(self, batches: list[tuple[bytes, wire.Message, list[tuple[Any, ...]]]]
               ) -> list[bool | None]:
        """Per batch: True stored, False duplicate, None refused by the store (dropped)."""
        todo = [(b.sender, b.seq, b.body["items"], rows) for _, b, rows in batches]
        try:
            return list(self.store.write_batches(todo))
        except ValueError:
            pass   # one batch the store cannot keep: store the others one by one
        out: list[bool | None] = []
        for sender, seq, items, rows in todo:
            try:
                out.append(self.store.write_batches([(sender, seq, items, rows)])[0])
            except ValueError as e:
                self._bad(f"batch {seq} of {sender} refused by the store: {e}", [b""])
                out.append(None)
        return out


def _without_final_state(item: wire.Message) -> wire.Message:
    """A collector's ``job.end`` with its final-state fields cleared (None: unknown)."""
    return item._replace(body={**item.body, **dict.fromkeys(_FINAL_FIELDS)})
