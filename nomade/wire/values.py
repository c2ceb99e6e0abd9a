"""Value types of the wire fields, and the generated checks built from them.

A type is a Python expression over one value. Each kind's body validator is generated
from the expressions of its fields (as dataclasses and namedtuple generate code): one
straight-line test with no call per field, about 0.1 microsecond a field. The same
expression, compiled alone, names the culprit when a body fails.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nomade.wire.envelope import (
    FACTOR_FIELDS,
    LEVELS,
    MAX_FACTORS,
    MAX_INT,
    MAX_NAME_LEN,
    MAX_NODES,
    MAX_TEXT_LEN,
    MAX_TS,
    PARTS,
    WireError,
    _show,
)

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
    for (name, typ, nullable), v in zip(fields, arr, strict=True):
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
#: The value types by name, as ``nomade.jobrecord`` names them.
BY_NAME: dict[str, _Type] = {
    "COUNT": COUNT, "UID": UID, "CODE": CODE, "TS": TS, "SECONDS": SECONDS, "AMOUNT": AMOUNT,
    "PERCENT": PERCENT, "FRACTION": FRACTION, "REAL": REAL, "JOB_ID": JOB_ID, "NAME": NAME,
    "TEXT": TEXT, "NAMES": NAMES, "LEVEL": LEVEL, "SCORES": SCORES, "FACTORS": FACTORS,
}

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

def _compile_body(fields: tuple[_Field, ...]) -> Callable[[Any], dict[str, Any] | None]:
    """``check(arr)``: the body dict when ``arr`` is a list of exactly these fields, all
    valid (structured fields not yet converted); None otherwise."""
    names = [f"f{i}" for i in range(len(fields))]
    tests = []
    for var, (_, typ, nullable) in zip(names, fields, strict=True):
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
        f"        return {{{', '.join(f'{f[0]!r}: {v}' for f, v in zip(fields, names, strict=True))}}}\n"
        "    return None\n")
    namespace: dict[str, Any] = dict(_NAMESPACE)
    exec(source, namespace)  # noqa: S102 (text built from this module's constants only)
    check: Callable[[Any], dict[str, Any] | None] = namespace["check"]
    return check


_PARTS_FAST = _compile_body(_PART_FIELDS)
_FACTOR_FAST = _compile_body(_FACTOR_SCHEMA)
_NAME_OK = NAME.ok
