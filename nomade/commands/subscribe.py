"""``nomade subscribe``: the agent's prediction stream as JSON lines on stdout, for scripts.

Example::

    $ nomade subscribe --min-level high --user alice --count 1
    {"job_id": "4711", "user": "alice", "partition": "cpu", "nodes": ["cn01"],
     "risk": 0.83, "level": "critical", "parts": {"gnn": 0.8, "lstm": 0.9,
     "autoencoder": 0.7}, "factors": [{"name": "mem_frac", "value": 0.93, ...}],
     "ts": 1700000000.0, "model_version": "1700000000", "sender": "agent"}

(one line per prediction; wrapped here). The agent publishes one message per scored
job and tick on its PUB socket (``[agent] publish_endpoint``) as two frames: the topic
``prediction.LEVEL`` and the ``nomade.wire`` frame. ``--min-level`` subscribes to the
topics of that level and above, so the agent's socket filters; ``--user`` and
``--partition`` filter here.

PUB drops messages for a subscriber that does not keep up (ZeroMQ's high-water mark)
and for the moments before a subscriber connects: the stream is for watching, the
store (``nomade report``) is the record. A frame that does not decode is counted,
logged and skipped.

CURVE: with ``[security] curve_enabled`` the client key pair and the agent's
``server.key`` from the config are used; ``--server-key FILE`` (and ``--client-key``)
name them on the command line instead, e.g. on an admin laptop. The agent must have
authorized the client's public key (``nomade keys authorize``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nomade.config import Config, SecurityConfig, check_endpoint
from nomade.errors import NomadeError

NAME = "subscribe"
HELP = "print the agent's live predictions as JSON lines (filters: level, user, partition)"
#: Levels from lowest to highest (``nomade.wire.LEVELS``; repeated so that building the
#: parser does not import msgpack).
LEVELS: tuple[str, ...] = ("low", "moderate", "high", "critical")
TOPIC_PREFIX = b"prediction."

DESCRIPTION = """\
Prints each prediction the agent publishes as one JSON line (job_id, user, partition,
nodes, risk, level, parts, factors, ts, model_version, sender).

examples:
  nomade subscribe --min-level high                 high and critical only
  nomade subscribe --user alice --count 10          ten of alice's predictions, then exit
  nomade subscribe --endpoint tcp://agent:5556 --server-key server.key   remote, CURVE

PUB drops messages for a subscriber that does not keep up, and those sent before it
connected: use the stream to watch, the store (nomade report) as the record.
"""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``nomade watch`` (:func:`add_stream_arguments`) plus ``--count``."""
    parser.description = DESCRIPTION
    add_stream_arguments(parser)
    parser.add_argument("--count", type=_positive_int, metavar="N",
                        help="exit after printing N predictions")


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``, ``--min-level``, ``--user``, ``--partition``, ``--server-key``,
    ``--client-key``."""
    parser.add_argument("--endpoint", metavar="URL",
                        help="the agent's PUB endpoint (default: [agent] publish_endpoint), "
                             "e.g. tcp://agent-host:5556")
    parser.add_argument("--min-level", choices=LEVELS, default="low",
                        help="only predictions at this level or above (default: low, all)")
    parser.add_argument("--user", action="append", metavar="USER",
                        help="only this user's jobs (repeat for several)")
    parser.add_argument("--partition", action="append", metavar="PARTITION",
                        help="only jobs in this partition (repeat for several)")
    parser.add_argument("--server-key", type=Path, metavar="FILE",
                        help="use CURVE with the agent's public server.key FILE")
    parser.add_argument("--client-key", type=Path, metavar="FILE",
                        help="this client's public key file, its secret in FILE_secret "
                             "(default: [security] client key files)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print matching predictions until interrupted or ``--count`` is reached. Returns 0."""
    wanted = Filter.from_args(args)
    printed = 0
    with Subscription.from_args(args, cfg) as sub:
        for msg in sub.messages():
            if not wanted(msg.body):
                continue
            try:
                print(to_json(msg), flush=True)
            except BrokenPipeError:   # e.g. piped into head: the reader is gone
                _silence_stdout()
                return 0
            printed += 1
            if args.count is not None and printed >= args.count:
                return 0
    return 0


# ------------------------------------------------------------------ pieces shared with watch

def topics(min_level: str) -> list[bytes]:
    """The subscription prefixes for ``min_level`` and every level above it."""
    if min_level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {min_level!r}")
    return [TOPIC_PREFIX + lvl.encode() for lvl in LEVELS[LEVELS.index(min_level):]]


class Filter:
    """Keeps a prediction body whose user and partition are among the wanted ones
    (None: any)."""

    def __init__(self, users: Iterable[str] | None = None,
                 partitions: Iterable[str] | None = None) -> None:
        self.users = frozenset(users) if users else None
        self.partitions = frozenset(partitions) if partitions else None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filter:
        """From ``--user`` and ``--partition``."""
        return cls(args.user, args.partition)

    def __call__(self, body: Mapping[str, Any]) -> bool:
        return ((self.users is None or body.get("user") in self.users)
                and (self.partitions is None or body.get("partition") in self.partitions))


def to_json(msg: Any) -> str:
    """One JSON line of a prediction message: its body plus ``sender``."""
    return json.dumps({**msg.body, "sender": msg.sender}, separators=(", ", ": "))


class Subscription:
    """A SUB socket connected to the agent's PUB, subscribed to some levels.

    ``messages()`` yields decoded ``prediction`` messages; frames that fail to decode
    (or are not predictions) are counted in ``bad`` and skipped. Use as a context
    manager: the socket is closed with linger 0.
    """

    def __init__(self, endpoint: str, min_level: str, security: SecurityConfig,
                 server_key: Path | None = None, client_key: Path | None = None) -> None:
        import zmq  # lazily: building the parser must not import zmq

        from nomade import wire
        self._decode: Callable[[bytes], Any] = wire.decode
        self._error: type[Exception] = wire.WireError
        self.endpoint = endpoint
        self.bad = 0
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
        try:
            _secure(self.sock, security, server_key, client_key)
            for topic in topics(min_level):
                self.sock.setsockopt(zmq.SUBSCRIBE, topic)
            self.sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise NomadeError(f"cannot connect to {endpoint}: {exc}") from None
        except BaseException:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

    @classmethod
    def from_args(cls, args: argparse.Namespace, cfg: Config) -> Subscription:
        """From the stream options of :func:`add_stream_arguments` and the config.
        Without CURVE, only a loopback endpoint (``nomade.config.check_endpoint``)."""
        endpoint = args.endpoint or cfg.agent.publish_endpoint
        if args.server_key is None:
            check_endpoint(cfg, "--endpoint" if args.endpoint else "agent.publish_endpoint", endpoint)
        return cls(endpoint, args.min_level, cfg.security, args.server_key, args.client_key)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (linger 0) and its context."""
        self.sock.close(linger=0)
        self._ctx.term()

    def receive(self, timeout_s: float) -> Any | None:
        """The next valid prediction within ``timeout_s`` seconds, else None."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._poller.poll(left_ms):
                return None
            msg = self._decode_parts(self.sock.recv_multipart())
            if msg is not None:
                return msg
            if time.monotonic() >= deadline:
                return None

    def messages(self) -> Iterator[Any]:
        """Valid predictions, forever (until the caller stops iterating)."""
        while True:
            msg = self.receive(3600.0)
            if msg is not None:
                yield msg

    def _decode_parts(self, parts: list[bytes]) -> Any | None:
        try:
            if len(parts) != 2 or not parts[0].startswith(TOPIC_PREFIX):
                raise self._error(f"expected [topic, frame], got {len(parts)} frame(s)")
            msg = self._decode(parts[1])
            if msg.kind != "prediction":
                raise self._error(f"expected a prediction, got kind {msg.kind!r}")
        except self._error as exc:
            self.bad += 1
            if self.bad & (self.bad - 1) == 0:   # 1st, 2nd, 4th, 8th ...: rate-limited
                log.warning("%s: skipped a bad frame (%d so far): %s", self.endpoint, self.bad, exc)
            return None
        return msg


def _secure(sock: Any, security: SecurityConfig, server_key: Path | None,
            client_key: Path | None) -> None:
    """CURVE on ``sock``: from the command line when ``server_key`` is given, else as
    the config says (nothing when ``curve_enabled`` is false)."""
    from nomade import zmqkeys

    if server_key is None:
        if client_key is not None:
            raise NomadeError("--client-key needs --server-key (the agent's public server.key)")
        zmqkeys.secure_client(sock, security)
        return
    files = security.key_files()
    public = client_key or files.client_public_key_file
    secret = Path(f"{public}_secret") if client_key else files.client_secret_key_file
    for path in (public, secret):
        if not path.is_file():
            raise NomadeError(f"CURVE client key file {path} is missing; create a pair with: "
                              "nomade keys generate --client, then authorize its .key on the agent")
    pair = zmqkeys.load_keypair(public, secret)
    sock.curve_publickey = pair.public
    sock.curve_secretkey = pair.secret
    sock.curve_serverkey = zmqkeys.load_public_key(server_key)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _silence_stdout() -> None:
    """After a broken pipe, stop Python's exit-time flush from failing again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
