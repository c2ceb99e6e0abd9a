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
        refuses is logged and skipped (never sent, never stored)."""
        messages = []
        for body in predictions:
            try:
                messages.append(wire.make("prediction", self.sender, self.seq, body, body["ts"]))
            except wire.WireError as e:
                log.error("job %s: prediction not published: %s", body.get("job_id"), e)
                continue
            self.seq += 1
        if messages:
            self.store.add_predictions(m.body for m in messages)
        topics = {level: topic(level) for level in wire.LEVELS}
        send = self.sock.send_multipart
        for m in messages:   # PUB drops for slow subscribers rather than blocking
            # ``make`` validated it: encoding need not validate again (half the cost)
            send([topics.get(m.body["level"]) or topic(m.body["level"]), wire.encode(m, validate=False)])
        return messages
