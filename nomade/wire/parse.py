"""Wire -> Message: the envelope, batch items (inline-checked job samples), rows."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, cast

from nomade.wire.envelope import (
    _ENVELOPE_KEYS,
    MAX_BATCH_ITEMS,
    MAX_INT,
    MAX_TS,
    PROTOCOL_VERSION,
    Message,
    WireError,
    _show,
)
from nomade.wire.schema import _BODIES, _FAST_ITEMS, _ITEM_BODIES, FIELDS, KINDS, SCHEMAS
from nomade.wire.values import _NAME_OK, _NAMESPACE, COUNT, NAME, TS

_SEQ_OK = COUNT.ok
_TS_OK = TS.ok
_message = functools.partial(tuple.__new__, Message)   # skips __new__'s argument parsing

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
    for var, (_, typ, nullable) in zip(names, fields, strict=True):
        if typ.convert is not None:
            raise ValueError(f"{kind}: a nested field cannot be checked inline")
        test = typ.expr.format(x=var)
        tests.append(f"({test} or {var} is None)" if nullable else test)
    keys = [f[0] for f in fields]
    made = (f"append(_message((version, {kind!r}, sender, seq, ts, "
            f"{{{', '.join(f'{k!r}: {v}' for k, v in zip(keys, names, strict=True))}}})))")
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

