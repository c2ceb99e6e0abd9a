"""Accounting files as sites have them: every sacct shape from Slurm 20.11 to 25.11,
jobcomp/filetxt and jobcomp/elasticsearch logs, SWF with unknown fields; strict by
default (errors name file, line and record; nothing written), ``--partial`` on request."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from nomade import features
from nomade.errors import NomadeError
from nomade.jobcomp import read_jobcomp, split_filetxt
from nomade.traces import read_sacct, read_swf

DATA = Path(__file__).parent / "data" / "imports"
GiB, MiB = 2**30, 2**20


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text + "+00:00").timestamp()


def by_id(trace, job_id: str) -> int:
    return trace.jobs.job_id.tolist().index(job_id)


def _nomade(*argv: str) -> int:
    from nomade.cli import main
    return main(list(argv))


# ---------------------------------------------------------------- sacct --parsable2

def test_parsable2_of_slurm_20_11_memory_suffixes_and_a_job_that_never_ran():
    t = read_sacct(DATA / "sacct-20.11.txt")
    j = t.jobs
    assert j.job_id.tolist() == ["301", "302", "303", "310", "305"]  # the array task by its own id
    assert t.ignored == 1 and t.skipped == 0 and t.shape == "sacct --parsable2"
    assert j.req_mem_bytes.tolist()[:4] == [4 * 2000 * MiB, 2 * 16 * GiB, 1000 * MiB, 2 * 500 * MiB]
    assert j.req_gpus.tolist() == [0, 2, 0, 0, 0]
    assert j.state.tolist() == ["COMPLETED", "OUT_OF_MEMORY", "CANCELLED", "TIMEOUT", "RUNNING"]
    # cancelled while pending: a label and an end (the user's history), no start
    assert j.label[2] == 1 and np.isnan(j.start_ts[2]) and j.end_ts[2] == local("2021-02-01T09:40:00")
    assert t.never_ran == 1 and t.summary()["never_ran"] == 1
    assert np.isnan(j.end_ts[4]) and np.isnan(j.time_limit_s[4]) and j.time_limit_s[1] == 86400
    assert t.extra["exit_code"][3] == "0:15" and t.extra["nodes"][1] == "g[01-02]"


def test_parsable2_of_slurm_23_02_any_column_order_hetjobs_typed_gpus():
    t = read_sacct(DATA / "sacct-23.02.txt")
    j = t.jobs
    assert j.job_id.tolist() == ["401", "402", "403", "404", "406"]  # JobIDRaw; the steps and the range ignored
    assert t.ignored == 3
    assert j.req_gpus.tolist() == [2, 0, 0, 0, 0] and j.req_cpus.tolist() == [16, 4, 2, 1, 32]
    assert j.req_mem_bytes.tolist() == [64 * GiB, 8 * GiB, 4 * GiB, 2 * GiB, 128 * GiB]
    assert j.state.tolist() == ["COMPLETED", "FAILED", "FAILED", "CANCELLED", "PREEMPTED"]
    assert np.isnan(j.start_ts[3]) and t.never_ran == 1  # Start "None", no node
    assert j.time_limit_s[4] == 2 * 86400 and j.submit_ts[0] == local("2023-06-01T12:00:00")
    assert t.names["partition"][j.cat["partition"][4]] == "scavenger"


def test_a_malformed_parsable2_line_names_line_and_job(tmp_path):
    lines = (DATA / "sacct-23.02.txt").read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace("|01:00:00|4|4|", "|01:00:00|four|4|")
    (tmp_path / "bad.txt").write_text("".join(lines))
    with pytest.raises(NomadeError, match=r"bad.txt: line 5 \(job '402'\): ReqCPUS 'four' is not a count"):
        read_sacct(tmp_path / "bad.txt")
    lines[4] = lines[4].replace("2023-06-01T12:05:30", "yesterday", 1)
    (tmp_path / "bad.txt").write_text("".join(lines))
    t = read_sacct(tmp_path / "bad.txt", partial=True)
    assert t.skipped == 1 and "402" not in t.jobs.job_id.tolist() and len(t.jobs) == 4


# ---------------------------------------------------------------- sacct --json

def test_json_of_slurm_21_08_plain_numbers_and_the_bit63_memory():
    t = read_sacct(DATA / "sacct-21.08.json")
    j = t.jobs
    assert t.shape == "sacct --json, Slurm 21.08" and j.job_id.tolist() == ["501", "513", "514"]
    assert j.req_mem_bytes.tolist()[:2] == [4 * 2048 * MiB, 2 * 32000 * MiB]  # per CPU (bit 63); per node x 2
    assert j.req_gpus.tolist() == [0, 4, 0] and j.time_limit_s.tolist() == [7200, 600, 1800]
    assert j.state.tolist() == ["COMPLETED", "TIMEOUT", "CANCELLED"] and t.extra["exit_code"][1] == "0:9"
    assert j.start_ts[0] == 1640995210 and np.isnan(j.start_ts[2]) and j.end_ts[2] == 1640997000


def test_json_of_slurm_23_02_set_infinite_number_and_state_lists():
    t = read_sacct(DATA / "sacct-23.02.json")
    j = t.jobs
    assert t.shape == "sacct --json, Slurm 23.02" and j.job_id.tolist() == ["601", "602", "603", "604"]
    assert j.req_mem_bytes.tolist() == [65536 * MiB, 2 * 2048 * MiB, 1024 * MiB, 512 * MiB]
    assert j.req_gpus.tolist() == [2, 0, 0, 0] and j.time_limit_s[0] == 240 * 60 and np.isnan(j.time_limit_s[2])
    assert j.state.tolist() == ["COMPLETED", "OUT_OF_MEMORY", "CANCELLED", "RUNNING"]
    assert t.extra["exit_code"][1] == "0:9" and t.never_ran == 1
    assert np.isnan(j.end_ts[3]) and np.isnan(j.label[3])  # running: not ended


def test_json_of_slurm_24_05_and_25_11_lower_case_meta_and_wrapped_times():
    a = read_sacct(DATA / "sacct-24.05.json")
    assert a.shape == "sacct --json, Slurm 24.05" and a.jobs.job_id.tolist() == ["704", "705"]
    assert a.jobs.req_mem_bytes.tolist() == [2 * 131072 * MiB, 4 * 4096 * MiB]
    assert a.jobs.state.tolist() == ["PREEMPTED", "FAILED"] and a.extra["exit_code"][1] == "2:0"
    assert a.jobs.req_gpus.tolist() == [0, 1] and a.jobs.time_limit_s[0] == 2880 * 60
    b = read_sacct(DATA / "sacct-25.11.json")
    j = b.jobs
    assert b.shape == "sacct --json, Slurm 25.11" and j.job_id.tolist() == ["801", "802", "803"]
    assert j.submit_ts[0] == 1764576000 and j.start_ts[0] == 1764576010 and j.end_ts[0] == 1764576100
    assert j.req_mem_bytes[0] == 8 * 1000 * MiB and b.extra["exit_code"][0] == "0:15"
    assert np.isnan(j.start_ts[1]) and b.never_ran == 1 and np.isnan(j.time_limit_s[2])


def test_a_cut_json_file_is_an_error_or_with_partial_what_came_before(tmp_path):
    text = (DATA / "sacct-23.02.json").read_text()
    cut = text[:text.index('"job_id": 603')]
    (tmp_path / "cut.json").write_text(cut)
    with pytest.raises(NomadeError, match=r"cut.json: truncated or corrupt jobs\[2\] \(line 43\)"):
        read_sacct(tmp_path / "cut.json")
    t = read_sacct(tmp_path / "cut.json", partial=True)
    assert t.jobs.job_id.tolist() == ["601", "602"] and t.truncated.startswith("jobs[2] (line 43)")


# ---------------------------------------------------------------- jobcomp

def test_filetxt_values_with_spaces_array_tasks_old_lines_and_never_ran():
    t = read_jobcomp(DATA / "jobcomp-filetxt.log")
    j = t.jobs
    assert t.shape == "jobcomp/filetxt" and j.job_id.tolist() == ["901", "905", "906", "907"]
    assert split_filetxt((DATA / "jobcomp-filetxt.log").read_text().splitlines()[0])["Name"] == "sim run 3"
    assert t.names["user"] == ["alice", "bob", "carol"] and j.req_cpus.tolist() == [4, 16, 1, 2]
    assert j.req_mem_bytes.tolist()[:3] == [8 * GiB, 64 * GiB, GiB] and np.isnan(j.req_mem_bytes[3])
    assert j.req_gpus.tolist() == [0, 4, 0, 0] and j.time_limit_s[0] == 3600 and np.isnan(j.time_limit_s[2])
    assert j.state.tolist() == ["COMPLETED", "TIMEOUT", "CANCELLED", "NODE_FAIL"]
    assert j.start_ts[0] == local("2024-05-01T10:00:05") and j.submit_ts[0] == local("2024-05-01T10:00:00")
    assert np.isnan(j.start_ts[2]) and t.never_ran == 1
    assert np.isnan(j.submit_ts[3]) and j.end_ts[3] == local("2024-05-01T10:41:00")  # no SubmitTime then


def test_filetxt_malformed_line_is_named(tmp_path):
    lines = (DATA / "jobcomp-filetxt.log").read_text().splitlines(keepends=True)
    (tmp_path / "j.log").write_text("".join([*lines[:2], "slurmctld restarted\n", *lines[2:]]))
    with pytest.raises(NomadeError, match=r"j.log: line 3: not a jobcomp/filetxt line"):
        read_jobcomp(tmp_path / "j.log")
    assert read_jobcomp(tmp_path / "j.log", partial=True).skipped == 1


def test_elasticsearch_bulk_lines_and_a_search_response():
    t = read_jobcomp(DATA / "jobcomp-elasticsearch.ndjson")
    j = t.jobs
    assert t.shape == "jobcomp/elasticsearch" and j.job_id.tolist() == ["1001", "1005", "1006"]
    assert j.start_ts[0] == utc("2024-05-01T08:00:05") and j.submit_ts[1] == utc("2024-05-01T08:04:30")
    assert j.req_mem_bytes.tolist() == [8 * GiB, 16000 * MiB, GiB] and j.req_gpus.tolist() == [0, 1, 0]
    assert j.time_limit_s[0] == 3600 and np.isnan(j.time_limit_s[2])
    assert j.state.tolist() == ["COMPLETED", "OUT_OF_MEMORY", "CANCELLED"] and t.never_ran == 1
    s = read_jobcomp(DATA / "jobcomp-elasticsearch-search.json")
    assert s.jobs.job_id.tolist() == ["1101", "1102"] and s.jobs.label.tolist() == [1, 0]
    assert s.jobs.start_ts[1] == utc("2024-05-02T02:00:00") and s.extra["exit_code"][0] == "1:0"


def test_elasticsearch_bad_record_is_named(tmp_path):
    lines = (DATA / "jobcomp-elasticsearch.ndjson").read_text().splitlines(keepends=True)
    (tmp_path / "e.ndjson").write_text("".join([*lines[:2], '{"jobid": 7, "state": "COMPLETED", "@end": "soon"}\n']))
    with pytest.raises(NomadeError, match=r"e.ndjson: line 3: @end 'soon' is not a time"):
        read_jobcomp(tmp_path / "e.ndjson")


# ---------------------------------------------------------------- SWF with unknown fields

def _swf(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "t.swf"
    path.write_text("; UnixStartTime: 1000000000\n" + "\n".join(lines) + "\n")
    return path


def _unknown_wait_lines(n: int = 60) -> list[str]:
    """Every wait -1 (the trace that imported nothing); every tenth job cancelled while
    pending (run 0, requests -1)."""
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(f"{i + 1} {i * 100} -1 0 -1 -1 -1 -1 -1 -1 5 {i % 4 + 1} 1 -1 -1 -1 -1 -1")
        else:
            status = 0 if i % 3 == 0 else 1
            out.append(f"{i + 1} {i * 100} -1 {50 + i} 4 -1 -1 4 3600 -1 {status} {i % 4 + 1} 1 -1 -1 -1 -1 -1")
    return out


def test_swf_with_unknown_waits_starts_as_of_submit_and_counts_it(tmp_path):
    t = read_swf(_swf(tmp_path, _unknown_wait_lines()))
    j = t.jobs
    assert t.start_unknown == 54 and t.never_ran == 6
    ran = np.isfinite(j.start_ts)
    np.testing.assert_array_equal(j.start_ts[ran], j.submit_ts[ran])
    assert j.end_ts[0] == 1e9 + 50 and j.label[9] == 1 and j.end_ts[9] == j.submit_ts[9]
    s = t.summary()
    assert s["start_unknown"] == 54 and s["never_ran"] == 6


def test_jobs_that_never_ran_are_counted_and_neither_learnt_nor_judged(tmp_path):
    from nomade.ml import train
    jobs = read_swf(_swf(tmp_path, _unknown_wait_lines(200))).jobs
    p = train.prepare(jobs, features.SampleTable.empty(), 30.0, 4, max_per_job=1, source="t")
    never = np.flatnonzero(~np.isfinite(jobs.start_ts))
    assert p.summary["never_ran"] == len(never) == 20 and p.summary["jobs"] == 180
    assert not np.isin(p.job, never).any() and not np.isin(p.ref_job, never).any()
    # they still count in their users' history (a cancelled job is part of it)
    X, _ = features.asof_features(jobs, features.SampleTable.empty(), np.array([jobs.submit_ts[-1] + 1]),
                                  np.array([len(jobs) - 1]))
    assert 0 < X[0, 4] < 1


def test_swf_malformed_and_truncated_gzip(tmp_path):
    lines = _unknown_wait_lines(30)
    bad = _swf(tmp_path, [*lines[:5], lines[5][:-3], *lines[6:]])
    with pytest.raises(NomadeError, match=r"t.swf: line 7: an SWF job line has 18 fields, this one 17"):
        read_swf(bad)
    data = gzip.compress(_swf(tmp_path, lines).read_bytes())
    (tmp_path / "cut.swf.gz").write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(NomadeError, match=r"cut.swf.gz: truncated or corrupt after line \d+"):
        read_swf(tmp_path / "cut.swf.gz")
    t = read_swf(tmp_path / "cut.swf.gz", partial=True)
    assert 0 < len(t.jobs) < 30 and t.truncated.startswith("after line")


# ---------------------------------------------------------------- into the store

def test_a_refused_record_writes_nothing_unless_partial(tmp_path, capsys):
    from nomade.store import Store
    text = (DATA / "jobcomp-filetxt.log").read_text().replace("UserId=carol(1002)", "UserId=" + "c" * 300 + "(1)")
    (tmp_path / "j.log").write_text(text)
    db = tmp_path / "s.db"
    assert _nomade("import", "jobcomp", str(tmp_path / "j.log"), "--db", str(db)) == 2
    assert "job 907" in capsys.readouterr().err
    with Store(db, readonly=True) as store:
        assert store.counts()["jobs"] == 0  # the three good jobs before it were not kept either
    assert _nomade("import", "jobcomp", str(tmp_path / "j.log"), "--db", str(db), "--partial", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written_jobs"] == 3 and summary["refused_jobs"] == 1 and summary["never_ran"] == 1
    with Store(db, readonly=True) as store:
        assert store.counts()["jobs"] == 3 and store.get_job("906").start_ts is None
        assert store.get_job("905").state == "TIMEOUT" and store.get_job("905").signal == 15


@pytest.mark.parametrize("kind,name", [("sacct", "sacct-20.11.txt"), ("sacct", "sacct-23.02.txt"),
                                       ("sacct", "sacct-21.08.json"), ("sacct", "sacct-23.02.json"),
                                       ("sacct", "sacct-24.05.json"), ("sacct", "sacct-25.11.json"),
                                       ("jobcomp", "jobcomp-filetxt.log"),
                                       ("jobcomp", "jobcomp-elasticsearch.ndjson"),
                                       ("jobcomp", "jobcomp-elasticsearch-search.json")])
def test_every_shape_imports_into_the_store_with_the_same_features(tmp_path, capsys, kind, name):
    from dataclasses import asdict

    from nomade.store import Store
    from nomade.traces import read_sacct as sacct
    db = tmp_path / "s.db"
    assert _nomade("import", kind, str(DATA / name), "--db", str(db), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    trace = (sacct if kind == "sacct" else read_jobcomp)(DATA / name)
    assert summary["written_jobs"] == len(trace.jobs)
    with Store(db, readonly=True) as store:
        stored = {j.job_id: j for j in store.ended_jobs() + store.running_jobs()}
    jobs = trace.jobs
    rows = [stored[i] for i in jobs.job_id if i in stored]
    assert len(rows) == int(np.isfinite(jobs.start_ts).sum() + (~np.isfinite(jobs.start_ts)
                                                                & np.isfinite(jobs.end_ts)).sum())
    table = features.JobTable.from_records(asdict(r) for r in rows)
    keep = np.array([i in stored for i in jobs.job_id])
    direct = jobs.take(np.flatnonzero(keep))
    t = np.full(len(direct), np.nanmax(direct.submit_ts) + 1e6)
    np.testing.assert_array_equal(features.asof_features(direct, features.SampleTable.empty(), t)[0],
                                  features.asof_features(table, features.SampleTable.empty(), t)[0])


# ---------------------------------------------------------------- import sacct --since (the parts without slurmdbd)

def test_since_windows_resume_after_the_cursor(tmp_path):
    from nomade import backfill
    day = 86400.0
    since, todo = backfill.windows(0.0, 20 * day, 7.0, None)
    assert since == 0.0 and todo == [(0.0, 7 * day), (7 * day, 14 * day), (14 * day, 20 * day)]
    cursor = tmp_path / "s.db.sacct-cursor.json"
    backfill.write_cursor(cursor, 0.0, 14 * day)
    assert backfill.read_cursor(cursor) == (0.0, 14 * day)
    # interrupted after two windows: the same command fetches only the third
    assert backfill.windows(0.0, 20 * day, 7.0, backfill.read_cursor(cursor)) == (0.0, [(14 * day, 20 * day)])
    # a later --since inside the span done also resumes; an earlier one starts afresh
    assert backfill.windows(3 * day, 20 * day, 7.0, (0.0, 14 * day))[1] == [(14 * day, 20 * day)]
    assert backfill.windows(-day, 6 * day, 7.0, (0.0, 14 * day)) == (-day, [(-day, 6 * day)])
    with pytest.raises(NomadeError, match="must be before"):
        backfill.windows(5.0, 5.0, 7.0, None)
    cursor.write_text("{")
    with pytest.raises(NomadeError, match="unreadable import cursor"):
        backfill.read_cursor(cursor)


def test_since_asks_sacct_for_what_the_parser_reads(tmp_path, capsys):
    from nomade import backfill
    from nomade.traces import parse_sacct_lines
    # the header sacct prints for FIELDS, over rows as 23.02 prints them: read as a file is
    cols = backfill.FIELDS.split(",")
    src = (DATA / "sacct-23.02.txt").read_text().splitlines()
    head = src[0].split("|")
    rows = ["|".join(dict(zip(head, ln.split("|"), strict=True)).get(c, "") for c in cols) for ln in src[1:]]
    t = parse_sacct_lines(["|".join(cols) + "\n", *(r + "\n" for r in rows)], "sacct")
    assert t.jobs.job_id.tolist() == ["401", "402", "403", "404", "406"] and t.never_ran == 1
    assert backfill.sacct_time(backfill.parse_date("2024-01-02")) == "2024-01-02T00:00:00"
    assert _nomade("import", "sacct", "--since", "2024-01-01", str(DATA / "sacct-23.02.txt")) == 2
    assert "either a FILE" in capsys.readouterr().err


def test_train_prepare_reads_a_trace_with_unknown_waits_and_malformed_lines(tmp_path, capsys):
    lines = _unknown_wait_lines(200)
    path = _swf(tmp_path, [*lines[:100], "garbage", *lines[100:]])
    data = tmp_path / "d.npz"
    assert _nomade("train", "--prepare", "--swf", str(path), "--ticks-per-job", "1", "--data", str(data)) == 2
    assert "line 102" in capsys.readouterr().err
    assert _nomade("train", "--prepare", "--swf", str(path), "--ticks-per-job", "1", "--data", str(data),
                   "--partial", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["jobs"] == 180 and summary["never_ran"] == 20
