"""The job-end summary: its one-line format reads back as written, other tools' AdminComment
text is kept within Slurm's 1024 bytes, the use of resources is computed from the last
samples of each node, and the writer goes to slurmctld, else to the accounting, with the
exact Slurm argument lists (real subprocesses: stand-in Slurm tools that record their argv).
"""

from __future__ import annotations

import dataclasses
import json
import stat
import sys
from pathlib import Path

import pytest
from agenttools import agent_config
from hypothesis import given, settings
from hypothesis import strategies as st

from nomade import wire
from nomade.agent import summary
from nomade.agent.daemon import Agent
from nomade.agent.summaries import SummaryWriter
from nomade.agent.summary import MAX_BYTES, Summary, SummaryError, format_summary, merge, parse, remove
from nomade.slurm import Slurm
from nomade.store import JOB_SAMPLE_FIELDS, Job, Store

T0 = 1_764_856_800.0   # 2025-12-04T14:00:00Z
GiB = 1 << 30

FULL = Summary(state="FAILED", max_risk=0.91, max_risk_ts=T0 + 1200, level="critical",
               crossed=(("moderate", T0 + 600), ("high", T0 + 900), ("critical", T0 + 1200)),
               eff_cpu=0.35, mem_peak=0.94, time_used=0.5,
               advice="Memory use near its limit (94%): request more memory")


def _as_stored(s: Summary) -> Summary:
    """What reads back: the line is stored in lower case (as sacctmgr stores it), states read upper."""
    return dataclasses.replace(s, state=s.state and s.state.upper(), advice=s.advice and s.advice.lower())


def test_a_full_summary_is_one_documented_line() -> None:
    assert format_summary(FULL) == (
        "nomade/1 state=FAILED maxrisk=0.91@2025-12-04T14:20:00Z level=critical "
        "crossed=moderate@2025-12-04T14:10:00Z,high@2025-12-04T14:15:00Z,critical@2025-12-04T14:20:00Z "
        "eff_cpu=0.35 mem_peak=0.94 time=0.50 advice=[Memory use near its limit (94%): request more memory]"
    ).lower()   # as sacctmgr stores it, whichever path writes it
    assert parse(format_summary(FULL)) == _as_stored(FULL)


def test_unknown_fields_are_dashes_and_read_back_as_none() -> None:
    text = format_summary(Summary())
    assert text == "nomade/1 state=- maxrisk=- level=- crossed=- eff_cpu=- mem_peak=- time=- advice=-"
    assert parse(text) == Summary()


def test_advice_loses_quotes_brackets_bars_and_control_characters_and_is_bounded() -> None:
    s = Summary(advice='say "hi"\\ [it\'s] `now`|\n\tthen ünïcode ' + "x" * 400)
    text = format_summary(s)
    got = parse(text)
    assert got is not None and got.advice is not None
    assert got.advice.startswith("say hi/ (its) now/ then n code xxx")
    assert len(got.advice) == summary.MAX_ADVICE and got.advice.endswith("~")
    assert text.isascii() and text.isprintable()


def test_other_tools_text_is_kept_and_merging_again_changes_nothing() -> None:
    existing = "JS1:H4sIAAAAAAAAA+2c"
    once = merge(existing, FULL)
    assert once is not None and once.startswith(existing + " nomade/1 ")
    assert remove(once) == existing and parse(once) == _as_stored(FULL)
    assert merge(once, FULL) == once
    newer = Summary(state="COMPLETED")
    assert merge(once, newer) == existing + " " + format_summary(newer)


def test_a_long_other_text_shortens_the_advice_and_no_room_at_all_is_refused() -> None:
    existing = "x" * 800
    merged = merge(existing, FULL)
    assert merged is not None and len(merged.encode()) <= MAX_BYTES
    got = parse(merged)
    assert got is not None and got.state == "FAILED" and got.advice is not None and got.advice.endswith("~")
    assert merge("x" * 1000, FULL) is None


@pytest.mark.parametrize(("text", "named"), [
    ("nomade/2 state=FAILED", "version 2"),
    ("nomade/1 state=X maxrisk=abc@2025-12-04T14:20:00Z", "maxrisk=abc"),
    ("nomade/1 maxrisk=0.5@yesterday", "maxrisk"),
    ("nomade/1 level=extreme", "level"),
    ("nomade/1 crossed=high@2025-12-04T14:20:00Z,worse@2025-12-04T14:21:00Z", "crossed"),
    ("nomade/1 eff_cpu=nan", "eff_cpu"),
])
def test_a_malformed_summary_is_an_error_naming_the_field(text: str, named: str) -> None:
    with pytest.raises(SummaryError, match=named):
        parse(text)


def test_text_without_a_summary_has_none_and_later_keys_are_ignored() -> None:
    assert parse("") is None and parse("JS1:abc") is None and parse("nomade/1x state=A") is None
    got = parse("nomade/1 state=TIMEOUT gpu_eff=0.5 time=1.00 and then other text")
    assert got == Summary(state="TIMEOUT", time_used=1.0)


def _summaries() -> st.SearchStrategy[Summary]:
    ratio = st.none() | st.integers(0, 500).map(lambda k: k / 100)
    ts = st.integers(1_600_000_000, 2_000_000_000).map(float)
    words = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"'`[]|\\=,@-"),
                    min_size=1, max_size=12)
    advice = st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\"'`[]|\\"),
                                 min_size=1, max_size=200).map(lambda t: " ".join(t.split()) or None)
    risk = st.tuples(st.integers(0, 100).map(lambda k: k / 100), ts) | st.just((None, None))
    crossed = st.lists(st.sampled_from(wire.LEVELS[1:]), unique=True).flatmap(
        lambda ls: st.tuples(*[st.tuples(st.just(level), ts) for level in ls]))
    return st.builds(lambda state, r, level, c, e, m, t, a: Summary(state, r[0], r[1], level, c, e, m, t, a),
                     st.none() | words, risk, st.none() | st.sampled_from(wire.LEVELS), crossed,
                     ratio, ratio, ratio, advice)


@settings(max_examples=300)
@given(_summaries(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=1100)
       .filter(lambda t: "nomade/" not in t))
def test_any_summary_reads_back_and_the_result_fits_with_the_other_text_kept(s: Summary, other: str) -> None:
    assert parse(format_summary(s)) == _as_stored(s)
    merged = merge(other, s)
    if merged is None:
        assert len(other.strip()) + 1 + len(format_summary(Summary(s.state, s.max_risk, s.max_risk_ts, s.level,
                                                                   s.crossed, s.eff_cpu, s.mem_peak,
                                                                   s.time_used))) > MAX_BYTES
        return
    assert len(merged.encode()) <= MAX_BYTES and merged.isprintable()
    assert remove(merged) == other.strip()
    got = parse(merged)
    assert got is not None and got == Summary(**{**_as_stored(s).__dict__, "advice": got.advice})
    assert s.advice is None or got.advice is None or s.advice.lower().startswith(got.advice.rstrip("~").rstrip())


# ------------------------------------------------------------------ use of the resources

def _sample(node: str, ts: float, cpu_user: float, cpu_system: float, peak: int, alloc: int = 2,
            limit: int | None = 2 * GiB, mem: int | None = None) -> tuple:
    body = dict.fromkeys(JOB_SAMPLE_FIELDS)
    body.update(job_id="7", node=node, ts=ts, alloc_cpus=alloc, cpu_user_s=cpu_user, cpu_system_s=cpu_system,
                mem_bytes=mem, mem_peak_bytes=peak, mem_limit_bytes=limit)
    return tuple(body[f] for f in JOB_SAMPLE_FIELDS)


def _job(**kw: object) -> Job:
    base = dict(job_id="7", cluster=None, user="u", uid=None, account=None, partition="cpu", nodes=("n1", "n2"),
                num_nodes=2, req_cpus=4, req_mem_bytes=4 * GiB, req_gpus=0, time_limit_s=3600.0,
                submit_ts=T0 - 10, start_ts=T0, end_ts=T0 + 1800, exit_code=1, signal=None, state="FAILED",
                label=1, state_source="slurm", updated_ts=T0)
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_usage_takes_each_nodes_last_cumulative_sample() -> None:
    rows = [_sample("n1", T0 + 1000, 500.0, 100.0, GiB), _sample("n2", T0 + 1000, 300.0, 0.0, GiB),
            _sample("n1", T0 + 1790, 1000.0, 200.0, 3 * GiB // 2), _sample("n2", T0 + 1795, 600.0, 0.0, 1945 * 2**20)]
    eff, mem, used = summary.usage(_job(), rows, JOB_SAMPLE_FIELDS)
    # CPU: (1000 + 200 + 600) s over 2 + 2 CPUs for 1800 s; memory: n2's 1945 MiB of 2048 MiB
    assert eff == pytest.approx(1800 / (4 * 1800)) and mem == pytest.approx(1945 / 2048) and used == 0.5


def test_usage_falls_back_to_the_request_and_says_unknown_without_samples() -> None:
    rows = [_sample("n1", T0 + 1790, 900.0, 0.0, GiB, alloc=None, limit=None)]   # type: ignore[arg-type]
    eff, mem, used = summary.usage(_job(num_nodes=1, req_cpus=1, nodes=("n1",)), rows, JOB_SAMPLE_FIELDS)
    assert eff == pytest.approx(0.5) and mem == pytest.approx(0.25) and used == 0.5
    assert summary.usage(_job(time_limit_s=None), [], JOB_SAMPLE_FIELDS) == (None, None, None)
    assert summary.usage(_job(end_ts=None), [], JOB_SAMPLE_FIELDS)[0] is None


# ------------------------------------------------------------------ writing through Slurm's tools

TOOL = """#!{python}
import json, pathlib, sys
here = pathlib.Path(__file__).parent
name = pathlib.Path(sys.argv[0]).name
with open(here / "calls", "a") as f:
    f.write(json.dumps(sys.argv[1:] and [name, *sys.argv[1:]]) + "\\n")
out = here / (name + ".out")
sys.stdout.write(out.read_text() if out.exists() else "")
err = here / (name + ".err")
if err.exists():
    sys.stderr.write(err.read_text())
    sys.exit(1)
"""


def _tools(tmp_path: Path, outputs: dict[str, str], errors: dict[str, str] | None = None) -> Path:
    """Stand-in squeue, scontrol, sacct and sacctmgr that record their argv and print ``outputs``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("squeue", "scontrol", "sacct", "sacctmgr"):
        tool = bin_dir / name
        tool.write_text(TOOL.format(python=sys.executable))
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
        if name in outputs:
            (bin_dir / f"{name}.out").write_text(outputs[name])
        if errors and name in errors:
            (bin_dir / f"{name}.err").write_text(errors[name])
    return bin_dir


def _calls(bin_dir: Path) -> list[list[str]]:
    path = bin_dir / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _squeue(job_id: str, state: str, admin_comment: str) -> str:
    return json.dumps({"jobs": [{"job_id": int(job_id), "job_state": state, "admin_comment": admin_comment,
                                 "user_name": "u", "exit_code": 256}]})


def _messages(state: str | None = "FAILED") -> list[wire.Message]:
    """Job 7: its start, three samples 600 s apart on n1, its end 1800 s after the start."""
    msgs = [wire.make("job.start", "ctld", 0, {"job_id": "7", "user": "u", "partition": "cpu", "nodes": ["n1"],
                                               "num_nodes": 1, "req_cpus": 2, "req_mem_bytes": 2 * GiB,
                                               "time_limit_s": 3600.0, "start_ts": T0}, T0)]
    for k in range(1, 4):
        msgs.append(wire.make("job.sample", "n1", 0, {
            "job_id": "7", "node": "n1", "ts": T0 + 600 * k, "alloc_cpus": 2, "cpu_user_s": 300.0 * k,
            "cpu_system_s": 0.0, "mem_bytes": GiB, "mem_peak_bytes": GiB * k // 2, "mem_limit_bytes": 2 * GiB},
            T0 + 600 * k))
    msgs.append(wire.make("job.end", "ctld", 0, {"job_id": "7", "end_ts": T0 + 1800, "state": state,
                                                 "exit_code": 1 if state else None}, T0 + 1800))
    return msgs


def _ended_store(tmp_path: Path, state: str | None = "FAILED") -> Store:
    store = Store(tmp_path / "agent.db")
    store.write_messages(_messages(state))
    return store


def _predictions() -> list[dict]:
    factor = {"name": "mem_peak_frac", "value": 0.75, "normal": 0.3, "ratio": 2.5,
              "text": "Memory peak high (75%)"}
    return [{"job_id": "7", "risk": 0.45, "level": "moderate", "ts": T0 + 600, "factors": []},
            {"job_id": "7", "risk": 0.83, "level": "critical", "ts": T0 + 1200, "factors": [factor]},
            {"job_id": "7", "risk": 0.62, "level": "high", "ts": T0 + 1500, "factors": []}]


EXPECTED = Summary(state="FAILED", max_risk=0.83, max_risk_ts=T0 + 1200, level="critical",
                   crossed=(("moderate", T0 + 600), ("critical", T0 + 1200), ("high", T0 + 1500)),
                   eff_cpu=0.25, mem_peak=0.75, time_used=0.5, advice="Memory peak high (75%)")


def test_the_writer_sets_the_summary_with_scontrol_keeping_the_other_text(tmp_path: Path) -> None:
    bin_dir = _tools(tmp_path, {"squeue": _squeue("7", "FAILED", "site note")})
    writer = SummaryWriter()
    writer.observe(_predictions())
    writer.ended(["7"], T0 + 1800)
    with _ended_store(tmp_path) as store:
        assert writer.round(store, Slurm(bin_dir=str(bin_dir)), T0 + 1801) == 1
    calls = _calls(bin_dir)
    assert calls[0][:3] == ["squeue", "--json", "--states=all"]
    update = calls[1]
    assert update[:3] == ["scontrol", "update", "JobId=7"] and len(update) == 4
    assert update[3] == "AdminComment=site note " + format_summary(EXPECTED)
    assert len(calls) == 2 and writer.written == 1 and not writer.pending and not writer.peaks
    assert writer.outcomes == [(True, 600.0)]   # failed; high or critical first at T0 + 1200, ended at T0 + 1800


def test_a_finished_job_goes_to_the_accounting_with_sacctmgr(tmp_path: Path) -> None:
    bin_dir = _tools(tmp_path, {"squeue": _squeue("7", "FAILED", ""), "sacct": "7|JS1:abc\n7.batch|\n"},
                     errors={"scontrol": "slurm_update error: Job has already finished\n"})
    writer = SummaryWriter()
    writer.observe(_predictions())
    writer.ended(["7"], T0 + 1800)
    with _ended_store(tmp_path) as store:
        assert writer.round(store, Slurm(bin_dir=str(bin_dir)), T0 + 1801) == 1
    calls = _calls(bin_dir)
    assert [c[0] for c in calls] == ["squeue", "scontrol", "sacct", "sacctmgr"]
    assert calls[2][1:] == ["--noheader", "--parsable2", "--allocations", "--allusers", "--jobs=7",
                            "--format=JobID,AdminComment"]
    assert calls[3][1:] == ["--immediate", "modify", "job", "where", "jobid=7", "set",
                            "AdminComment=JS1:abc " + format_summary(EXPECTED)]


def test_the_same_summary_already_there_is_not_written_again(tmp_path: Path) -> None:
    bin_dir = _tools(tmp_path, {"squeue": _squeue("7", "FAILED", format_summary(EXPECTED))})
    writer = SummaryWriter()
    writer.observe(_predictions())
    writer.ended(["7"], T0 + 1800)
    with _ended_store(tmp_path) as store:
        assert writer.round(store, Slurm(bin_dir=str(bin_dir)), T0 + 1801) == 1
    assert [c[0] for c in _calls(bin_dir)] == ["squeue"]


def test_a_job_without_final_state_waits_then_is_written_with_state_unknown(tmp_path: Path) -> None:
    bin_dir = _tools(tmp_path, {"squeue": _squeue("7", "COMPLETING", "")})
    writer = SummaryWriter(wait_s=60.0)
    writer.ended(["7"], T0 + 1800)
    slurm = Slurm(bin_dir=str(bin_dir))
    with _ended_store(tmp_path, state=None) as store:
        assert writer.round(store, slurm, T0 + 1810) == 0 and _calls(bin_dir) == []
        assert writer.round(store, slurm, T0 + 1861) == 1
    text = _calls(bin_dir)[-1][3].removeprefix("AdminComment=")
    # never scored: no risk; the use of resources is still known
    assert parse(text) == Summary(eff_cpu=0.25, mem_peak=0.75, time_used=0.5)
    assert writer.outcomes == []                # no final state: no outcome


def test_a_job_that_never_started_gets_no_summary(tmp_path: Path) -> None:
    bin_dir = _tools(tmp_path, {"squeue": _squeue("8", "CANCELLED", "")})
    writer = SummaryWriter()
    writer.ended(["8"], T0)
    with Store(tmp_path / "agent.db") as store:
        store.write_messages([wire.make("job.end", "ctld", 0, {"job_id": "8", "end_ts": T0, "state": "CANCELLED"}, T0)])
        assert writer.round(store, Slurm(bin_dir=str(bin_dir)), T0 + 1) == 0
    assert _calls(bin_dir) == [] and not writer.pending and writer.failed == 0


def test_failed_writes_are_retried_then_counted_and_dropped(tmp_path: Path) -> None:
    bin_dir = _tools(tmp_path, {"squeue": _squeue("7", "FAILED", "")},
                     errors={"scontrol": "slurm_update error: Access/permission denied\n"})
    writer = SummaryWriter(retry_s=10.0, max_attempts=3)
    writer.ended(["7"], T0 + 1800)
    slurm = Slurm(bin_dir=str(bin_dir))
    now = T0 + 1801
    with _ended_store(tmp_path) as store:
        for _ in range(10):
            writer.round(store, slurm, now)
            now += 60
    updates = [c for c in _calls(bin_dir) if c[0] == "scontrol"]
    assert len(updates) == 3 and writer.failed == 1 and writer.written == 0 and not writer.pending


def test_peaks_of_jobs_neither_running_nor_queued_are_forgotten() -> None:
    writer = SummaryWriter()
    writer.observe([{"job_id": j, "risk": 0.5, "level": "moderate", "ts": T0} for j in ("1", "2", "3")])
    writer.ended(["2"], T0)
    writer.observe([{"job_id": "3", "risk": 0.6, "level": "high", "ts": T0 + 30}], running=["3"])
    assert sorted(writer.peaks) == ["2", "3"] and writer.peaks["3"].crossed == {"moderate": T0, "high": T0 + 30}


def test_the_queue_and_the_peaks_are_bounded(tmp_path: Path) -> None:
    writer = SummaryWriter(max_jobs=2)
    writer.observe([{"job_id": str(j), "risk": 0.5, "level": "moderate", "ts": T0} for j in range(5)])
    writer.ended([str(j) for j in range(5)], T0)
    assert len(writer.peaks) == 2 and len(writer.pending) == 2 and writer.dropped == 3 + 3


def test_the_agent_queues_a_job_its_running_check_ends_and_writes_its_summary(tmp_path: Path) -> None:
    squeue = json.dumps({"jobs": [{"job_id": 7, "job_state": "FAILED", "admin_comment": "", "user_name": "u",
                                   "exit_code": 256, "start_time": int(T0), "end_time": int(T0 + 1800)}]})
    bin_dir = _tools(tmp_path, {"squeue": squeue})
    cfg = agent_config(tmp_path)
    agent = Agent(cfg, slurm=Slurm(bin_dir=str(bin_dir)), name="agent0")
    try:
        msgs = [m for m in _messages() if m.kind != "job.end"]
        agent.store.write_messages(msgs)
        agent.state.apply(msgs)
        assert agent.summaries is not None
        agent.summaries.observe(_predictions())
        assert agent.check_running(T0 + 1800 + cfg.agent.running_check_interval_s) == 1
        assert agent.write_summaries() == 1
        assert agent.metrics.summaries_written_total == 1
        assert "nomade_agent_summaries_written_total 1.0" in agent.metrics.render()
    finally:
        agent.close()
    update = [c for c in _calls(bin_dir) if c[0] == "scontrol"]
    assert update == [["scontrol", "update", "JobId=7", "AdminComment=" + format_summary(EXPECTED)]]


def test_no_summary_is_queued_when_the_site_turns_it_off(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path)
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, summary_admin_comment=False))
    agent = Agent(cfg, slurm=Slurm(bin_dir=str(_tools(tmp_path, {}))), name="agent0")
    try:
        assert agent.summaries is None and agent.write_summaries() == 0
    finally:
        agent.close()
