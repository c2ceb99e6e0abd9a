"""History import: SWF traces and sacct output (--parsable2 and --json)."""

from __future__ import annotations

import gzip
import io
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from nomade.errors import NomadeError
from nomade.traces import Issues, messages, parse_sacct_json_text, parse_sacct_lines, read_sacct, read_swf

DATA = Path(__file__).parent / "data"
GB, MB = 2**30, 2**20
ORIGIN = 800000000


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_swf_fields_map_to_start_time_columns_and_labels():
    trace = read_swf(DATA / "small.swf", partial=True)
    j = trace.jobs
    assert trace.skipped == 2  # the prose line and the 17-field line
    assert j.job_id.tolist() == ["1", "2", "3", "4", "5", "6"]
    assert j.state.tolist() == ["COMPLETED", "FAILED", "CANCELLED", None, "FAILED", "PARTIAL"]
    np.testing.assert_array_equal(j.label[:3], [0, 1, 1])
    assert math.isnan(j.label[3]) and j.label[4] == 1 and math.isnan(j.label[5])
    # requested procs, or allocated when the request is -1 (job 2)
    np.testing.assert_array_equal(j.req_cpus, [4, 8, 16, 2, 1, 1])
    assert j.req_mem_bytes[0] == 1024 * 1024 * 4  # KB per processor x processors
    assert np.isnan(j.req_mem_bytes[1]) and np.isnan(j.time_limit_s[3])
    assert (j.req_gpus == 0).all()
    assert j.submit_ts[2] == ORIGIN + 60 and j.start_ts[2] == ORIGIN + 100
    assert j.end_ts[2] == ORIGIN + 400
    assert np.isnan(j.start_ts[3]) and np.isnan(j.end_ts[3])
    assert trace.names["user"] == ["1", "2", "3"] and j.user.tolist() == [0, 1, 0, 2, 0, 0]
    assert j.cat["executable"].tolist() == [-1, 0, -1, -1, -1, -1]


def test_swf_runtime_and_used_fields_are_not_features(tmp_path):
    """Changing runtime, used CPU and used memory of a job changes only its end."""
    text = (DATA / "small.swf").read_text().splitlines()
    changed = [ln.replace("   100    4   -1   -1", "  9999    4  777  555") if ln.startswith("    1 ")
               else ln for ln in text]
    assert changed != text
    (tmp_path / "changed.swf").write_text("\n".join(changed))
    a, b = read_swf(DATA / "small.swf", partial=True).jobs, read_swf(tmp_path / "changed.swf", partial=True).jobs
    for col in ("req_cpus", "req_mem_bytes", "req_gpus", "time_limit_s", "submit_ts", "start_ts", "user"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert a.end_ts[0] != b.end_ts[0]


def test_swf_gzip_and_progress(tmp_path):
    gz = tmp_path / "t.swf.gz"
    gz.write_bytes(gzip.compress((DATA / "small.swf").read_bytes()))
    seen = []
    trace = read_swf(gz, progress=lambda done, total: seen.append((done, total)), partial=True)
    assert len(trace.jobs) == 6
    assert seen[-1] == (gz.stat().st_size, gz.stat().st_size)
    s = trace.summary()
    assert s["jobs"] == 6 and s["labelled"] == 4 and s["failed"] == 3 and s["failure_rate"] == 0.75


def test_swf_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(NomadeError, match="cannot read"):
        read_swf(tmp_path / "missing.swf")
    (tmp_path / "x.swf").write_text("; only a header\nnot a job\n")
    with pytest.raises(NomadeError, match="x.swf: line 2: an SWF job line has 18 fields, this one 3"):
        read_swf(tmp_path / "x.swf")
    with pytest.raises(NomadeError, match="no SWF job lines"):
        read_swf(tmp_path / "x.swf", partial=True)


def test_sacct_parsable2_jobs_skip_steps():
    with pytest.raises(NomadeError, match="line 13: 2 '[|]'-separated fields where the header has 16"):
        read_sacct(DATA / "sacct_parsable2.txt")
    trace = read_sacct(DATA / "sacct_parsable2.txt", partial=True)
    j = trace.jobs
    assert j.job_id.tolist() == ["101", "102", "103", "104", "105", "107_2", "108"]
    assert trace.skipped == 1 and trace.ignored == 4  # the garbage line; three steps, a pending array range
    assert j.state.tolist() == ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "PENDING",
                                "OUT_OF_MEMORY", "RUNNING"]
    np.testing.assert_array_equal(j.label[:4], [0, 1, 1, 1])
    assert math.isnan(j.label[4]) and j.label[5] == 1 and math.isnan(j.label[6])
    np.testing.assert_array_equal(j.req_cpus, [4, 8, 2, 1, 1, 1, 2])
    assert j.req_mem_bytes.tolist() == [8 * GB, 16000 * MB, 4 * GB, 8 * GB, GB, 500 * MB, GB]
    assert j.req_gpus.tolist() == [0, 2, 0, 0, 0, 0, 0]
    assert j.time_limit_s[0] == 3600 and j.time_limit_s[1] == 86400 and np.isnan(j.time_limit_s[3])
    assert j.time_limit_s[5] == 300
    assert j.start_ts[0] == local("2024-03-01T10:00:05") and j.end_ts[0] == local("2024-03-01T10:30:05")
    assert np.isnan(j.start_ts[4]) and np.isnan(j.end_ts[6])  # pending; running: no end yet
    assert trace.names["user"][j.user[2]] == "alice"
    assert trace.names["partition"][j.cat["partition"][1]] == "gpu"


def test_sacct_without_header_uses_the_documented_order():
    lines = (DATA / "sacct_parsable2.txt").read_text().splitlines(keepends=True)
    a, b = read_sacct(DATA / "sacct_parsable2.txt", partial=True), parse_sacct_lines(lines[1:], partial=True)
    np.testing.assert_array_equal(a.jobs.end_ts, b.jobs.end_ts)
    assert a.jobs.job_id.tolist() == b.jobs.job_id.tolist()


def test_sacct_json_both_layouts():
    with pytest.raises(NomadeError, match="jobs.3. .line 31.: no 'job_id' field"):
        read_sacct(DATA / "sacct.json")
    trace = read_sacct(DATA / "sacct.json", partial=True)
    j = trace.jobs
    assert j.job_id.tolist() == ["201", "205", "206"] and trace.skipped == 1  # Slurm's own ids
    assert j.state.tolist() == ["COMPLETED", "TIMEOUT", "PENDING"]
    assert j.req_mem_bytes.tolist() == [8192 * MB, 2 * 2048 * MB, 1024 * MB]
    assert j.req_gpus.tolist() == [0, 2, 0]
    assert j.time_limit_s[0] == 3600 and j.time_limit_s[1] == 600 and np.isnan(j.time_limit_s[2])
    assert j.end_ts[1] == 1709290660 and np.isnan(j.start_ts[2]) and np.isnan(j.end_ts[2])
    assert trace.extra["exit_code"][1] == "0:15"


SLURM_FORMATS_HEADER = "JobIDRaw|User|ReqCPUS|ReqMem|Timelimit|Submit|Start|End|State|NNodes|NodeList\n"


def test_sacct_text_formats_are_slurms():
    """Time limits, host lists and JSON numbers read as Slurm documents them (nomade.slurmfmt):
    a time limit of 0 imposes none, a bare number is minutes, a host list is expanded,
    NO_VAL is unset."""
    row = "{id}|u|1|1G|{limit}|2024-03-01T10:00:00|2024-03-01T10:00:05|2024-03-01T10:01:00|COMPLETED|2|{nodes}"
    text = SLURM_FORMATS_HEADER + "\n".join([
        row.format(id=1, limit="0", nodes="n[01-02]"), row.format(id=2, limit="30", nodes="a1,b[7,9]"),
        row.format(id=3, limit="UNLIMITED", nodes="n1"), row.format(id=4, limit="1-00:00:00", nodes="n1")])
    trace = parse_sacct_lines(text.splitlines())
    lim = trace.jobs.time_limit_s
    assert np.isnan(lim[0]) and lim[1] == 1800 and np.isnan(lim[2]) and lim[3] == 86400
    nodes = [start["nodes"] for start, _ in messages(trace)]
    assert nodes[:2] == [["n01", "n02"], ["a1", "b7", "b9"]]
    with pytest.raises(NomadeError, match=r"line 2 \(job '1'\): bad range"):
        parse_sacct_lines((SLURM_FORMATS_HEADER + row.format(id=1, limit="0", nodes="n[2-1]")).splitlines())

    no_val = 0xFFFFFFFE
    job = {"job_id": 9, "nodes": "n1", "state": {"current": ["COMPLETED"]}, "allocation_nodes": no_val,
           "required": {"CPUs": 2, "memory_per_cpu": {"set": False, "infinite": False, "number": 0}},
           "time": {"limit": no_val, "submission": 1709290000, "start": 1709290005, "end": 1709290060}}
    j = parse_sacct_json_text(json.dumps({"jobs": [job, {**job, "job_id": 10, "time": {**job["time"], "limit": 0}}]}),
                              Issues("t.json")).jobs
    assert np.isnan(j.time_limit_s).all() and np.isnan(j.req_mem_bytes[0])
    assert j.start_ts[0] == 1709290005


def test_sacct_from_stdin_and_bad_input(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO((DATA / "sacct_parsable2.txt").read_text()))
    assert len(read_sacct("-", partial=True).jobs) == 7
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(NomadeError, match="empty"):
        read_sacct(tmp_path / "e.txt")
    (tmp_path / "j.json").write_text('{"jobs": [')
    with pytest.raises(NomadeError, match="truncated or corrupt jobs.0. .line 1.: the file ends inside the list"):
        read_sacct(tmp_path / "j.json")
    (tmp_path / "k.json").write_text('{"meta": {}}')
    with pytest.raises(NomadeError, match="no 'jobs' list"):
        read_sacct(tmp_path / "k.json")


def test_message_bodies_list_the_wire_fields_in_order():
    """An import hands a body's values to ``wire.make_fields`` as they are."""
    from nomade import traces, wire
    assert traces.START_KEYS == wire.FIELDS["job.start"] and traces.END_KEYS == wire.FIELDS["job.end"]
    start, end = next(m for m in messages(read_sacct(DATA / "sacct_parsable2.txt", partial=True)) if m[1])
    assert tuple(start) == traces.START_KEYS and tuple(end) == traces.END_KEYS


def test_messages_are_job_start_and_end_bodies():
    trace = read_sacct(DATA / "sacct_parsable2.txt", partial=True)
    out = list(messages(trace))
    start, end = out[1]
    assert start["job_id"] == "102" and start["user"] == "bob" and start["partition"] == "gpu"
    assert start["account"] == "chem" and start["req_gpus"] == 2 and start["req_cpus"] == 8
    assert start["nodes"] == ["g1"] and start["num_nodes"] == 1 and start["source"] == "import"
    assert end == {"job_id": "102", "end_ts": local("2024-03-01T11:06:00"), "exit_code": 3,
                   "signal": 0, "state": "FAILED", "source": "import"}
    assert out[4][1] is None and out[4][0]["start_ts"] is None and out[4][0]["nodes"] == []
    assert out[6][1] is None  # running: no end


# ---------------------------------------------------------------- nomade import

def _nomade(*argv: str) -> int:
    from nomade.cli import main
    return main(list(argv))


def test_import_sacct_writes_the_store_and_features_match(tmp_path, capsys):
    from nomade.features import JobTable, SampleTable, asof_features
    from nomade.store import Store

    db = tmp_path / "s" / "nomade.db"
    assert _nomade("import", "sacct", str(DATA / "sacct_parsable2.txt"), "--db", str(db), "--json") == 2
    assert "line 13" in capsys.readouterr().err and not db.exists()
    assert _nomade("import", "sacct", str(DATA / "sacct_parsable2.txt"), "--db", str(db), "--json", "--partial") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["jobs"] == 7 and summary["written_jobs"] == 7 and summary["failed"] == 4
    with Store(db, readonly=True) as store:
        ended, running = store.ended_jobs(), store.running_jobs()
        assert [j.job_id for j in running] == ["108"]
        assert store.get_job("102").state == "FAILED" and store.get_job("102").exit_code == 3
        assert store.get_job("105").start_ts is None
    # the store's rows give the same start-time features as the parsed trace
    direct = read_sacct(DATA / "sacct_parsable2.txt", partial=True).jobs
    keep = np.isin(direct.job_id, [j.job_id for j in ended + running])
    direct = direct.take(np.flatnonzero(keep))
    stored = JobTable.from_records(sorted(ended + running, key=lambda j: list(direct.job_id).index(j.job_id)))
    t = np.full(len(direct), local("2024-03-01T13:00:00"))
    np.testing.assert_array_equal(asof_features(direct, SampleTable.empty(), t)[0],
                                  asof_features(stored, SampleTable.empty(), t)[0])
    # importing again changes nothing
    assert _nomade("import", "sacct", str(DATA / "sacct_parsable2.txt"), "--db", str(db), "--partial") == 0
    assert "wrote 7 jobs" in capsys.readouterr().out
    with Store(db, readonly=True) as store:
        assert store.counts()["jobs"] == 7


def test_import_swf_only_summarises_unless_into_store(tmp_path, capsys):
    from nomade.store import Store

    db = tmp_path / "t.db"
    assert _nomade("import", "swf", str(DATA / "small.swf"), "--db", str(db), "--partial") == 0
    out = capsys.readouterr().out
    assert "6 jobs, 4 with a final state, 3 failed (75.0%)" in out and "2 malformed record(s) skipped" in out
    assert not db.exists()
    assert _nomade("import", "swf", str(DATA / "small.swf"), "--db", str(db), "--into-store", "--partial") == 0
    assert "wrote 6 jobs" in capsys.readouterr().out
    with Store(db, readonly=True) as store:
        job = store.get_job("3")
        assert job.cluster == "small" and job.state == "CANCELLED" and job.label == 1
        assert job.start_ts == ORIGIN + 100 and job.req_cpus == 16


def test_import_dry_run_and_errors(tmp_path, capsys, monkeypatch):
    db = tmp_path / "d.db"
    monkeypatch.setattr("sys.stdin", io.StringIO((DATA / "sacct.json").read_text()))
    assert _nomade("import", "sacct", "-", "--dry-run", "--db", str(db), "--partial") == 0
    assert "3 jobs" in capsys.readouterr().out and not db.exists()
    assert _nomade("import", "swf", str(tmp_path / "missing.swf")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_progress_bar_draws_only_on_a_terminal():
    from nomade.commands.import_ import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, tty = io.StringIO(), Tty()
    for stream in (quiet, tty):
        bar = Progress("reading x", stream=stream)
        bar(50, 100)
        bar(100, 100)
        bar.done()
    assert quiet.getvalue() == ""
    assert "[###############...............]  50.0%" in tty.getvalue()
    assert tty.getvalue().endswith("100.0%\n")
