"""The DEALER side of delivery: send the outbox's batches to the agent, remove them on ack.

Framing: the DEALER sends each batch as one frame (``wire.encode`` of a ``batch``
message); the agent's ROUTER sees ``[identity, frame]`` and answers ``[identity,
ack-frame]``, where the ack's body ``seq`` names the batch. The DEALER takes the last
frame of what it receives, so an agent that adds an empty delimiter frame works too.

Policy: oldest unacknowledged first, at most ``window`` batches in flight; a batch not
acknowledged within ``ack_timeout_s`` is sent again (same bytes, same seq: the agent
drops duplicates). When the connection comes up (again), everything in flight is
sent again at once rather than after the timeout. With ``IMMEDIATE`` set, nothing is
queued while no agent is connected, so a batch leaves the outbox only for a live peer.

Timing: ``pump`` returns when it next needs to run (the earliest ack deadline, or a
retry a second later while no agent is connected), so the caller can sleep until then
instead of waking on a timer.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

import zmq

from nomade import wire
from nomade.collector.outbox import Outbox

if TYPE_CHECKING:
    from nomade.zmqkeys import ClientKeys

log = logging.getLogger(__name__)

_NO_PEER_RETRY_S = 1.0


class Sender:
    """Delivers ``outbox`` batches over one DEALER socket; call ``pump`` and ``on_readable``."""

    def __init__(self, ctx: zmq.Context, endpoint: str, outbox: Outbox, ack_timeout_s: float,
                 curve: ClientKeys | None = None, window: int = 16) -> None:
        self.outbox = outbox
        self.ack_timeout_s = ack_timeout_s
        self.window = window
        self.acked = 0
        self.bad_frames = 0
        self._sent_at: dict[int, float] = {}
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 500)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 10_000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
        if curve is not None:
            self.socket.curve_publickey = curve.public
            self.socket.curve_secretkey = curve.secret
            self.socket.curve_serverkey = curve.server_public
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.socket.connect(endpoint)

    def pump(self, now: float) -> float | None:
        """Send what is due: unsent batches and those whose ack is overdue, oldest first.

        Returns the monotonic time at which it should run again (the earliest ack
        deadline of a batch in flight, or ``now`` + 1 s while no agent is connected),
        None when nothing is in flight. An ack or a (re)connection also calls for it.
        """
        in_flight = 0
        pending = self.outbox.pending()
        if len(self._sent_at) > len(pending):      # batches dropped by the outbox bound
            kept = set(pending)
            self._sent_at = {s: t for s, t in self._sent_at.items() if s in kept}
        for seq in pending:
            if in_flight >= self.window:
                break
            sent = self._sent_at.get(seq)
            if sent is not None and now - sent < self.ack_timeout_s:
                in_flight += 1
                continue
            data = self.outbox.get(seq)
            if data is None:
                continue
            try:
                self.socket.send(data, zmq.NOBLOCK)
            except zmq.Again:        # no agent connected: keep everything for later
                return now + _NO_PEER_RETRY_S
            self._sent_at[seq] = now
            in_flight += 1
        if not self._sent_at:
            return None
        return min(self._sent_at.values()) + self.ack_timeout_s

    def on_readable(self) -> None:
        """Handle every ack waiting on the socket; malformed frames are counted and dropped."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = wire.decode(frames[-1])
                if msg.kind != "ack":
                    raise wire.WireError(f"expected an ack, got {msg.kind}")
            except wire.WireError as e:
                self.bad_frames += 1
                log.warning("dropped a frame from the agent: %s", e)
                continue
            seq = msg.body["seq"]
            self._sent_at.pop(seq, None)
            if self.outbox.ack(seq):
                self.acked += 1

    def on_monitor(self) -> None:
        """A connection came up or went down: resend everything in flight when it is up."""
        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # frame 0: uint16 event, uint32 value (zmq_socket_monitor); parsed here because
            # zmq.utils.monitor imports asyncio (+8 MB RSS)
            event = struct.unpack_from("=H", frames[0])[0]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                log.info("connected to the agent; resending %d unacknowledged batches",
                         len(self.outbox.pending()))
                self._sent_at.clear()
            elif event == zmq.EVENT_DISCONNECTED:
                log.warning("agent connection lost; %d batches wait in the outbox",
                            len(self.outbox.pending()))

    def close(self) -> None:
        """Close both sockets (linger 0: unsent data stays in the outbox)."""
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
