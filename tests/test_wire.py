"""The wire protocol: round trips, validation, compatibility, and that decode of any input
whatever returns a valid Message or raises WireError, nothing else."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nomade import wire as w
from nomade.wire import Message, WireError

TS = 1_700_000_000.5

SAMPLE: dict[str, Any] = {
    "job_id": "4242", "node": "cn042", "ts": TS, "alloc_cpus": 8, "cpu_user_s": 1234.5,
    "cpu_system_s": 12.25, "mem_bytes": 3 * 2**30, "mem_peak_bytes": 4 * 2**30,
    "mem_limit_bytes": 16 * 2**30, "mem_limit_hits": 0, "oom_kills": 0, "page_faults": 123456,
    "major_faults": 17, "swap_bytes": 0, "read_bytes": 2**40, "write_bytes": 2**33,
    "nfs_write_bytes": 2**31, "nprocs": 4, "nthreads": 40, "io_pressure": 1.25,
    "mem_pressure": None, "fs_used_pct": 97.5,
}
BODIES: dict[str, dict[str, Any]] = {
    "job.start": {
        "job_id": "123_4", "user": "alice", "uid": 1001, "partition": "gpu", "account": "physics",
        "nodes": ["cn001", "cn002"], "num_nodes": 2, "req_cpus": 64, "req_mem_bytes": 2**37,
        "req_gpus": 4, "time_limit_s": 86400.0, "submit_ts": TS - 600, "start_ts": TS,
        "source": "prolog", "cluster": "hpc1"},
    "job.end": {"job_id": "123+1", "end_ts": TS + 3600, "exit_code": 1, "signal": 9,
                "state": "OUT_OF_MEMORY", "source": "jobcomp"},
    "job.sample": SAMPLE,
    "node.sample": {
        "node": "cn042", "ts": TS, "cpu_pct": 87.5, "iowait_pct": 2.0, "mem_used_bytes": 2**36,
        "mem_total_bytes": 2**38, "swap_used_bytes": 0, "load1": 31.7, "disk_read_Bps": 1e6,
        "disk_write_Bps": 0, "net_rx_Bps": 12.5e6, "net_tx_Bps": None, "outbox_dropped": 2,
        "outbox_write_errors": 0},
    "prediction": {
        "job_id": "4242", "user": "alice", "partition": "gpu", "nodes": ["cn042"], "risk": 0.83,
        "level": "critical", "parts": {"gnn": 0.9, "lstm": None, "autoencoder": 0.7},
        "factors": [{"name": "mem_growth", "value": 3.5e9, "normal": 1.0e9, "ratio": 3.5,
                     "text": "memory grows 3.5x faster than in your completed jobs"}],
        "ts": TS, "model_version": "2026-11-29.1"},
    "ack": {"seq": 77},
}


def frame(body: Any, kind: str = "job.sample", **env: Any) -> bytes:
    """A hand-built frame, for what ``make`` would refuse to build."""
    envelope = {"version": 1, "kind": kind, "sender": "cn042", "seq": 5, "ts": TS, "body": body}
    envelope.update(env)
    return msgpack.packb(envelope, use_bin_type=True)


def sample_array(**changes: Any) -> list[Any]:
    return [changes.get(k, SAMPLE[k]) for k in w.FIELDS["job.sample"]]


def refused(data: bytes, match: str = "") -> str:
    with pytest.raises(WireError, match=match) as info:
        w.decode(data)
    return str(info.value)


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", sorted(BODIES))
def test_every_kind_round_trips(kind: str) -> None:
    msg = w.make(kind, "cn042", 9, BODIES[kind], ts=TS)
    assert msg.body == BODIES[kind]
    assert w.decode(w.encode(msg)) == msg


def test_batch_round_trips_with_items_of_every_kind() -> None:
    items = [w.make(k, "cn042", i, BODIES[k], ts=TS + i)
             for i, k in enumerate(w.ITEM_KINDS)]
    batch = w.make_batch("cn042", 3, items, ts=TS)
    got = w.decode(w.encode(batch))
    assert got == batch
    assert got.body == {"items": items, "skipped": 0}
    assert [m.sender for m in got.body["items"]] == ["cn042"] * len(items)


def test_ack_names_the_acknowledged_batch() -> None:
    ack = w.decode(w.encode(w.make_ack("agent", 41, ts=TS)))
    assert (ack.kind, ack.sender, ack.body) == ("ack", "agent", {"seq": 41})


def test_decode_rows_gives_job_samples_in_field_order_beside_the_message() -> None:
    items = [w.make("job.sample", "cn042", 1, SAMPLE, TS),
             w.make("node.sample", "cn042", 1, BODIES["node.sample"], TS),
             w.make("job.start", "cn042", 1, BODIES["job.start"], TS),
             w.make("job.sample", "cn042", 1, {**SAMPLE, "job_id": "9", "mem_pressure": 3.5}, TS)]
    data = w.encode(w.make_batch("cn042", 3, items, ts=TS))
    msg, rows = w.decode_rows(data)
    assert msg == w.decode(data)
    assert rows == [tuple(SAMPLE[k] for k in w.FIELDS["job.sample"]),
                    tuple({**SAMPLE, "job_id": "9", "mem_pressure": 3.5}[k]
                          for k in w.FIELDS["job.sample"])]
    assert w.decode_rows(data, sample_items=False) == (
        msg._replace(body={"items": items[1:3], "skipped": 0}), rows)
    ack = w.encode(w.make_ack("agent", 3))
    assert w.decode_rows(ack) == (w.decode(ack), [])


def test_decode_rows_takes_items_of_an_older_or_newer_peer_through_the_full_check() -> None:
    older = ["job.sample", 1, TS, sample_array()[:-2]]         # without the pressures
    newer = ["job.sample", 2, TS, sample_array() + [7, "x"], "item-extra"]
    data = frame([[older, newer]], kind="batch")
    msg, rows = w.decode_rows(data)
    assert [m.seq for m in msg.body["items"]] == [1, 2]
    assert rows == [tuple(sample_array()[:-2]) + (None, None), tuple(sample_array())]
    assert w.decode_rows(data, sample_items=False)[1] == rows


def test_decode_rows_refuses_what_decode_refuses_naming_the_item_and_field() -> None:
    good = ["job.sample", 1, TS, sample_array()]
    bad = ["job.sample", 1, TS, sample_array(mem_bytes=-1)]
    with pytest.raises(WireError, match=r"batch item 1: job.sample field 'mem_bytes'"):
        w.decode_rows(frame([[good, bad]], kind="batch"))


def test_decode_takes_any_bytes_like_object() -> None:
    data = w.encode(w.make("ack", "agent", 1, {"seq": 1}, ts=TS))
    assert w.decode(bytearray(data)) == w.decode(memoryview(data)) == w.decode(data)


def test_encode_without_validation_gives_the_same_frame() -> None:
    msg = w.make("prediction", "agent", 3, BODIES["prediction"], ts=TS)
    assert w.encode(msg, validate=False) == w.encode(msg)


def test_make_fills_unknown_fields_with_none_never_zero() -> None:
    msg = w.make("job.sample", "cn042", 1, {"job_id": "7", "node": "cn042", "ts": TS})
    assert set(msg.body) == set(w.FIELDS["job.sample"])
    assert msg.body["mem_bytes"] is None and msg.body["job_id"] == "7"


def test_make_refuses_unknown_keys_so_a_typo_is_not_lost() -> None:
    with pytest.raises(WireError, match="unknown keys.*mem_byte"):
        w.make("job.sample", "cn042", 1, {**SAMPLE, "mem_byte": 5})


def test_make_copies_lists_of_the_caller() -> None:
    nodes = ["cn001"]
    msg = w.make("job.start", "ctld", 1, {"job_id": "1", "nodes": nodes})
    nodes.append("cn002")
    assert msg.body["nodes"] == ["cn001"]


def test_make_stamps_now_by_default() -> None:
    assert w.make_ack("agent", 1).ts > TS


# ---------------------------------------------------------------- levels

@pytest.mark.parametrize(("risk", "level"), [
    (0.0, "low"), (0.2999, "low"), (0.3, "moderate"), (0.5999, "moderate"), (0.6, "high"),
    (0.7999, "high"), (0.8, "critical"), (1.0, "critical")])
def test_level_thresholds_are_those_of_the_design(risk: float, level: str) -> None:
    assert w.level_for(risk) == level
    assert w.LEVELS == ("low", "moderate", "high", "critical")


@pytest.mark.parametrize("risk", [math.nan, -0.1, 1.01])
def test_level_for_refuses_a_risk_outside_0_1(risk: float) -> None:
    with pytest.raises(ValueError, match="risk"):
        w.level_for(risk)


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize(("field", "value", "expected"), [
    ("mem_bytes", -1, "mem_bytes"),                  # negative counter
    ("mem_bytes", 2**63, "mem_bytes"),               # beyond SQLite's integer
    ("mem_bytes", True, "mem_bytes"),                # bool is not an int
    ("mem_bytes", 1.5, "mem_bytes"),                 # float where int expected
    ("mem_bytes", "12", "mem_bytes"),
    ("mem_bytes", [1], "mem_bytes"),
    ("cpu_user_s", math.nan, "cpu_user_s"),
    ("cpu_user_s", math.inf, "cpu_user_s"),
    ("cpu_user_s", -0.5, "cpu_user_s"),
    ("cpu_user_s", False, "cpu_user_s"),
    ("io_pressure", 100.5, "io_pressure"),           # a percentage
    ("ts", None, r"'ts'.*\(missing\)"),               # required
    ("ts", 1e11, "'ts'"),
    ("job_id", "12 3", "job_id"),
    ("job_id", "abc", "job_id"),
    ("job_id", "", "job_id"),
    ("job_id", 123, "job_id"),                       # ids are strings
    ("node", "cn 1", "node"),                        # names have no spaces
    ("node", "cn\x1b[31m", "node"),                  # nor control characters
    ("node", "x" * 256, "node"),
    ("node", "", "node"),
])
def test_a_bad_field_is_refused_and_named(field: str, value: Any, expected: str) -> None:
    refused(frame(sample_array(**{field: value})), match=expected)
    with pytest.raises(WireError, match=expected):
        w.make("job.sample", "cn042", 1, {**SAMPLE, field: value})


_BAD_BY_TYPE: dict[str, list[Any]] = {
    "COUNT": [-1, 2**63, True, 1.5, "7", [1]],
    "SECONDS": [-0.5, 1e16, math.nan, math.inf, False, "1"],
    "PERCENT": [-0.1, 100.5, math.nan, True, "1"],
    "TS": [-1.0, 1e11, math.nan, True],
    "JOB_ID": ["abc", "", "12 3", 123, None],
    "NAME": ["cn 1", "", "x" * 256, "cn\x1b", 5, None],
}
_SAMPLE_BAD = [(name, bad) for name, typ, nullable in w.SCHEMAS["job.sample"]
               for tname, values in _BAD_BY_TYPE.items() if getattr(w, tname) is typ
               for bad in values + ([] if nullable else [None])]


def test_every_job_sample_field_has_bad_values_here() -> None:
    assert {name for name, _ in _SAMPLE_BAD} == set(w.FIELDS["job.sample"])


@pytest.mark.parametrize(("field", "value"), _SAMPLE_BAD)
def test_a_bad_field_of_a_batched_sample_refuses_the_batch_by_every_decoder(
        field: str, value: Any) -> None:
    good = ["job.sample", 1, TS, sample_array()]
    bad = ["job.sample", 1, TS, sample_array(**{field: value})]
    data = frame([[good, bad]], kind="batch")
    expected = rf"batch item 1: job.sample field '{field}'"
    refused(data, match=expected)
    for sample_items in (True, False):
        with pytest.raises(WireError, match=expected):
            w.decode_rows(data, sample_items=sample_items)


@pytest.mark.parametrize("job_id", ["1", "123_4", "123+0", "123_4+1"])
def test_slurm_job_id_forms_are_accepted(job_id: str) -> None:
    assert w.make("job.end", "n", 1, {"job_id": job_id}).body["job_id"] == job_id


@pytest.mark.parametrize(("kind", "changes", "expected"), [
    ("prediction", {"risk": 1.5}, "risk"),
    ("prediction", {"level": "severe"}, "level"),
    ("prediction", {"parts": {"gnn": -0.1}}, "parts.gnn"),
    ("prediction", {"parts": {"gnn": 0.1, "cnn": 0.2}}, "unknown keys"),
    ("prediction", {"factors": [{"name": "x", "value": math.nan, "text": ""}]}, "value"),
    ("prediction", {"factors": [{"name": "x", "text": "a\nb"}]}, "text"),
    ("prediction", {"factors": [{"name": "x"}] * 65}, "factors"),
    ("job.start", {"nodes": ["cn1", "cn 2"]}, "nodes"),
    ("job.start", {"nodes": "cn1"}, "nodes"),
    ("job.start", {"uid": 2**32}, "uid"),
    ("job.end", {"exit_code": 256}, "exit_code"),
    ("node.sample", {"cpu_pct": -1}, "cpu_pct"),
    ("ack", {"seq": None}, "seq"),
])
def test_bad_fields_of_other_kinds_are_refused(kind: str, changes: dict[str, Any],
                                               expected: str) -> None:
    with pytest.raises(WireError, match=expected):
        w.make(kind, "cn042", 1, {**BODIES[kind], **changes})


@pytest.mark.parametrize(("env", "expected"), [
    ({"version": 2}, "protocol version 2 is newer"),
    ({"version": 0}, "version"),
    ({"version": True}, "version"),
    ({"version": "1"}, "version"),
    ({"kind": "job.teleport"}, "unknown kind"),
    ({"kind": None}, "unknown kind"),
    ({"sender": "cn 42"}, "sender"),
    ({"sender": b"cn042"}, "sender"),
    ({"seq": -1}, "seq"),
    ({"seq": 1.0}, "seq"),
    ({"ts": math.inf}, "ts"),
])
def test_a_bad_envelope_is_refused(env: dict[str, Any], expected: str) -> None:
    refused(frame(sample_array(), **env), match=expected)


def test_a_frame_that_is_not_a_map_is_refused() -> None:
    refused(msgpack.packb([1, "job.sample"]), match="map")


def test_invalid_utf8_and_trailing_bytes_are_refused() -> None:
    refused(b"\xa2\xff\xfe", match="msgpack")
    refused(w.encode(w.make_ack("a", 1, ts=TS)) + b"\x00", match="msgpack")


def test_encode_refuses_a_message_built_without_make() -> None:
    with pytest.raises(WireError, match="job_id"):
        w.encode(Message(1, "job.sample", "cn042", 1, TS, {"job_id": "x y", "node": "n", "ts": TS}))
    with pytest.raises(WireError, match="unknown kind"):
        w.encode(Message(1, "bogus", "cn042", 1, TS, {}))
    with pytest.raises(WireError, match="Message"):
        w.encode({"kind": "ack"})  # type: ignore[arg-type]


# ---------------------------------------------------------------- batches

def test_batch_items_must_come_from_the_batch_sender() -> None:
    other = w.make("job.sample", "cn001", 1, SAMPLE)
    with pytest.raises(WireError, match="sender"):
        w.make_batch("cn042", 1, [other])


def test_a_batch_cannot_hold_a_batch_or_an_ack() -> None:
    inner = w.make_ack("cn042", 1)
    with pytest.raises(WireError, match="item 0"):
        w.make_batch("cn042", 1, [inner])
    refused(frame([[["batch", 1, TS, [[]]]]], kind="batch"), match="cannot be a batch item")


def test_batch_item_count_is_bounded() -> None:
    item = ["job.sample", 1, TS, sample_array()]
    assert len(w.decode(frame([[item] * w.MAX_BATCH_ITEMS], kind="batch")).body["items"]) \
        == w.MAX_BATCH_ITEMS
    refused(frame([[item] * (w.MAX_BATCH_ITEMS + 1)], kind="batch"), match="at most")


def test_a_bad_item_refuses_the_batch_and_names_the_item() -> None:
    good = ["job.sample", 1, TS, sample_array()]
    bad = ["job.sample", 2, TS, sample_array(oom_kills=-3)]
    refused(frame([[good, good, bad]], kind="batch"), match="item 2.*oom_kills")


@pytest.mark.parametrize(("seq", "ts"), [(-1, TS), (True, TS), (1.0, TS), (None, TS), (1, -1.0),
                                        (1, math.nan), (1, math.inf), (1, "now"), (1, None)])
def test_a_bad_item_seq_or_ts_is_refused(seq: Any, ts: Any) -> None:
    refused(frame([[["job.sample", seq, ts, sample_array()]]], kind="batch"), match="item 0")


def test_an_oversized_frame_is_refused_both_ways() -> None:
    refused(b"\x00" * (w.MAX_FRAME_BYTES + 1), match="MAX_FRAME_BYTES")
    big = {"name": "f", "text": "x" * w.MAX_TEXT_LEN}
    body = {**BODIES["prediction"], "factors": [big] * w.MAX_FACTORS}
    items = [w.make("prediction", "agent", i, body) for i in range(70)]
    with pytest.raises(WireError, match="MAX_FRAME_BYTES"):
        w.encode(w.make_batch("agent", 1, items))


# ---------------------------------------------------------------- compatibility

def test_an_older_peer_without_the_newest_fields_reads_as_unknown() -> None:
    msg = w.decode(frame(sample_array()[:-3]))
    assert msg.body["io_pressure"] is None and msg.body["mem_pressure"] is None
    assert msg.body["fs_used_pct"] is None
    assert msg.body["nthreads"] == SAMPLE["nthreads"]
    assert w.decode(frame(sample_array()[:-1])).body["io_pressure"] == SAMPLE["io_pressure"]


def test_a_newer_peer_s_extra_fields_and_keys_are_ignored() -> None:
    data = frame(sample_array() + [7, {"future": [1, 2]}], priority="high")
    assert w.decode(data).body == SAMPLE
    pred = w.make("prediction", "agent", 1, BODIES["prediction"], ts=TS)
    wire = msgpack.unpackb(w.encode(pred))
    wire["body"][6].append(0.5)                   # a fourth model part
    wire["body"][7][0].append("a new factor field")
    assert w.decode(msgpack.packb(wire)) == pred


def test_a_batch_item_of_a_newer_kind_is_skipped_and_counted() -> None:
    items = [["job.sample", 1, TS, sample_array()], ["gpu.sample", 2, TS, [1, 2]],
             ["job.sample", 3, TS, sample_array(), "extra"]]
    msg = w.decode(frame([items], kind="batch"))
    assert [m.seq for m in msg.body["items"]] == [1, 3]
    assert msg.body["skipped"] == 1


# ---------------------------------------------------------------- hostile frames

def _envelope_with_raw_body(raw_body: bytes) -> bytes:
    head = msgpack.packb({"version": 1, "kind": "job.sample", "sender": "n", "seq": 1,
                          "ts": TS})
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb("body") + raw_body


def test_nesting_bomb_of_100k_arrays_is_refused() -> None:
    refused(_envelope_with_raw_body(b"\x91" * 100_000 + b"\x00"), match="nested")
    refused(b"\x81\xa1a" * 50_000 + b"\x00", match="nested")


def test_nesting_within_the_parse_stack_is_refused_by_type() -> None:
    refused(_envelope_with_raw_body(b"\x91" * 1000 + b"\x00"), match="job_id")


@pytest.mark.parametrize("header", [
    b"\xdb\xff\xff\xff\xff",     # str 32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",     # bin 32
    b"\xdd\xff\xff\xff\xff",     # array 32 of 4 G elements
    b"\xdf\xff\xff\xff\xff",     # map 32
    b"\xc9\xff\xff\xff\xff\x01",  # ext 32
])
def test_a_huge_declared_length_is_refused_without_allocating(header: bytes) -> None:
    refused(_envelope_with_raw_body(header + b"\x00" * 16), match="msgpack")


def test_long_strings_and_arrays_are_refused_at_unpack() -> None:
    refused(frame(["x" * (4 * w.MAX_TEXT_LEN + 1)]), match="max_str_len")
    refused(frame([[0] * (w.MAX_NODES + 1)]), match="max_array_len")


# ---------------------------------------------------------------- properties

NAMES = st.text(st.characters(categories=("L", "N")) | st.sampled_from("-_.:/@+"),
                min_size=1, max_size=12)
TEXTS = st.text(st.characters(categories=("L", "N", "P", "S")) | st.just(" "), max_size=40)


def _num(lo: float, hi: float) -> st.SearchStrategy[float | int]:
    return st.floats(lo, hi, allow_nan=False) | st.integers(math.ceil(lo), math.floor(hi))


TYPE_STRATEGIES: dict[Any, st.SearchStrategy[Any]] = {
    w.COUNT: st.integers(0, w.MAX_INT),
    w.UID: st.integers(0, 2**32 - 1),
    w.CODE: st.integers(0, 255),
    w.TS: _num(0, w.MAX_TS),
    w.SECONDS: _num(0, 1e15),
    w.AMOUNT: _num(0, 1e18),
    w.PERCENT: _num(0, 100),
    w.FRACTION: _num(0, 1),
    w.JOB_ID: st.from_regex(r"[0-9]{1,9}(_[0-9]{1,4})?(\+[0-9])?", fullmatch=True),
    w.NAME: NAMES,
    w.NAMES: st.lists(NAMES, max_size=4),
    w.LEVEL: st.sampled_from(w.LEVELS),
    w.SCORES: st.fixed_dictionaries({p: st.none() | _num(0, 1) for p in w.PARTS}),
    w.FACTORS: st.lists(st.fixed_dictionaries({
        "name": NAMES, "value": st.none() | st.floats(allow_nan=False, allow_infinity=False),
        "normal": st.none() | _num(-1e9, 1e9), "ratio": st.none() | _num(0, 1e3),
        "text": TEXTS}), max_size=3),
}


def _body(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        name: (st.none() | TYPE_STRATEGIES[typ]) if nullable else TYPE_STRATEGIES[typ]
        for name, typ, nullable in w.SCHEMAS[kind]})


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Valid messages of every kind, batches of a few items included."""
    sender, seq, ts = draw(NAMES), draw(st.integers(0, w.MAX_INT)), draw(_num(0, w.MAX_TS))
    kind = draw(st.sampled_from(w.KINDS))
    if kind != "batch":
        return w.make(kind, sender, seq, draw(_body(kind)), ts=ts)
    items = draw(st.lists(st.sampled_from(w.ITEM_KINDS).flatmap(
        lambda k: st.tuples(st.just(k), st.integers(0, 2**40), _num(0, w.MAX_TS), _body(k))),
        max_size=4))
    return w.make_batch(sender, seq, [w.make(k, sender, q, b, ts=t) for k, q, t, b in items],
                        ts=ts)


NUMBER_RANGES = {w.COUNT: (0, 2**63 - 1), w.UID: (0, 2**32 - 1), w.CODE: (0, 255),
                 w.TS: (0, 1e10), w.SECONDS: (0, 1e15), w.AMOUNT: (0, 1e18),
                 w.PERCENT: (0, 100), w.FRACTION: (0, 1)}
INTEGER_TYPES = {w.COUNT, w.UID, w.CODE}


def _valid_value(typ: Any, v: Any) -> bool:
    """The rules of the protocol, written again without the module's code: the oracle."""
    if typ in NUMBER_RANGES:
        lo, hi = NUMBER_RANGES[typ]
        kinds = (int,) if typ in INTEGER_TYPES else (int, float)
        return type(v) in kinds and math.isfinite(v) and lo <= v <= hi
    if typ is w.NAME:
        return type(v) is str and 1 <= len(v) <= 255 and v.isprintable() and not any(
            c.isspace() for c in v)
    if typ is w.JOB_ID:
        return type(v) is str and all(p.isdecimal() and p.isascii() for p in
                                      v.replace("_", "+").split("+")) and len(v) <= 40
    if typ is w.NAMES:
        return type(v) is list and all(_valid_value(w.NAME, n) for n in v)
    if typ is w.LEVEL:
        return v in w.LEVELS
    if typ is w.SCORES:
        return set(v) == set(w.PARTS) and all(x is None or _valid_value(w.FRACTION, x)
                                               for x in v.values())
    assert typ is w.FACTORS
    return type(v) is list and all(
        set(f) == set(w.FACTOR_FIELDS) and _valid_value(w.NAME, f["name"])
        and type(f["text"]) is str and f["text"].isprintable()
        and all(f[k] is None or (type(f[k]) in (int, float) and math.isfinite(f[k]))
                for k in ("value", "normal", "ratio")) for f in v)


def _assert_valid(msg: Message, version: int = 1, sender: str | None = None) -> None:
    assert isinstance(msg, Message) and msg.version == version
    assert _valid_value(w.NAME, msg.sender) and sender in (None, msg.sender)
    assert _valid_value(w.COUNT, msg.seq) and _valid_value(w.TS, msg.ts)
    if msg.kind == "batch":
        assert set(msg.body) == {"items", "skipped"}
        for item in msg.body["items"]:
            assert item.kind in w.ITEM_KINDS
            _assert_valid(item, msg.version, msg.sender)
        return
    assert tuple(msg.body) == w.FIELDS[msg.kind]
    for name, typ, nullable in w.SCHEMAS[msg.kind]:
        value = msg.body[name]
        assert (nullable and value is None) or _valid_value(typ, value), (name, value)


def _accepts_or_refuses(data: bytes) -> None:
    """decode gives a valid Message (one that survives a round trip) or a WireError, and
    decode_rows agrees with it (same Message and rows, or the same error)."""
    try:
        msg = w.decode(data)
    except WireError as e:
        for sample_items in (True, False):
            with pytest.raises(WireError) as again_refused:
                w.decode_rows(data, sample_items=sample_items)
            assert str(again_refused.value) == str(e)
        return
    assert w.decode_rows(data) == (msg, _sample_rows(msg))
    assert w.decode_rows(data, sample_items=False) == (_without_samples(msg), _sample_rows(msg))
    _assert_valid(msg)
    again = w.decode(w.encode(msg))
    if msg.kind == "batch":   # items of kinds unknown here were dropped: none on the way back
        assert again.body == {"items": msg.body["items"], "skipped": 0}
        assert again[:5] == msg[:5]
    else:
        assert again == msg


def _sample_rows(msg: Message) -> list[tuple[Any, ...]]:
    """What decode_rows should give beside ``msg``: its job samples' bodies as tuples."""
    items = msg.body["items"] if msg.kind == "batch" else []
    return [tuple(m.body.values()) for m in items if m.kind == "job.sample"]


def _without_samples(msg: Message) -> Message:
    """``msg`` as decode_rows(sample_items=False) gives it: a batch without its job samples."""
    if msg.kind != "batch":
        return msg
    items = [m for m in msg.body["items"] if m.kind != "job.sample"]
    return msg._replace(body={**msg.body, "items": items})


FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(st.binary(max_size=300))
def test_decode_of_random_bytes_is_a_message_or_a_wire_error(data: bytes) -> None:
    _accepts_or_refuses(data)


@FAST
@given(messages())
def test_valid_messages_round_trip(msg: Message) -> None:
    _assert_valid(msg)
    assert w.decode(w.encode(msg)) == msg


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)


def _paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a wire structure (the root excluded)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()
    for key, value in items:
        out.append((*path, key))
        out.extend(_paths(value, (*path, key)))
    return out


def _mutate(wire: Any, path: tuple[Any, ...], how: str, value: Any) -> None:
    parent = wire
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "replace":
        parent[key] = value
    elif how == "delete":
        del parent[key]
    elif how == "extra":
        target = parent[key]
        if isinstance(target, list):
            target.append(value)
        elif isinstance(target, dict):
            target["extra-key"] = value
        else:
            parent[key] = [target, value]
    else:  # "deep": a value nested as deep as msgpack's packer allows
        deep: Any = value
        for _ in range(400):
            deep = [deep]
        parent[key] = deep


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages(), st.data())
def test_mutated_frames_are_valid_messages_or_wire_errors(msg: Message, data: st.DataObject) -> None:
    wire = msgpack.unpackb(w.encode(msg))
    path = data.draw(st.sampled_from(_paths(wire)))
    how = data.draw(st.sampled_from(["replace", "replace", "delete", "extra", "deep"]))
    _mutate(wire, path, how, data.draw(MSGPACK_VALUES))
    _accepts_or_refuses(msgpack.packb(wire, use_bin_type=True))


HOSTILE = st.sampled_from([b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                           b"\xdf\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\x91" * 2000,
                           b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", b"\xc3", b"\xc0", b"\xc1"])


@FAST
@given(messages(), st.data())
def test_byte_mutated_frames_are_valid_messages_or_wire_errors(msg: Message,
                                                              data: st.DataObject) -> None:
    raw = bytearray(w.encode(msg))
    at = data.draw(st.integers(0, len(raw)))
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "overwrite"]))
    if how == "truncate":
        raw = raw[:at]
    elif how == "flip" and at < len(raw):
        raw[at] ^= data.draw(st.integers(1, 255))
    else:
        chunk = data.draw(HOSTILE)
        raw[at:at + (len(chunk) if how == "overwrite" else 0)] = chunk
    _accepts_or_refuses(bytes(raw))


def test_nested_array_headers_are_refused_before_any_is_allocated() -> None:
    import tracemalloc

    frame = b"\xdc\x0b\xb7" * 1000          # 1000 nested arrays each claiming 2999 elements
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="incomplete"):
            w.decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"{peak} bytes for a {len(frame)}-byte frame"


def test_make_fields_checks_as_make_does() -> None:
    body = {"job_id": "12", "user": "alice", "req_cpus": 4, "submit_ts": 1.7e9, "start_ts": 1.7e9 + 5}
    fields = [body.get(k) for k in w.FIELDS["job.start"]]
    assert w.make_fields("job.start", "import", 0, fields, 1.7e9) == w.make("job.start", "import", 0, body, 1.7e9)
    with pytest.raises(w.WireError, match="user"):
        w.make_fields("job.start", "import", 0, [f if f != "alice" else "a b" for f in fields], 1.7e9)
    with pytest.raises(w.WireError, match="ts"):
        w.make_fields("job.start", "import", 0, fields, -1.0)
