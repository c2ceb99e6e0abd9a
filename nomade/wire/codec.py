"""The public API: ``decode``/``encode`` of frames (bounded unpacking), ``make*``
builders, ``level_for``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from nomade.wire.envelope import (
    _REPR,
    _SKIP_LIMITS,
    _UNPACK_LIMITS,
    LEVEL_THRESHOLDS,
    LEVELS,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Message,
    WireError,
    _show,
)
from nomade.wire.parse import _SEQ_OK, _TS_OK, _message, _parse
from nomade.wire.schema import _BODIES, _ITEM_BODIES, ITEM_KINDS, KINDS
from nomade.wire.values import _NAME_OK


def _to_wire(msg: Message) -> dict[str, Any]:
    """The envelope map of ``msg`` (not yet validated)."""
    if not isinstance(msg, Message):
        raise WireError(f"expected a Message, got {_show(msg)}")
    if type(msg.kind) is not str:
        raise WireError(f"kind: expected a str, got {_show(msg.kind)}")
    if msg.kind == "batch":
        body: list[Any] = [_items_to_wire(msg)]
    elif msg.kind in _BODIES:
        body = _BODIES[msg.kind].to_wire(msg.body)
    else:
        raise WireError(f"unknown kind {_show(msg.kind)}; known: {list(KINDS)}")
    return {"version": msg.version, "kind": msg.kind, "sender": msg.sender, "seq": msg.seq,
            "ts": msg.ts, "body": body}


def _items_to_wire(batch: Message) -> list[list[Any]]:
    items = batch.body.get("items") if isinstance(batch.body, Mapping) else None
    if not isinstance(items, (list, tuple)):
        raise WireError(f"batch body: expected {{'items': [Message, ...]}}, got {_show(batch.body)}")
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, Message) or type(m.kind) is not str or m.kind not in _ITEM_BODIES:
            raise WireError(f"batch item {i}: expected a Message of a kind in {ITEM_KINDS}, "
                            f"got {_show(m)}")
        if m.sender != batch.sender or m.version != batch.version:
            raise WireError(f"batch item {i}: sender/version {m.sender!r}/{m.version} differ "
                            f"from the batch's {batch.sender!r}/{batch.version}")
        out.append([m.kind, m.seq, m.ts, _ITEM_BODIES[m.kind].to_wire(m.body)])
    return out


# ---------------------------------------------------------------- public API

def decode(data: bytes | bytearray | memoryview) -> Message:
    """The valid Message of one frame; ``WireError`` for anything else, whatever ``data`` is."""
    return _parse(_unpack(data))


def decode_rows(data: bytes | bytearray | memoryview, *, sample_items: bool = True
                ) -> tuple[Message, list[tuple[Any, ...]]]:
    """``decode(data)``, and the bodies of a batch's ``job.sample`` items as tuples in
    ``FIELDS["job.sample"]`` order (the store's column order), in item order; ``[]`` for a
    message of another kind. The same validation and errors as ``decode``: the ingest path,
    which hands the rows to the store without a per-sample lookup by name.

    ``sample_items=False`` leaves the ``job.sample`` items out of the batch's ``items``
    (they are only rows then: no dict and no Message a sample, about 1 µs a sample less).
    """
    rows: list[tuple[Any, ...]] = []
    return _parse(_unpack(data), rows, sample_items), rows


def _unpack(data: bytes | bytearray | memoryview) -> Any:
    """The unpacked envelope of a frame, within the size and unpack limits; WireError."""
    try:
        size = len(data)
    except TypeError:
        raise WireError(f"frame: expected bytes, got {type(data).__name__}") from None
    if size > MAX_FRAME_BYTES:
        raise WireError(f"frame: {size} bytes, more than MAX_FRAME_BYTES ({MAX_FRAME_BYTES})")
    try:
        _skip_through(data)
        return msgpack.unpackb(data, **_UNPACK_LIMITS)
    except msgpack.OutOfData:
        raise WireError("frame: incomplete msgpack (an array or map claims more than follows)") from None
    except msgpack.StackError:
        raise WireError("frame: nested deeper than msgpack's parse stack (1024)") from None
    except Exception as e:   # msgpack raises ValueError, TypeError and its own for bad bytes
        raise WireError(f"frame: not valid msgpack within the limits: {type(e).__name__}: "
                        f"{_REPR.repr(str(e))}") from None


def _skip_through(data: bytes | bytearray | memoryview) -> None:
    """Walk the whole frame without building anything (msgpack's C ``skip``: ~3 % of an
    unpack); ``OutOfData`` or ``StackError`` if it is incomplete or nested too deep.
    ``unpackb`` allocates each array's claimed length before reading its elements, so
    without this 3 KB of nested array headers would claim tens of MiB."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1), **_SKIP_LIMITS)
    unpacker.feed(data)
    unpacker.skip()


def encode(msg: Message, *, validate: bool = True) -> bytes:
    """The frame of ``msg``; ``WireError`` if ``msg`` is not valid or the frame too large.

    ``validate=False`` skips the second validation of a message that ``make`` or ``decode``
    returned (it halves the cost: the agent publishes thousands of predictions a tick).
    """
    wire = _to_wire(msg)
    if validate:
        _parse(wire)
    data: bytes = msgpack.packb(wire, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise WireError(f"frame of {len(data)} bytes is more than MAX_FRAME_BYTES "
                        f"({MAX_FRAME_BYTES}); send fewer items per batch")
    return data


def make(kind: str, sender: str, seq: int, body: Mapping[str, Any],
         ts: float | None = None) -> Message:
    """A validated Message (``ts`` defaults to now); ``WireError`` if anything is invalid.

    ``body`` holds the keys of ``FIELDS[kind]``: a missing one is None (unknown), an unknown
    one is refused (a typo would otherwise be lost). Lists in ``body`` are copied.
    For a batch use ``make_batch``, for an ack ``make_ack``.
    """
    draft = Message(PROTOCOL_VERSION, kind, sender, seq,
                    time.time() if ts is None else ts, body)  # type: ignore[arg-type]
    return _parse(_to_wire(draft))


def make_fields(kind: str, sender: str, seq: int, fields: list[Any], ts: float) -> Message:
    """``make`` for a body given as its field values in ``FIELDS[kind]`` order (a bulk
    import's rows): the same checks of every field, without the round trip of a dict
    through the wire form. ``WireError`` if anything is invalid."""
    if not (_NAME_OK(sender) and _SEQ_OK(seq) and _TS_OK(ts)):
        raise WireError(f"{kind}: invalid sender {_show(sender)}, seq {_show(seq)} or ts {_show(ts)}")
    return _message((PROTOCOL_VERSION, kind, sender, seq, ts, _BODIES[kind].decode(fields)))


def make_batch(sender: str, seq: int, items: Sequence[Message],
               ts: float | None = None) -> Message:
    """The batch ``seq`` of ``sender`` holding ``items`` (``sender``'s, at most
    ``MAX_BATCH_ITEMS``, of the kinds in ``ITEM_KINDS``)."""
    return make("batch", sender, seq, {"items": list(items)}, ts)


def make_ack(sender: str, acked_seq: int, *, seq: int = 0, ts: float | None = None) -> Message:
    """The ack, sent by ``sender``, of the batch whose seq is ``acked_seq``."""
    return make("ack", sender, seq, {"seq": acked_seq}, ts)


def level_for(risk: float) -> str:
    """The level of a risk in [0, 1]: < 0.3 low, < 0.6 moderate, < 0.8 high, else critical.

    ValueError for NaN or a risk outside [0, 1].
    """
    if not 0.0 <= risk <= 1.0:
        raise ValueError(f"risk must be in [0, 1], got {risk!r}")
    for level, threshold in zip(LEVELS, LEVEL_THRESHOLDS, strict=False):  # the last level has no upper bound
        if risk < threshold:
            return level
    return LEVELS[-1]

