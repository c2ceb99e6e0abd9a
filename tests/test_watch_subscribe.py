"""``nomade subscribe`` and ``nomade watch`` against a real PUB socket on 127.0.0.1.

The publisher in each test sends real ``nomade.wire`` prediction frames with the
agent's framing ([b"prediction." + level, frame]) until the command has what it needs:
PUB drops what is sent before a subscriber has joined, so it publishes in rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from nomade import wire, zmqkeys
from nomade.agent import advice
from nomade.commands import subscribe, watch
from nomade.config import Config

JOBS = [  # job, user, partition, risk
    ("101", "alice", "cpu", 0.10), ("102", "alice", "gpu", 0.45), ("103", "bob", "cpu", 0.55),
    ("104", "bob", "gpu", 0.91), ("105", "carol", "cpu", 0.75), ("106", "alice", "cpu", 0.85)]


def prediction_parts(job_id: str, user: str, partition: str, risk: float,
                     seq: int = 1) -> list[bytes]:
    """The two frames the agent publishes for one scored job."""
    factors = advice.wire_factors([
        {"name": "mem_frac", "value": 0.93, "normal": 0.4, "contribution": 0.2},
        {"name": "nfs_write_share", "value": 0.89, "normal": 0.3, "contribution": 0.1}])
    level = wire.level_for(risk)
    msg = wire.make("prediction", "agent", seq, {
        "job_id": job_id, "user": user, "partition": partition, "nodes": ["cn01", "cn02"],
        "risk": risk, "level": level, "parts": {"gnn": risk, "lstm": None, "autoencoder": 0.5},
        "factors": factors, "ts": 1_700_000_000.0 + seq, "model_version": "1"})
    return [subscribe.TOPIC_PREFIX + level.encode(), wire.encode(msg)]


@pytest.fixture
def pub(ctx: zmq.Context) -> Iterator[tuple[zmq.Socket, str]]:
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "nomade.toml"
    path.write_text("[agent]\ninterval_s = 1.0\n[security]\ncurve_enabled = false\n")
    return path


def run_nomade(config: Path, args: list[str], sock: zmq.Socket,
               rounds: list[list[list[bytes]]] | None = None,
               timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``nomade ARGS`` in a subprocess while publishing JOBS (or ``rounds``) in turns."""
    proc = subprocess.Popen([sys.executable, "-m", "nomade", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"})
    deadline = time.monotonic() + timeout_s
    seq = 0
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seq += 1
            frames = rounds[seq % len(rounds)] if rounds else [
                prediction_parts(*job, seq=seq) for job in JOBS]
            for parts in frames:
                sock.send_multipart(parts)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=5 if proc.poll() is not None else 0.1)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode is not None, f"nomade {args} still running after {timeout_s}s: {err}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_topics_are_prefixes_of_the_level_and_above() -> None:
    assert subscribe.topics("high") == [b"prediction.high", b"prediction.critical"]
    assert len(subscribe.topics("low")) == len(wire.LEVELS)
    assert subscribe.LEVELS == wire.LEVELS
    with pytest.raises(ValueError):
        subscribe.topics("severe")


def test_subscribe_min_level_high_gets_only_high_and_critical(pub, config) -> None:
    sock, endpoint = pub
    done = run_nomade(config, ["subscribe", "--endpoint", endpoint, "--min-level", "high",
                               "--count", "12"], sock)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 12
    assert {d["level"] for d in lines} <= {"high", "critical"}
    assert {d["job_id"] for d in lines} == {"104", "105", "106"}
    first = lines[0]
    assert first["sender"] == "agent" and first["nodes"] == ["cn01", "cn02"]
    assert first["factors"][0]["name"] == "mem_frac" and first["parts"]["lstm"] is None


def test_subscribe_user_and_partition_filters(pub, config) -> None:
    sock, endpoint = pub
    done = run_nomade(config, ["subscribe", "--endpoint", endpoint, "--user", "alice",
                               "--count", "6"], sock)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 6 and {d["user"] for d in lines} == {"alice"}
    assert {d["job_id"] for d in lines} == {"101", "102", "106"}
    done = run_nomade(config, ["subscribe", "--endpoint", endpoint, "--partition", "gpu",
                               "--min-level", "moderate", "--count", "4"], sock)
    ids = {json.loads(line)["job_id"] for line in done.stdout.splitlines()}
    assert ids == {"102", "104"}


def test_subscribe_skips_bad_frames_and_keeps_going(pub, config) -> None:
    sock, endpoint = pub
    good = prediction_parts("104", "bob", "gpu", 0.91)
    junk = [[b"prediction.high", b"\xc1 not msgpack"], [b"prediction.high"],
            [b"prediction.critical", wire.encode(wire.make_ack("agent", 3))]]
    done = run_nomade(config, ["subscribe", "--endpoint", endpoint, "--count", "3"], sock,
                      rounds=[junk, [good]])
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["job_id"] for line in done.stdout.splitlines()] == ["104"] * 3
    assert "skipped a bad frame" in done.stderr


def test_watch_once_renders_the_table_sorted_by_risk(pub, config) -> None:
    sock, endpoint = pub
    done = run_nomade(config, ["watch", "--endpoint", endpoint, "--once", "--wait", "2"], sock)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"NOMADE watch  {endpoint}") and "6 jobs, 3 at high or above" in lines[0]
    assert lines[1].split() == ["JOB", "USER", "PARTITION", "NODES", "RISK", "LEVEL", "T", "FACTORS"]
    assert [line.split()[0] for line in lines[2:]] == ["104", "106", "105", "103", "102", "101"]
    top = lines[2].split()
    assert top[1:7] == ["bob", "gpu", "cn01+1", "0.91", "critical", "="]
    assert "mem 0.93 2.3x, nfs share 0.89 3x" in lines[2]
    assert "\x1b[" not in done.stdout                       # not a terminal: no ANSI


def test_watch_plain_lines_when_not_a_terminal(pub, config) -> None:
    sock, endpoint = pub
    proc_args = ["watch", "--endpoint", endpoint, "--min-level", "critical"]
    proc = subprocess.Popen([sys.executable, "-m", "nomade", "--config", str(config), *proc_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        line = ""
        os.set_blocking(proc.stdout.fileno(), False)
        while not line and time.monotonic() < deadline:
            sock.send_multipart(prediction_parts("104", "bob", "gpu", 0.91))
            time.sleep(0.05)
            line = proc.stdout.readline()
    finally:
        proc.kill()
        proc.communicate()
    assert line.split()[1:7] == ["104", "bob", "gpu", "cn01+1", "0.91", "critical"]


def test_render_colours_levels_and_fits_narrow_terminals() -> None:
    board = watch.Board(stale_s=60)
    for i, (job, user, part, risk) in enumerate(JOBS):
        board.update({"job_id": job, "user": user, "partition": part, "nodes": ["cn01"],
                      "risk": risk, "level": wire.level_for(risk), "factors": []}, now=100.0 + i)
    board.update({"job_id": "101", "risk": 0.35, "level": "moderate"}, now=110.0)
    rows = board.rows()
    assert rows[-1].job_id == "101" and rows[-1].trend == "up" and rows[0].trend == "new"
    coloured = watch.render(rows, "head", width=100, colour=True)
    assert "\x1b[1;37;41mcritical\x1b[0m" in coloured[2] and "\x1b[33mmoderate" in coloured[-1]
    for width in (40, 50, 60, 80):
        narrow = watch.render(rows, "head", width=width)
        assert all(len(line) <= width for line in narrow), (width, narrow)
    assert "NODES" not in watch.render(rows, "h", width=60)[1]
    assert watch.render(rows, "h", width=100, height=5)[-1] == "... 4 more"
    assert board.expire(now=101.0 + 60.5) == 1 and len(board.rows()) == 5


def test_subscribe_with_curve_keys(ctx: zmq.Context, tmp_path: Path) -> None:
    """An authorized client gets predictions through CURVE; one with an unknown key gets none."""
    from nomade.config import SecurityConfig

    keys = tmp_path / "keys"
    zmqkeys.create_keypair(keys, "server")
    zmqkeys.create_keypair(keys, "client")
    zmqkeys.create_keypair(tmp_path / "other", "client")
    (keys / "authorized_clients").mkdir()
    zmqkeys.authorize(keys / "client.key", SecurityConfig(curve_enabled=True, keys_dir=str(keys)))
    security = SecurityConfig(curve_enabled=True, keys_dir=str(keys))
    auth = zmqkeys.start_authenticator(ctx, security)
    assert auth is not None
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    try:
        zmqkeys.secure_server(sock, security, auth)
        endpoint = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
        cfg = tmp_path / "curve.toml"
        cfg.write_text(f'[security]\ncurve_enabled = true\nkeys_dir = "{keys}"\n')
        done = run_nomade(cfg, ["subscribe", "--endpoint", endpoint, "--count", "2"], sock)
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
        refused = run_nomade(cfg, [
            "subscribe", "--endpoint", endpoint, "--count", "1", "--server-key",
            str(keys / "server.key"), "--client-key", str(tmp_path / "other" / "client.key")],
            sock, timeout_s=3)
        assert refused.returncode == -9 and refused.stdout == "", refused.stderr   # waited, got nothing
    finally:
        sock.close(linger=0)
        auth.stop()


# ------------------------------------------------------------------ nomade report

def make_store(path: Path) -> None:
    """Eight jobs: four failed (two alerted in time, one never, one only after its end),
    three completed (one false alarm), one running; at the default alert threshold (0.75)."""
    from nomade.store import Store

    t0 = 1_700_000_000.0
    ends = {"1": ("FAILED", 500), "2": ("OUT_OF_MEMORY", 1050), "3": ("TIMEOUT", 700),
            "4": ("COMPLETED", 600), "5": ("COMPLETED", 600), "6": ("COMPLETED", 300),
            "7": ("FAILED", 400)}
    risks = {"1": [(100, 0.3), (200, 0.75)], "2": [(150, 0.9), (300, 0.95)], "3": [(100, 0.2)],
             "4": [(120, 0.8), (200, 0.5)], "5": [(100, 0.1)], "7": [(300, 0.4), (450, 0.9)],
             "8": [(100, 0.9)]}
    msgs = [wire.make("job.start", "ctld", 1, {"job_id": j, "user": "alice", "start_ts": t0,
                                               "source": "prolog"}, ts=t0) for j in "12345678"]
    msgs += [wire.make("job.end", "ctld", 1, {"job_id": j, "end_ts": t0 + end, "state": state,
                                              "source": "jobcomp"}, ts=t0 + end)
             for j, (state, end) in ends.items()]
    with Store(path) as store:
        store.write_messages(msgs)
        store.add_predictions(
            {"job_id": j, "ts": t0 + t, "risk": r, "level": wire.level_for(r),
             "parts": {"gnn": r}, "factors": [], "model_version": "1"}
            for j, pts in risks.items() for t, r in pts)


def test_report_json_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nomade import cli

    make_store(tmp_path / "s.db")
    assert cli.main(["report", "--db", str(tmp_path / "s.db"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["threshold"] == Config().ml.alerts.high_risk_threshold
    assert s["jobs"] == {"total": 8, "running": 1, "ended": 7, "final_state_known": 7}
    assert (s["failures"]["failed"], s["failures"]["ended"]) == (4, 7)
    assert s["failures"]["by_state"]["COMPLETED"] == {"jobs": 3, "share": 3 / 7}
    assert s["predictions"] == {"count": 11, "jobs": 7, "jobs_crossed": 5}
    al = s["alerts"]
    assert al["coverage"] == {"caught": 2, "failed": 4, "rate": 0.5}      # job 7 crossed too late
    assert al["false_alarms"] == {"alerted": 1, "completed": 2, "rate": 0.5}
    assert al["precision"] == {"failed": 2, "alerted": 3, "rate": 2 / 3}
    assert al["lead_times_s"] == [300.0, 900.0] and al["lead_time_s"]["median"] == 600.0


def test_report_text_and_svg_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nomade import cli

    make_store(tmp_path / "s.db")
    svg = tmp_path / "lead.svg"
    assert cli.main(["report", "--db", str(tmp_path / "s.db"), "--threshold", "0.85",
                     "--plot", str(svg)]) == 0
    out = capsys.readouterr().out
    assert "alert threshold 0.85" in out
    assert "coverage    1 of 4 failed jobs crossed before they ended (25.0%)" in out
    assert "false alarms 0 of 2 completed jobs" in out
    assert "lead time   median 15.0 min" in out     # job 1 never reaches 0.85: job 2 alone
    assert f"plot: wrote {svg}" in out and "<svg" in svg.read_text()


def test_subscribe_reads_the_agents_own_publisher(pub, config, tmp_path: Path) -> None:
    """The agent core's Publisher (nomade.agent.publisher) on the PUB socket, subscribe
    on the other end: the framing and the bodies agree."""
    from nomade.agent.publisher import Publisher
    from nomade.store import Store

    sock, endpoint = pub
    with Store(tmp_path / "agent.db") as store:
        publisher = Publisher(sock, store, "agent-host")
        bodies = [{"job_id": j, "user": u, "partition": p, "nodes": ["cn01"], "risk": r,
                   "level": wire.level_for(r), "parts": {"gnn": r, "lstm": None, "autoencoder": None},
                   "factors": advice.wire_factors([{"name": "cpu_eff", "value": 0.2, "normal": 0.7}]),
                   "ts": 1_700_000_000.0, "model_version": "1"} for j, u, p, r in JOBS]
        proc = subprocess.Popen([sys.executable, "-m", "nomade", "--config", str(config), "subscribe",
                                 "--endpoint", endpoint, "--min-level", "critical", "--count", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            publisher.publish(bodies)
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    lines = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0 and len(lines) == 4, err
    assert {d["job_id"] for d in lines} == {"104", "106"} and lines[0]["sender"] == "agent-host"
    assert lines[0]["factors"][0]["text"].startswith("Low CPU efficiency (20%)")
