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
"""

from __future__ import annotations

import functools
import operator
import re
import reprlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import msgpack

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


# ---------------------------------------------------------------- value types
#
# A type is a Python expression over one value. Each kind's body validator is generated
# from the expressions of its fields (as dataclasses and namedtuple generate code): one
# straight-line test with no call per field, about 0.1 microsecond a field. The same
# expression, compiled alone, names the culprit when a body fails.

_JOB_ID = re.compile(r"[0-9]{1,20}(?:_[0-9]{1,10})?(?:\+[0-9]{1,6})?")
_FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class _Type:
    """A field type: ``expr`` is a Python expression over ``{x}``, true when x is valid.

    ``convert`` (structured types) validates a wire value into its Python form and raises
    WireError; ``to_wire`` turns the Python form back.
    """

    desc: str
    expr: str
    convert: Callable[[Any], Any] | None = None
    to_wire: Callable[[Any], Any] | None = None   # also copies lists

    @functools.cached_property
    def ok(self) -> Callable[[Any], bool]:
        """``ok(value)``: True when ``value`` (not None) is valid for this type."""
        predicate: Callable[[Any], bool] = eval(  # noqa: S307 (text of this module only)
            f"lambda x: {self.expr.format(x='x')}", dict(_NAMESPACE))
        return predicate


def _int_type(lo: int, hi: int, desc: str) -> _Type:
    return _Type(desc, f"(type({{x}}) is int and {lo!r} <= {{x}} <= {hi!r})")


def _num_type(lo: float, hi: float, desc: str) -> _Type:
    # A chained comparison is false for NaN, and the bounds are finite: no inf either.
    return _Type(desc, f"((type({{x}}) is float or type({{x}}) is int) "
                       f"and {float(lo)!r} <= {{x}} <= {float(hi)!r})")


def _is_names(v: Any) -> bool:
    return type(v) is list and len(v) <= MAX_NODES and all(map(_NAME_OK, v))


def _show(v: Any) -> str:
    """A short, safe description of a bad value for an error message."""
    return f"{_REPR.repr(v)} ({type(v).__name__})"


def _record_to_wire(value: Any, keys: tuple[str, ...], what: str) -> Any:
    """A dict record as its wire array (missing keys None, unknown keys refused); any other
    value unchanged, for validation to name."""
    if type(value) is not dict and not isinstance(value, Mapping):
        return value
    if not _KEYSETS[keys].issuperset(value):
        unknown = sorted(map(str, set(value) - set(keys)))
        raise WireError(f"{what}: unknown keys {unknown}; known: {list(keys)}")
    return list(map(value.get, keys))


def _copy_list(v: Any) -> Any:
    """A copy of a list or tuple (a message must not share its maker's list)."""
    return list(v) if type(v) is list or type(v) is tuple else v


def _fit(arr: list[Any], n: int) -> list[Any]:
    """``arr`` cut or padded with None to ``n`` fields (newer peers append fields)."""
    return arr[:n] if len(arr) > n else arr + [None] * (n - len(arr))


def _check_record(fields: tuple[_Field, ...], arr: list[Any], prefix: str = "") -> None:
    """WireError naming the first invalid field of ``arr`` (already fitted), if any;
    ``prefix`` is the path of a nested record (``"parts."``)."""
    for (name, typ, nullable), v in zip(fields, arr):
        if not ((nullable and v is None) or (v is not None and typ.ok(v))):
            missing = " (missing)" if v is None else ""
            raise WireError(f"field {prefix + name!r}: expected {typ.desc}"
                            f"{' or None' if nullable else ''}, got {_show(v)}{missing}")


def _record(fast: Callable[[Any], dict[str, Any] | None], fields: tuple[_Field, ...],
            arr: Any, path: str = "") -> dict[str, Any]:
    """The dict of a wire record (a body, or the nested record at ``path``), by its
    generated check ``fast``; WireError naming the first invalid field."""
    record = fast(arr)
    if record is None:
        if type(arr) is not list:
            raise WireError(f"{path or 'body'}: expected an array of fields, got {_show(arr)}")
        arr = _fit(arr, len(fields))
        record = fast(arr)
        if record is None:
            _check_record(fields, arr, f"{path}." if path else "")
            raise WireError(f"{path or 'body'}: invalid")  # unreachable: one rule, two forms
    return record


def _parts_convert(v: Any) -> dict[str, float | None]:
    return _record(_PARTS_FAST, _PART_FIELDS, v, "parts")


def _parts_to_wire(v: Any) -> Any:
    return _record_to_wire(v, PARTS, "field 'parts'")


def _factors_convert(v: Any) -> list[dict[str, Any]]:
    if type(v) is not list or len(v) > MAX_FACTORS:
        raise WireError(f"field 'factors': expected a list of at most {MAX_FACTORS} factors, "
                        f"got {_show(v)}")
    return [_record(_FACTOR_FAST, _FACTOR_SCHEMA, f, f"factors[{i}]") for i, f in enumerate(v)]


def _factors_to_wire(v: Any) -> Any:
    if not isinstance(v, (list, tuple)):
        return v
    return [_record_to_wire(f, FACTOR_FIELDS, f"field 'factors[{i}]'") for i, f in enumerate(v)]


COUNT = _int_type(0, MAX_INT, "an integer in [0, 2**63)")
UID = _int_type(0, 2**32 - 1, "an integer in [0, 2**32)")
CODE = _int_type(0, 255, "an integer in [0, 255]")
TS = _num_type(0, MAX_TS, f"a POSIX time in [0, {MAX_TS:g}]")
SECONDS = _num_type(0, 1e15, "a number of seconds in [0, 1e15]")
AMOUNT = _num_type(0, 1e18, "a number in [0, 1e18]")
PERCENT = _num_type(0, 100, "a percentage in [0, 100]")
FRACTION = _num_type(0, 1, "a number in [0, 1]")
REAL = _num_type(-_FLOAT_MAX, _FLOAT_MAX, "a finite number")
JOB_ID = _Type("a Slurm job id such as '123', '123_4' or '123+0'",
               "(type({x}) is str and ({x}.isdigit() and {x}.isascii() and len({x}) <= 20 "
               "or _job_id({x}) is not None))")
NAME = _Type(f"a printable name without spaces, 1..{MAX_NAME_LEN} characters",
             f"(type({{x}}) is str and 0 < len({{x}}) <= {MAX_NAME_LEN} "
             "and {x}.isprintable() and ' ' not in {x})")
TEXT = _Type(f"printable text of at most {MAX_TEXT_LEN} characters",
             f"(type({{x}}) is str and len({{x}}) <= {MAX_TEXT_LEN} and {{x}}.isprintable())")
NAMES = _Type(f"a list of at most {MAX_NODES} names", "_is_names({x})", to_wire=_copy_list)
LEVEL = _Type(f"one of {LEVELS}", "(type({x}) is str and {x} in _levels)")
SCORES = _Type(f"a list of scores {PARTS}", "True", _parts_convert, _parts_to_wire)
FACTORS = _Type("a list of factors", "True", _factors_convert, _factors_to_wire)

REQ, OPT = False, True
_Field = tuple[str, _Type, bool]   # (name, type, nullable)
_PART_FIELDS: tuple[_Field, ...] = tuple((p, FRACTION, OPT) for p in PARTS)
#: The key set of every record, by its keys in wire order.
_KEYSETS: dict[tuple[str, ...], frozenset[str]] = {PARTS: frozenset(PARTS),
                                                    FACTOR_FIELDS: frozenset(FACTOR_FIELDS)}
_FACTOR_SCHEMA: tuple[_Field, ...] = (
    ("name", NAME, REQ), ("value", REAL, OPT), ("normal", REAL, OPT), ("ratio", REAL, OPT),
    ("text", TEXT, REQ),
)
_NAMESPACE = {"_job_id": _JOB_ID.fullmatch, "_is_names": _is_names,
              "_levels": frozenset(LEVELS)}


#: Body fields of every kind in wire order: (name, type, nullable). Append only.
SCHEMAS: dict[str, tuple[_Field, ...]] = {
    "job.start": (
        ("job_id", JOB_ID, REQ), ("user", NAME, OPT), ("uid", UID, OPT),
        ("partition", NAME, OPT), ("account", NAME, OPT), ("nodes", NAMES, OPT),
        ("num_nodes", COUNT, OPT), ("req_cpus", COUNT, OPT), ("req_mem_bytes", COUNT, OPT),
        ("req_gpus", COUNT, OPT), ("time_limit_s", SECONDS, OPT), ("submit_ts", TS, OPT),
        ("start_ts", TS, OPT), ("source", NAME, OPT), ("cluster", NAME, OPT),
    ),
    "job.end": (
        ("job_id", JOB_ID, REQ), ("end_ts", TS, OPT), ("exit_code", CODE, OPT),
        ("signal", CODE, OPT), ("state", NAME, OPT), ("source", NAME, OPT),
    ),
    "job.sample": (
        ("job_id", JOB_ID, REQ), ("node", NAME, REQ), ("ts", TS, REQ),
        ("alloc_cpus", COUNT, OPT), ("cpu_user_s", SECONDS, OPT),
        ("cpu_system_s", SECONDS, OPT), ("mem_bytes", COUNT, OPT),
        ("mem_peak_bytes", COUNT, OPT), ("mem_limit_bytes", COUNT, OPT),
        ("mem_limit_hits", COUNT, OPT), ("oom_kills", COUNT, OPT),
        ("page_faults", COUNT, OPT), ("major_faults", COUNT, OPT),
        ("swap_bytes", COUNT, OPT), ("read_bytes", COUNT, OPT), ("write_bytes", COUNT, OPT),
        ("nfs_write_bytes", COUNT, OPT), ("nprocs", COUNT, OPT), ("nthreads", COUNT, OPT),
        ("io_pressure", PERCENT, OPT), ("mem_pressure", PERCENT, OPT),
        ("fs_used_pct", PERCENT, OPT),
    ),
    "node.sample": (
        ("node", NAME, REQ), ("ts", TS, REQ), ("cpu_pct", PERCENT, OPT),
        ("iowait_pct", PERCENT, OPT), ("mem_used_bytes", COUNT, OPT),
        ("mem_total_bytes", COUNT, OPT), ("swap_used_bytes", COUNT, OPT),
        ("load1", AMOUNT, OPT), ("disk_read_Bps", AMOUNT, OPT),
        ("disk_write_Bps", AMOUNT, OPT), ("net_rx_Bps", AMOUNT, OPT),
        ("net_tx_Bps", AMOUNT, OPT), ("outbox_dropped", COUNT, OPT),
        ("outbox_write_errors", COUNT, OPT),
    ),
    "prediction": (
        ("job_id", JOB_ID, REQ), ("user", NAME, OPT), ("partition", NAME, OPT),
        ("nodes", NAMES, OPT), ("risk", FRACTION, REQ), ("level", LEVEL, REQ),
        ("parts", SCORES, REQ), ("factors", FACTORS, REQ), ("ts", TS, REQ),
        ("model_version", NAME, OPT),
    ),
    "ack": (("seq", COUNT, REQ),),
}

#: Kinds that may be items of a batch.
ITEM_KINDS: tuple[str, ...] = ("job.start", "job.end", "job.sample", "node.sample", "prediction")
#: Every kind.
KINDS: tuple[str, ...] = (*ITEM_KINDS, "batch", "ack")
#: Body keys of every kind, in wire order.
FIELDS: dict[str, tuple[str, ...]] = {k: tuple(f[0] for f in s) for k, s in SCHEMAS.items()}
FIELDS["batch"] = ("items",)


class _Body:
    """The compiled schema of one kind: validates a wire body array into a dict."""

    def __init__(self, kind: str, fields: tuple[_Field, ...]) -> None:
        self.kind = kind
        self.fields = fields
        self.keys = tuple(f[0] for f in fields)
        self.converts = tuple((name, typ.convert) for name, typ, _ in fields if typ.convert)
        self.to_wires = tuple((i, typ.to_wire) for i, (_, typ, _) in enumerate(fields)
                              if typ.to_wire)
        _KEYSETS[self.keys] = frozenset(self.keys)
        self.fast: Callable[[Any], dict[str, Any] | None] = _compile_body(fields)

    def decode(self, arr: Any) -> dict[str, Any]:
        """The body dict of wire array ``arr``; WireError if it is invalid."""
        try:
            body = _record(self.fast, self.fields, arr)
            for name, convert in self.converts:
                body[name] = convert(body[name])
        except WireError as e:
            raise WireError(f"{self.kind} {e}") from None
        return body

    def to_wire(self, body: Mapping[str, Any]) -> list[Any]:
        """The wire array of a body dict; unknown keys refused, missing ones None."""
        arr = _record_to_wire(body, self.keys, f"{self.kind} body")
        if arr is body:
            raise WireError(f"{self.kind} body: expected a dict, got {_show(body)}")
        for i, to_wire in self.to_wires:
            arr[i] = to_wire(arr[i])
        return cast("list[Any]", arr)


def _compile_body(fields: tuple[_Field, ...]) -> Callable[[Any], dict[str, Any] | None]:
    """``check(arr)``: the body dict when ``arr`` is a list of exactly these fields, all
    valid (structured fields not yet converted); None otherwise."""
    names = [f"f{i}" for i in range(len(fields))]
    tests = []
    for var, (_, typ, nullable) in zip(names, fields):
        if typ.convert is None:
            test = typ.expr.format(x=var)
            # Present values are the common case: test them first.
            tests.append(f"({test} or {var} is None)" if nullable else test)
    source = (
        "def check(arr):\n"
        f"    if type(arr) is not list or len(arr) != {len(fields)}:\n"
        "        return None\n"
        f"    {', '.join(names)}, = arr\n"
        f"    if {' and '.join(tests) or 'True'}:\n"
        f"        return {{{', '.join(f'{f[0]!r}: {v}' for f, v in zip(fields, names))}}}\n"
        "    return None\n")
    namespace: dict[str, Any] = dict(_NAMESPACE)
    exec(source, namespace)  # noqa: S102 (text built from this module's constants only)
    check: Callable[[Any], dict[str, Any] | None] = namespace["check"]
    return check


_PARTS_FAST = _compile_body(_PART_FIELDS)
_FACTOR_FAST = _compile_body(_FACTOR_SCHEMA)
_BODIES: dict[str, _Body] = {k: _Body(k, s) for k, s in SCHEMAS.items()}
_ITEM_BODIES: dict[str, _Body] = {k: _BODIES[k] for k in ITEM_KINDS}
# The generated check alone decodes an item whose body has no nested record to convert.
_FAST_ITEMS = {k: b.fast for k, b in _ITEM_BODIES.items() if not b.converts}
_SEQ_OK = COUNT.ok
_TS_OK = TS.ok
_NAME_OK = NAME.ok
_message = functools.partial(tuple.__new__, Message)   # skips __new__'s argument parsing


# ---------------------------------------------------------------- parse (wire -> Message)

def _parse(env: Any, rows: list[tuple[Any, ...]] | None = None,
           sample_items: bool = True) -> Message:
    """The Message of an unpacked envelope; WireError if anything is invalid. ``rows`` and
    ``sample_items``: see ``_parse_items``."""
    if type(env) is not dict:
        raise WireError(f"frame: expected a map (the envelope), got {_show(env)}")
    version, kind, sender, seq, ts, body = map(env.get, _ENVELOPE_KEYS)
    if type(version) is not int or version < 1:
        raise WireError(f"envelope 'version': expected an integer >= 1, got {_show(version)}")
    if version > PROTOCOL_VERSION:
        raise WireError(f"protocol version {version} is newer than this side speaks "
                        f"({PROTOCOL_VERSION}); upgrade this side")
    if type(kind) is not str or kind not in FIELDS:
        raise WireError(f"envelope 'kind': unknown kind {_show(kind)}; known: {list(KINDS)}")
    if not _NAME_OK(sender):
        raise WireError(f"envelope 'sender': expected {NAME.desc}, got {_show(sender)}")
    if not _SEQ_OK(seq):
        raise WireError(f"envelope 'seq': expected {COUNT.desc}, got {_show(seq)}")
    if not _TS_OK(ts):
        raise WireError(f"envelope 'ts': expected {TS.desc}, got {_show(ts)}")
    if kind == "batch":
        if type(body) is not list or not body:
            raise WireError(f"batch body: expected [items], got {_show(body)}")
        items, skipped = _parse_items(body[0], version, cast(str, sender), rows, sample_items)
        return _message((version, kind, sender, seq, ts, {"items": items, "skipped": skipped}))
    return _message((version, kind, sender, seq, ts, _BODIES[kind].decode(body)))


def _parse_items(raw: Any, version: int, sender: str,
                 rows: list[tuple[Any, ...]] | None = None,
                 sample_items: bool = True) -> tuple[list[Message], int]:
    """The items of a batch body and how many were skipped (kinds this side does not know).

    ``rows``, if given, receives the body of every ``job.sample`` item as a tuple in
    ``FIELDS["job.sample"]`` order, in item order (the store's column order); with
    ``sample_items`` False the ``job.sample`` items are only there, not among the items.
    """
    if type(raw) is not list or len(raw) > MAX_BATCH_ITEMS:
        raise WireError(f"batch items: expected a list of at most {MAX_BATCH_ITEMS} items, "
                        f"got {_show(raw)}")
    out: list[Message] = []
    if rows is None:
        skipped = _SAMPLE_ITEMS(raw, version, sender, out, [], _parse_item)
    elif sample_items:
        skipped = _SAMPLE_ITEMS_AND_ROWS(raw, version, sender, out, rows, _parse_item)
    else:
        skipped = _SAMPLE_ROWS(raw, version, sender, out, rows, _parse_item)
    return out, skipped


def _parse_item(i: int, item: Any, version: int, sender: str) -> Message | None:
    """Item ``i`` of a batch, any kind (None: a kind from a newer peer, skipped); WireError
    naming the item. The generated loop calls it for every item it does not take itself."""
    try:
        if type(item) is not list or len(item) < 4:
            raise WireError(f"expected [kind, seq, ts, body], got {_show(item)}")
        kind, seq, ts, arr = item if len(item) == 4 else item[:4]
        fast = _FAST_ITEMS.get(kind) if type(kind) is str else None
        if fast is None or (body := fast(arr)) is None:
            spec = _ITEM_BODIES.get(kind) if type(kind) is str else None
            if spec is None:
                if type(kind) is str and kind not in FIELDS:
                    return None   # a kind from a newer peer
                raise WireError(f"kind {_show(kind)} cannot be a batch item")
            body = spec.decode(arr)
        if type(seq) is not int or not 0 <= seq <= MAX_INT:
            raise WireError(f"'seq': expected {COUNT.desc}, got {_show(seq)}")
        if not (type(ts) is float or type(ts) is int) or not 0.0 <= ts <= MAX_TS:
            raise WireError(f"'ts': expected {TS.desc}, got {_show(ts)}")
        return _message((version, kind, sender, seq, ts, body))
    except WireError as e:
        raise WireError(f"batch item {i}: {e}") from None


def _compile_items(kind: str, messages: bool, rows: bool) -> Callable[..., int]:
    """``loop(raw, version, sender, out, rows, slow) -> skipped`` for the items of a batch.

    An item of ``kind`` that is valid as it stands is checked inline (the same expressions
    as ``_compile_body``, no call per item); any other item goes through ``slow(i, item,
    version, sender)`` (every kind, errors naming the item and field). The Message of every
    item goes to ``out``, except those of ``kind`` when ``messages`` is False; with ``rows``
    the body of every item of ``kind`` also goes to ``rows`` as a tuple in field order.
    """
    fields = SCHEMAS[kind]
    names = [f"f{i}" for i in range(len(fields))]
    tests = []
    for var, (_, typ, nullable) in zip(names, fields):
        if typ.convert is not None:
            raise ValueError(f"{kind}: a nested field cannot be checked inline")
        test = typ.expr.format(x=var)
        tests.append(f"({test} or {var} is None)" if nullable else test)
    keys = [f[0] for f in fields]
    made = (f"append(_message((version, {kind!r}, sender, seq, ts, "
            f"{{{', '.join(f'{k!r}: {v}' for k, v in zip(keys, names))}}})))")
    taken = [made] * messages + [f"row_sink(({', '.join(names)},))"] * rows
    slow_taken = ["append(msg)"] * messages + ["row_sink(_row(msg.body))"] * rows
    source = "\n".join([
        "def loop(raw, version, sender, out, rows, slow):",
        "    append = out.append",
        "    row_sink = rows.append",
        "    skipped = 0",
        "    for i, item in enumerate(raw):",
        f"        if type(item) is list and len(item) == 4 and item[0] == {kind!r}:",
        "            _, seq, ts, arr = item",
        f"            if (type(arr) is list and len(arr) == {len(fields)} and type(seq) is int",
        f"                    and 0 <= seq <= {MAX_INT!r}",
        "                    and (type(ts) is float or type(ts) is int)",
        f"                    and 0.0 <= ts <= {float(MAX_TS)!r}):",
        f"                {', '.join(names)}, = arr",
        f"                if {' and '.join(tests)}:",
        *(f"                    {line}" for line in taken),
        "                    continue",
        "        msg = slow(i, item, version, sender)",
        "        if msg is None:",
        "            skipped += 1",
        f"        elif msg.kind == {kind!r}:",
        *(f"            {line}" for line in slow_taken or ["pass"]),
        "        else:",
        "            append(msg)",
        "    return skipped",
        ""])
    namespace: dict[str, Any] = dict(_NAMESPACE, _message=_message, _row=operator.itemgetter(*keys))
    exec(source, namespace)  # noqa: S102 (text built from this module's constants only)
    loop: Callable[..., int] = namespace["loop"]
    return loop


_SAMPLE_ITEMS = _compile_items("job.sample", messages=True, rows=False)
_SAMPLE_ITEMS_AND_ROWS = _compile_items("job.sample", messages=True, rows=True)
_SAMPLE_ROWS = _compile_items("job.sample", messages=False, rows=True)


# ---------------------------------------------------------------- Message -> wire

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
    for level, threshold in zip(LEVELS, LEVEL_THRESHOLDS):
        if risk < threshold:
            return level
    return LEVELS[-1]


__all__ = ["FACTOR_FIELDS", "FIELDS", "ITEM_KINDS", "KINDS", "LEVELS", "LEVEL_THRESHOLDS",
           "MAX_BATCH_ITEMS", "MAX_FRAME_BYTES", "PARTS", "PROTOCOL_VERSION", "SCHEMAS",
           "Message", "WireError", "decode", "decode_rows", "encode", "level_for", "make",
           "make_ack", "make_batch"]
