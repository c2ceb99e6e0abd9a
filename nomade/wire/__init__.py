"""The wire protocol: message kinds, the envelope, msgpack encode/decode and validation.

A frame is one msgpack map, the envelope::

    {"version": 1, "kind": "job.sample", "sender": "cn042", "seq": 17, "ts": 1.7e9,
     "body": [ ...fields of the kind, in the order of FIELDS[kind]... ]}

The body travels as an array in the order of ``FIELDS[kind]`` (a map of twenty keys
costs three times as much to unpack as an array; ingest must reach 100,000 samples/s on
one core). In Python every body is a ``dict`` keyed by those names. Nested records travel
the same way: ``parts`` as ``[gnn, lstm, autoencoder]``, each factor as ``[name, value,
normal, ratio, text]``, each batch item as ``[kind, seq, ts, body]``.

Compatibility: a field is never removed or moved; a newer minor revision only appends
optional fields (to a body, a nested record or a batch item). A decoder ignores trailing
fields it does not know and reads fields missing at the end as None, so an old collector
talks to a new agent and the reverse. A newer major ``version`` is refused. A batch item of
a kind this side does not know is skipped and counted in the batch body's ``skipped``.

``decode`` returns a valid ``Message`` or raises ``WireError`` (a ``ValueError``), for any
input whatever. Validation: exact types (``bool`` is not an int, an int is accepted where
a float is expected), finite numbers in range (counters >= 0 and < 2**63, fractions in
[0, 1], percentages in [0, 100]), bounded printable strings, bounded lists. An optional
field is None when unknown, never 0. Bounds on the frame (``MAX_FRAME_BYTES``) and on
every string, array and map length are applied while unpacking, before anything is
allocated; nesting deeper than msgpack's parse stack (1024) fails at once, and the schema
never reads deeper than four levels. A frame is first walked through without building
anything (``_skip_through``), so only a complete frame is unpacked: then every element an
array claims is there, and a frame of n bytes unpacks to at most about 64·n bytes of
objects (one empty list a byte), so ``MAX_FRAME_BYTES`` also bounds memory.

``make`` (and ``make_batch``, ``make_ack``) build messages through the same validation,
and ``encode`` validates again, so a frame that would be refused is never sent (a refused
frame in a collector's outbox would be resent forever).

The package: ``envelope`` (version, limits, ``Message``), ``values`` (field types and the
generated checks), ``schema`` (each kind's fields), ``parse`` (wire -> Message) and
``codec`` (the public functions).
"""

from __future__ import annotations

from nomade.wire.codec import decode, decode_rows, encode, level_for, make, make_ack, make_batch, make_fields
from nomade.wire.envelope import (
    FACTOR_FIELDS,
    LEVEL_THRESHOLDS,
    LEVELS,
    MAX_BATCH_ITEMS,
    MAX_FACTORS,
    MAX_FRAME_BYTES,
    MAX_INT,
    MAX_NAME_LEN,
    MAX_NODES,
    MAX_TEXT_LEN,
    MAX_TS,
    PARTS,
    PROTOCOL_VERSION,
    Message,
    WireError,
)
from nomade.wire.schema import FIELDS, ITEM_KINDS, KINDS, SCHEMAS
from nomade.wire.values import (
    AMOUNT,
    CODE,
    COUNT,
    FACTORS,
    FRACTION,
    JOB_ID,
    LEVEL,
    NAME,
    NAMES,
    OPT,
    PERCENT,
    REAL,
    REQ,
    SCORES,
    SECONDS,
    TEXT,
    TS,
    UID,
)

__all__ = ["AMOUNT", "CODE", "COUNT", "FACTORS", "FACTOR_FIELDS", "FIELDS", "FRACTION", "ITEM_KINDS",
           "JOB_ID", "KINDS", "LEVEL", "LEVELS", "LEVEL_THRESHOLDS", "MAX_BATCH_ITEMS", "MAX_FACTORS",
           "MAX_FRAME_BYTES", "MAX_INT", "MAX_NAME_LEN", "MAX_NODES", "MAX_TEXT_LEN", "MAX_TS", "NAME",
           "NAMES", "OPT", "PARTS", "PERCENT", "PROTOCOL_VERSION", "REAL", "REQ", "SCHEMAS", "SCORES",
           "SECONDS", "TEXT", "TS", "UID", "Message", "WireError", "decode", "decode_rows", "encode",
           "level_for", "make", "make_ack", "make_batch", "make_fields"]
