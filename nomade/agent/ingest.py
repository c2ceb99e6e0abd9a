"""Ingest: what the agent does with the frames its ROUTER socket receives.

``Ingest.handle(received)`` takes the multipart messages drained from the socket
(``[identity, frame]``, or ``[identity, b"", frame]`` from a REQ-style peer) and
returns the replies to send (``[identity, ack-frame]``). It does, in order:

1. decode and validate every frame with ``nomade.wire.decode_rows`` (the last frame of a
   message; the job samples come only as rows in the store's column order, not among
   the batch's items);
   a frame that fails, or that is not a ``batch``, is counted and dropped with a
   rate-limited log line: nothing a peer sends can stop the agent;
2. write all batches of the round in one store transaction (``Store.write_batches``,
   idempotent by (sender, seq): a duplicate is not written again);
3. acknowledge every stored batch, duplicates included (the sender lost our ack);
4. feed the fresh batches to the job state: their other items (``JobState.apply``:
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
from nomade.agent.metrics import Metrics
from nomade.agent.state import Changes, JobState

log = logging.getLogger(__name__)


class BatchStore(Protocol):
    """What ingest needs of ``nomade.store.Store``."""

    def write_batches(self, batches: Any) -> list[bool]: ...


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
                 *, log_interval_s: float = 10.0) -> None:
        self.store = store
        self.state = state
        self.metrics = metrics
        self.agent_name = agent_name
        self.bad_log = RateLimitedLog(log, log_interval_s)
        self.changes = Changes()

    def handle(self, received: Sequence[Sequence[bytes]]) -> list[list[bytes]]:
        """The ack replies for ``received``; raises only what the store raises for a
        failed write (nothing is acked then)."""
        m = self.metrics
        m.frames_total += len(received)
        batches: list[tuple[bytes, wire.Message, list[tuple[Any, ...]]]] = []
        for frames in received:
            decoded = self._decode(frames)
            if decoded is not None:
                batches.append((bytes(frames[0]), *decoded))
        if not batches:
            return []
        fresh = self._write(batches)
        replies: list[list[bytes]] = []
        for (identity, batch, rows), is_fresh in zip(batches, fresh):
            replies.append([identity, wire.encode(wire.make_ack(self.agent_name, batch.seq))])
            items = batch.body["items"]
            if is_fresh:
                m.batches_total += 1
                m.messages_total += len(items) + len(rows)
                changes = self.state.apply(items)
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
            return self._bad("a message without an identity and a frame", frames)
        try:
            msg, rows = wire.decode_rows(frames[-1], sample_items=False)
        except wire.WireError as e:
            return self._bad(str(e), frames)
        if msg.kind != "batch":
            return self._bad(f"expected a batch, got a {msg.kind}", frames)
        return msg, rows

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
