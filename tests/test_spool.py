"""nomade.spool: format, order, malformed files, and crash safety under kill -9."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomade.spool import BAD_DIR, MalformedEvent, Spool, SpoolError, decode, encode

keys = st.text(st.characters(exclude_characters="=\0", exclude_categories=("Cs",)), min_size=1)
values = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)))


@given(st.dictionaries(keys, values, min_size=1))
def test_encode_decode_round_trip(record: dict[str, str]) -> None:
    assert decode(encode(record)) == record


def test_bytes_that_are_not_utf8_round_trip_exactly() -> None:
    raw = b"SLURM_JOB_NAME=\xff\xfe'\"\n$(x)\0SLURM_JOB_ID=7\0"
    assert encode(decode(raw)) == raw


@pytest.mark.parametrize("record", [{}, {"": "x"}, {"A=B": "x"}, {"A": "x\0y"}, {"A\0": "x"}])
def test_encode_refuses_what_cannot_round_trip(record: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        encode(record)


@pytest.mark.parametrize("raw", [b"", b"A=1", b"A=1\0B\0", b"=1\0"])
def test_decode_names_what_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode(raw)


def test_put_take_confirm_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids = [spool.put({"N": str(i)}) for i in range(5)]
    assert ids == sorted(ids)
    first = spool.take(3)
    assert [it.record["N"] for it in first] == ["0", "1", "2"]
    assert [it.id for it in first] == ids[:3]
    assert [it.id for it in spool.take(3)] == ids[:3], "not removed until confirmed"
    for it in first:
        spool.confirm(it)
    spool.confirm(first[0])  # twice is harmless
    assert [it.record["N"] for it in spool.take(10)] == ["3", "4"]
    assert spool.pending() == 2


def test_malformed_files_are_moved_aside_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "1000000000.000000000-x-1.ev").write_bytes(b"A=1")  # truncated
    (tmp_path / "1000000000.000000001-x-1.ev").write_bytes(b"")
    good = spool.put({"A": "2"})
    assert [it.id for it in spool.take(10)] == [good]
    assert spool.bad_moved == 2
    assert (tmp_path / BAD_DIR / "1000000000.000000000-x-1.ev").read_bytes() == b"A=1"
    assert sorted(p.name for p in (tmp_path / BAD_DIR).iterdir()) == [
        "1000000000.000000000-x-1.ev", "1000000000.000000001-x-1.ev"]


def test_temp_files_are_not_events_and_stale_ones_are_removed(tmp_path: Path) -> None:
    fresh = tmp_path / ".1.0-x-1.ev.tmp"
    stale = tmp_path / ".2.0-x-1.ev.tmp"
    fresh.write_bytes(b"A=1\0")
    stale.write_bytes(b"A=1\0")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    spool = Spool(tmp_path, stale_tmp_s=3600)
    assert spool.take(10) == [] and spool.pending() == 0
    assert fresh.exists() and not stale.exists() and spool.stale_removed == 1


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "nope")
    with pytest.raises(SpoolError, match="nope"):
        spool.take(1)
    with pytest.raises(OSError):
        spool.put({"A": "1"})


def test_bad_record_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path).put({"A": "\0"})
    assert list(tmp_path.iterdir()) == []


# --- crash safety: writers and readers killed with SIGKILL at random moments -------

WRITER = r"""
import os, sys
from nomade.spool import Spool
spool, prefix, done = Spool(sys.argv[1]), sys.argv[2], os.open(sys.argv[3], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for i in range(10**9):
    event = f"{prefix}-{i}"
    spool.put({"EVENT": event, "DATA": event * 50 + "\xff\n'\""})
    os.write(done, (event + "\n").encode())
"""

READER = r"""
import sqlite3, sys
from nomade.spool import Spool
spool, db = Spool(sys.argv[1]), sqlite3.connect(sys.argv[2], timeout=30)
db.execute("CREATE TABLE IF NOT EXISTS done (id TEXT PRIMARY KEY, event TEXT, data TEXT)")
while True:
    items = spool.take(7)
    if not items and sys.argv[3] == "until-empty":
        break
    for it in items:
        with db:  # idempotent consumer: the event id is the key
            db.execute("INSERT OR IGNORE INTO done VALUES (?, ?, ?)",
                       (it.id, it.record["EVENT"], it.record["DATA"]))
        spool.confirm(it)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args])


def _wait_for_growth(path: Path, timeout_s: float) -> None:
    """Wait until ``path`` is longer than it was, so each round kills writers mid-stream."""
    size = path.stat().st_size if path.exists() else 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > size:
            return
        time.sleep(0.02)


def test_kill_9_writers_and_readers_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    spool_dir, done_log, db = tmp_path / "spool", tmp_path / "done.log", tmp_path / "out.db"
    spool_dir.mkdir()
    for rnd in range(8):
        procs = [_spawn(WRITER, str(spool_dir), f"r{rnd}w{w}", str(done_log)) for w in range(3)]
        procs += [_spawn(READER, str(spool_dir), str(db), "forever") for _ in range(2)]
        _wait_for_growth(done_log, timeout_s=30)  # on a loaded machine start-up alone takes long
        time.sleep(rng.uniform(0.15, 0.5))
        rng.shuffle(procs)
        for p in procs:
            p.send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0, 0.02))
        for p in procs:
            p.wait()
    final = _spawn(READER, str(spool_dir), str(db), "until-empty")
    assert final.wait(timeout=60) == 0

    completed = done_log.read_text().split()
    rows = sqlite3.connect(db).execute("SELECT event, data FROM done").fetchall()
    events = [e for e, _ in rows]
    assert len(completed) > 50, "the test should have completed many puts"
    assert len(events) == len(set(events)), "an event was processed twice"
    assert set(completed) <= set(events), "a completed put was lost"
    assert all(d == e * 50 + "\xff\n'\"" for e, d in rows), "an event came back altered"
    assert Spool(spool_dir).pending() == 0
    assert not (spool_dir / BAD_DIR).exists(), "kill -9 must not produce malformed events"


def test_symlinks_fifos_and_huge_files_are_moved_aside_without_blocking(tmp_path: Path) -> None:
    import threading

    from nomade.spool import MAX_EVENT_BYTES

    spool = Spool(tmp_path)
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_bytes(b"SECRET=1\0")
    (tmp_path / "1.000000001-link.ev").symlink_to(secret)
    os.mkfifo(tmp_path / "1.000000002-fifo.ev")
    (tmp_path / "1.000000003-huge.ev").write_bytes(b"A=" + b"x" * MAX_EVENT_BYTES + b"\0")
    good = spool.put({"SLURM_JOB_ID": "7"})
    result: list = []
    reader = threading.Thread(target=lambda: result.append(spool.take()), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "take() blocked on the FIFO"
    assert [i.id for i in result[0]] == [good]
    assert spool.bad_moved == 3 and secret.read_bytes() == b"SECRET=1\0"
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == [
        "1.000000001-link.ev", "1.000000002-fifo.ev", "1.000000003-huge.ev"]
