"""The bulk import's fast paths give what the plain ones give: times read by their hour,
the jobs' indexes built once into a fresh store, a re-import that changes nothing."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nomade.errors import NomadeError
from nomade.traces import SACCT_FORMAT, parse_sacct_lines

HEADER = SACCT_FORMAT.replace(",", "|")


def _nomade(*argv: str) -> int:
    from nomade.cli import main
    return main(list(argv))


def _line(job_id: int, submit: str, start: str, end: str, state: str = "COMPLETED") -> str:
    return (f"{job_id}|u{job_id % 3}|batch|a1|4|8G|cpu=4,mem=8G,node=1|cpu=4,mem=8G,node=1|02:00:00|"
            f"{submit}|{start}|{end}|{state}|0:0|1|n{job_id % 5}")


def _history(path: Path, n: int, bad_at: int | None = None) -> Path:
    """``n`` jobs a few minutes apart over several hours; job ``bad_at`` has a user name
    too long for the wire format (refused when written, not when read)."""
    t = datetime(2024, 3, 30, 22, 58, 7)
    lines = [HEADER]
    for i in range(1, n + 1):
        t += timedelta(minutes=7, seconds=13)
        stamps = [f"{t + timedelta(seconds=s):%Y-%m-%dT%H:%M:%S}" for s in (0, 30, 900)]
        line = _line(i, *stamps)
        lines.append(line.replace(f"|u{i % 3}|", "|" + "u" * 300 + "|", 1) if i == bad_at else line)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_times_read_by_their_hour_are_the_times_read_one_by_one():
    t0 = datetime(2024, 10, 27, 0, 0, 0)   # a night with a DST change in many zones
    stamps = [t0 + timedelta(seconds=s) for s in range(0, 6 * 3600, 397)]
    lines = [HEADER] + [_line(i, f"{s:%Y-%m-%dT%H:%M:%S}", f"{s:%Y-%m-%dT%H:%M:%S}", "Unknown", "RUNNING")
                        for i, s in enumerate(stamps, 1)]
    trace = parse_sacct_lines(lines)
    assert trace.jobs.submit_ts.tolist() == [s.timestamp() for s in stamps]


@pytest.mark.parametrize("clock", ["03:61:00", "03:00:60", "03:5:009", "03:00:0x"])
def test_a_bad_clock_in_an_hour_read_before_is_still_an_error(clock):
    lines = [HEADER, _line(1, "2024-01-01T03:00:00", "2024-01-01T03:00:01", "2024-01-01T03:10:00"),
             _line(2, "2024-01-01T03:00:00", f"2024-01-01T{clock}", "2024-01-01T03:10:00")]
    with pytest.raises(NomadeError, match=r"line 3 \(job '2'\): Start '2024-01-01T"):
        parse_sacct_lines(lines, "h.txt")


@pytest.mark.parametrize("cpus", ["9" * 400, "\u00b2", "-4"])
def test_a_count_that_is_not_one_names_the_line_and_field(cpus):
    line = _line(1, "2024-01-01T03:00:00", "2024-01-01T03:00:01", "2024-01-01T03:10:00")
    with pytest.raises(NomadeError, match=r"h.txt: line 2 \(job '1'\): ReqCPUS '"):
        parse_sacct_lines([HEADER, line.replace("|a1|4|", f"|a1|{cpus}|")], "h.txt")


def test_fields_are_found_by_the_header_in_any_order_and_absent_ones_are_unknown():
    names = ["JobIDRaw", "End", "Submit", "State", "ReqCPUS"]
    lines = ["|".join(names), "7|2024-01-01T03:10:00|2024-01-01T03:00:00|FAILED|8"]
    trace = parse_sacct_lines(lines)
    j = trace.jobs
    assert j.job_id.tolist() == ["7"] and j.req_cpus.tolist() == [8.0] and j.label.tolist() == [1.0]
    assert j.end_ts[0] - j.submit_ts[0] == 600.0
    assert trace.extra["nodes"] == [None] and trace.extra["exit_code"] == [None]


def _indexes(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))


def test_a_first_import_builds_the_same_indexes_and_a_failed_one_keeps_them(tmp_path):
    from nomade.store import Store
    with Store(tmp_path / "empty.db"):
        pass
    expected = _indexes(tmp_path / "empty.db")
    assert any(name == "jobs_ended" for name, _ in expected)

    db = tmp_path / "s.db"
    assert _nomade("import", "sacct", str(_history(tmp_path / "bad.txt", 60, bad_at=40)), "--db", str(db)) == 2
    assert _indexes(db) == expected
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    assert _nomade("import", "sacct", str(_history(tmp_path / "h.txt", 60)), "--db", str(db)) == 0
    assert _indexes(db) == expected
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT job_id FROM jobs WHERE end_ts > 0").fetchall()
        assert "jobs_ended" in plan[0][-1]
    with Store(db, readonly=True) as store:
        assert store.counts()["jobs"] == 60
        assert sorted(int(j.job_id) for j in store.ended_jobs()) == list(range(1, 61))


def test_a_reimport_into_a_store_that_has_the_jobs_changes_no_row(tmp_path):
    db, history = tmp_path / "s.db", _history(tmp_path / "h.txt", 30)
    assert _nomade("import", "sacct", str(history), "--db", str(db)) == 0
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT * FROM jobs ORDER BY rowid").fetchall()
    assert _nomade("import", "sacct", str(history), "--db", str(db)) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT * FROM jobs ORDER BY rowid").fetchall() == before
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
