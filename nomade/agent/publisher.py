"""The prediction stream: one PUB message per scored job, also written to the store.

Each message is two frames: the topic ``b"prediction." + level`` (``low``, ``moderate``,
``high``, ``critical``) and the ``wire.encode``d ``prediction`` message. ZeroMQ filters
by topic prefix at the publisher, so a subscriber that wants ``high`` and above
subscribes to ``prediction.high`` and ``prediction.critical`` (``topics_from``) and
receives nothing else. PUB drops messages for a subscriber that is too slow (its queue
holds ``sndhwm`` messages): the store keeps every prediction, the stream is best effort.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import zmq

from nomade import wire

log = logging.getLogger(__name__)

TOPIC_PREFIX = b"prediction."
_KEYS = frozenset(wire.FIELDS["prediction"])


def topic(level: str) -> bytes:
    """The topic of a prediction at ``level``."""
    return TOPIC_PREFIX + level.encode()


def topics_from(min_level: str = "low") -> list[bytes]:
    """The topics to subscribe to for predictions at ``min_level`` or above."""
    if min_level not in wire.LEVELS:
        raise ValueError(f"level must be one of {wire.LEVELS}, got {min_level!r}")
    return [topic(level) for level in wire.LEVELS[wire.LEVELS.index(min_level):]]


class PredictionStore(Protocol):
    """What the publisher needs of ``nomade.store.Store``."""

    def add_predictions(self, predictions: Iterable[Mapping[str, Any]]) -> int: ...


class Publisher:
    """Sends prediction bodies on a bound PUB socket and stores them."""

    def __init__(self, sock: zmq.Socket, store: PredictionStore, sender: str) -> None:
        self.sock = sock
        self.store = store
        self.sender = sender
        self.seq = 0

    def publish(self, predictions: list[dict[str, Any]]) -> list[wire.Message]:
        """Store, then send, every prediction body; the messages sent. A body the wire
        refuses is logged and skipped (never sent, never stored).

        Each body is validated once, by ``wire.encode`` of the draft message (``make``
        then ``encode`` would turn it into its wire array twice); the message returned
        holds the body as given (missing keys None). Both frames go out with ``send`` (``send_multipart``
        checks its frames again in Python: 3x the cost for 10,000 messages a tick)."""
        messages, frames = [], []
        for body in predictions:
            if body.keys() != _KEYS:   # a Message body has exactly these keys (missing: None)
                body = {k: body.get(k) for k in wire.FIELDS["prediction"]} if _KEYS.issuperset(body) else body
            msg = wire.Message(wire.PROTOCOL_VERSION, "prediction", self.sender, self.seq, body["ts"], body)
            try:
                frames.append(wire.encode(msg))
            except wire.WireError as e:
                log.error("job %s: prediction not published: %s", body.get("job_id"), e)
                continue
            messages.append(msg)
            self.seq += 1
        if messages:
            self.store.add_predictions(m.body for m in messages)
        topics = {level: topic(level) for level in wire.LEVELS}
        send, more = self.sock.send, zmq.SNDMORE
        for m, frame in zip(messages, frames, strict=True):   # PUB drops for slow subscribers rather than blocking
            send(topics[m.body["level"]], more)
            send(frame)
        return messages
