"""The envelope: protocol version, limits, levels, and the ``Message`` a frame decodes to."""

from __future__ import annotations

import reprlib
from typing import Any, NamedTuple

#: Major protocol version; a peer sending a newer one is refused.
PROTOCOL_VERSION = 1
#: Largest frame accepted or produced (set the ZeroMQ socket's MAXMSGSIZE to it too).
MAX_FRAME_BYTES = 2 * 1024 * 1024
#: Most items in one batch.
MAX_BATCH_ITEMS = 4096
#: Longest name (node, user, partition, ...) in characters.
MAX_NAME_LEN = 255
#: Longest free text (a factor's text) in characters.
MAX_TEXT_LEN = 1024
#: Most node names in one list.
MAX_NODES = 65536
#: Most factors in one prediction.
MAX_FACTORS = 64
#: Largest integer counter (SQLite stores signed 64-bit integers).
MAX_INT = 2**63 - 1
#: Latest timestamp accepted (POSIX seconds; the year 2286).
MAX_TS = 1e10

#: Risk levels from lowest to highest.
LEVELS: tuple[str, ...] = ("low", "moderate", "high", "critical")
#: Lower bounds of "moderate", "high" and "critical" (DESIGN: < 0.3 low ... >= 0.8 critical).
LEVEL_THRESHOLDS: tuple[float, ...] = (0.3, 0.6, 0.8)
#: Keys of a prediction's ``parts``, in wire order.
PARTS: tuple[str, ...] = ("gnn", "lstm", "autoencoder")
#: Keys of one prediction factor, in wire order.
FACTOR_FIELDS: tuple[str, ...] = ("name", "value", "normal", "ratio", "text")

_UNPACK_LIMITS = dict(
    raw=False, strict_map_key=True, use_list=True,
    max_str_len=4 * MAX_TEXT_LEN, max_bin_len=4 * MAX_TEXT_LEN, max_ext_len=0,
    max_array_len=MAX_NODES, max_map_len=256,
)
_SKIP_LIMITS = {k: v for k, v in _UNPACK_LIMITS.items() if k.startswith("max_")}
_ENVELOPE_KEYS = ("version", "kind", "sender", "seq", "ts", "body")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


class WireError(ValueError):
    """A frame or message that is not valid; the text says what and where."""


class Message(NamedTuple):
    """One message. Build it with ``make`` (validated), or get it from ``decode``.

    Immutable, with attribute access (``msg.kind``); a named tuple rather than a
    dataclass because ingest builds 100,000 of them a second and a tuple costs a fifth.
    ``body`` is a dict with exactly the keys of ``FIELDS[kind]`` (a batch's also has
    ``skipped``); treat it as read-only. A message is not hashable (its body is a dict).
    """

    version: int
    kind: str
    sender: str
    seq: int
    ts: float
    body: dict[str, Any]


def _show(v: Any) -> str:
    """A short, safe description of a bad value for an error message."""
    return f"{_REPR.repr(v)} ({type(v).__name__})"

