"""``nomade job``: job reports from a real store, the agent's query server on a real
socket with real MUNGE credentials, and the command run as two different Unix users.

Tests marked ``munge`` need munged (the test cluster's start script installs and starts
it; ``munge -n | unmunge`` must work); without it they are skipped with the reason, and
under ``CI=true`` fail instead. The cross-user tests also need root and the cluster's
users (nomadelab1..3): a user runs ``python -m nomade job`` through ``runuser``, against a
query socket under CURVE (the shipped default) with a world-readable copy of the agent's
public key. The venv's interpreter lives under /root (unreadable to them): they run the
system python of the same version with the venv's packages on PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from agenttools import RunningAgent, agent_config

from nomade import config, jobquery, jobview, munge, wire, zmqkeys
from nomade.agent.comment_policy import CommentPolicy
from nomade.agent.jobreport import LATE_S, Reader, ReportTimeout
from nomade.agent.query import NOT_FOUND, QueryServer
from nomade.config import AlertsConfig, SecurityConfig
from nomade.store import RetentionPolicy, Store
from nomade.store.writes import SPAN_ROWS

ROOT = Path(__file__).resolve().parent.parent
USERS = ("nomadelab1", "nomadelab2", "nomadelab3")
NOW = time.time()
T0 = NOW - 7200.0
LIMIT_S = 4 * 3600.0
N_SAMPLES = 99
CPUS_BUSY = 2.0          # samples add this many CPU seconds per second
REQ_CPUS = 4


def _munge_problem() -> str | None:
    """Why MUNGE cannot be used here, or None."""
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return "munge is not installed (slurm-conf/start-test-cluster.sh installs it)"
    try:
        munge.decode(munge.encode(b"probe"))
    except munge.MungeError as e:
        return f"munged does not answer ({e}); start it (slurm-conf/start-test-cluster.sh)"
    return None


@pytest.fixture(scope="module")
def munged() -> None:
    problem = _munge_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and MUNGE is unusable: {problem}", pytrace=False)
        pytest.skip(problem)


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def _job(job_id: str, user: str, *, end: float | None = None, state: str | None = None) -> list[wire.Message]:
    """A one-node job of ``user`` started at T0: ``N_SAMPLES`` samples 30 s apart that
    burn ``CPUS_BUSY`` CPUs and grow memory by 50 MiB each."""
    msgs = [wire.make("job.start", "n1", 0, {
        "job_id": job_id, "user": user, "uid": _uid(user), "partition": "cpu", "nodes": ["n1"],
        "num_nodes": 1, "req_cpus": REQ_CPUS, "req_mem_bytes": 8 << 30, "time_limit_s": LIMIT_S,
        "submit_ts": T0 - 60, "start_ts": T0, "source": "prolog"}, T0)]
    for k in range(1, N_SAMPLES + 1):
        ts = T0 + 30 * k
        mem = (1 << 30) + k * (50 << 20)
        msgs.append(wire.make("job.sample", "n1", 0, {
            "job_id": job_id, "node": "n1", "ts": ts, "cpu_user_s": CPUS_BUSY * 30 * k,
            "cpu_system_s": 0.0, "mem_bytes": mem, "mem_peak_bytes": mem, "read_bytes": k * 1000,
            "write_bytes": k * 2000}, ts))
    if end is not None:
        msgs.append(wire.make("job.end", "n1", 0, {"job_id": job_id, "end_ts": end, "exit_code": 0,
                                                   "state": state, "source": "epilog"}, end))
    return msgs


def _predictions(job_id: str) -> list[dict[str, object]]:
    """A risk that rises 0.01 a tick from 0.01, with a memory factor once above 0.6."""
    out = []
    for k in range(1, N_SAMPLES + 1):
        risk = round(min(0.99, 0.01 * k), 2)
        factors = [{"name": "mem_frac", "value": 0.9, "normal": 0.3, "ratio": 3.0, "text": None}] \
            if risk > 0.6 else []
        out.append({"job_id": job_id, "ts": T0 + 30 * k, "risk": risk, "level": wire.level_for(risk),
                    "parts": {}, "factors": factors})
    return out


def make_store(path: Path) -> Path:
    """Job 101 of nomadelab1 (ended, COMPLETED, never scored), job 102 of nomadelab2
    (running, scored with a rising risk)."""
    with Store(path) as store:
        store.write_messages(_job("101", "nomadelab1", end=T0 + 3000, state="COMPLETED")
                             + _job("102", "nomadelab2"))
        store.add_predictions(_predictions("102"))
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return make_store(tmp_path / "nomade.db")


def _query_config(keys: Path | None = None, **agent: object) -> config.Config:
    """Queries on a loopback port; CURVE with the key set in ``keys``, else none."""
    cfg = config.Config()
    security = SecurityConfig(keys_dir=str(keys)) if keys else SecurityConfig(curve_enabled=False)
    return dataclasses.replace(cfg, security=security, agent=dataclasses.replace(
        cfg.agent, query_endpoint="tcp://127.0.0.1:*", **agent))   # type: ignore[arg-type]


@pytest.fixture
def server(ctx: zmq.Context, store_path: Path, munged: None) -> Iterator[QueryServer]:
    """Protocol tests: no CURVE, on loopback (what check_endpoint allows without it)."""
    srv = QueryServer(_query_config(), ctx, store_path)
    yield srv
    srv.close()


@pytest.fixture
def public_keys() -> Iterator[Path]:
    """A key set whose public server.key any user may read (as a site installs it)."""
    top = Path(tempfile.mkdtemp(prefix="nomade-jobq-"))
    try:
        top.chmod(0o755)
        zmqkeys.setup_keys(top / "keys")
        (top / "server.key").write_bytes((top / "keys" / "server.key").read_bytes())
        (top / "server.key").chmod(0o644)
        yield top
    finally:
        shutil.rmtree(top)


@pytest.fixture
def curve_server(ctx: zmq.Context, store_path: Path, public_keys: Path,
                 munged: None) -> Iterator[QueryServer]:
    """The shipped default: CURVE on, through the agent's authenticator."""
    cfg = _query_config(public_keys / "keys")
    auth = zmqkeys.start_authenticator(ctx, cfg.security)
    srv = QueryServer(cfg, ctx, store_path, auth=auth)
    yield srv
    srv.close()
    assert auth is not None
    auth.stop()


# ---------------------------------------------------------------- the report (no MUNGE)


def test_report_shows_request_against_use_and_the_risk_over_the_run(store_path: Path) -> None:
    reader = Reader(store_path)
    try:
        job = reader.report("102", now=NOW)
        assert reader.report("999", now=NOW) is None
    finally:
        reader.close()
    assert job is not None and job["running"] and job["user"] == "nomadelab2"
    use, req = job["usage"], job["request"]
    assert req == {"cpus": REQ_CPUS, "mem_bytes": 8 << 30, "gpus": None, "time_limit_s": LIMIT_S}
    assert use["samples"] == N_SAMPLES
    assert use["cpus_used"] == pytest.approx(CPUS_BUSY)
    assert use["cpu_eff"] == pytest.approx(CPUS_BUSY / REQ_CPUS)
    assert use["mem_peak_bytes"] == (1 << 30) + N_SAMPLES * (50 << 20)
    assert use["elapsed_s"] == pytest.approx(NOW - T0)
    assert use["time_left_s"] == pytest.approx(LIMIT_S - (NOW - T0))
    assert use["read_bytes"] == N_SAMPLES * 1000 and use["write_bytes"] == N_SAMPLES * 2000
    preds = _predictions("102")
    risk = job["risk"]
    assert risk["n"] == len(preds) and risk["max"] == 0.99 and risk["last_level"] == "critical"
    assert [p[1] for p in risk["points"]] == [p["risk"] for p in preds]   # fewer than MAX_POINTS: all
    first = {}
    for p in preds:
        first.setdefault(p["level"], p["ts"])
    assert job["levels"]["first"] == first
    assert [(c["from"], c["to"]) for c in job["levels"]["changes"]] == [
        ("low", "moderate"), ("moderate", "high"), ("high", "critical")]


def test_advice_is_what_the_comment_policy_writes_for_the_stored_predictions(store_path: Path) -> None:
    reader = Reader(store_path, AlertsConfig(high_risk_threshold=0.7, confirm_predictions=2))
    try:
        job = reader.report("102", now=NOW)
    finally:
        reader.close()
    assert job is not None
    policy = CommentPolicy(AlertsConfig(high_risk_threshold=0.7, confirm_predictions=2))
    written = [u for p in _predictions("102") for u in policy.decide([p])]
    assert written, "the rising risk crosses the threshold: the policy writes advice"
    assert [(a["text"], a["level"], a["reason"]) for a in job["advice"]] == [
        (u.segment, u.level, u.reason) for u in written]
    stored = {p["ts"] for p in _predictions("102")}
    assert all(a["ts"] in stored for a in job["advice"])
    assert all("request more memory" in a["text"] for a in job["advice"] if a["reason"] == "alert")


def test_an_ended_job_whose_samples_were_thinned_says_so(store_path: Path) -> None:
    end = T0 + 3000
    later = end + 20 * 86400
    storage = dataclasses.replace(config.StorageConfig(), full_samples_days=14.0, thin_samples_to=5)
    with Store(store_path) as store:
        counts = store.prune(later, RetentionPolicy.from_config(storage))
    assert counts.job_samples_thinned > 0
    reader = Reader(store_path, storage=storage)
    try:
        job = reader.report("101", now=later)
    finally:
        reader.close()
    assert job is not None and not job["running"] and job["state"] == "COMPLETED"
    assert job["usage"]["samples"] < N_SAMPLES
    assert any("thinned" in n for n in job["notes"])
    assert any("not scored" in n for n in job["notes"])
    assert job["usage"]["time_left_s"] is None   # ended: nothing left


def test_an_ended_jobs_samples_are_read_up_to_the_rows_stored_soon_after_its_end(store_path: Path) -> None:
    end = T0 + 3000
    later = end + LATE_S + 600
    with Store(store_path) as store:   # two spans' worth of another job's rows, stored long after
        store.write_messages([wire.make("job.sample", "n2", 0, {"job_id": "500", "node": "n2", "ts": later + k},
                                        later + k) for k in range(3 * SPAN_ROWS)])
        store.write_messages([wire.make("job.sample", "n1", 0, {"job_id": "101", "node": "n1",
                                                                "ts": end - 1, "cpu_user_s": 1e9}, end - 1)])
        assert store.sample_count("101") == N_SAMPLES + 1
    reader = Reader(store_path)
    try:
        job = reader.report("101", now=later)
    finally:
        reader.close()
    assert job is not None and job["usage"]["samples"] == N_SAMPLES, "the row stored hours late is past the bound"
    assert job["usage"]["cpus_used"] == pytest.approx(CPUS_BUSY)


def test_a_report_past_its_budget_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    with Store(path) as store:
        store.write_messages(_job("7", "nomadelab1") * 1)
        rows = [wire.make("job.sample", "n1", 0, {"job_id": "7", "node": f"n{k % 50}", "ts": T0 + k,
                                                  "cpu_user_s": float(k)}, T0 + k) for k in range(20_000)]
        store.write_messages(rows)
    reader = Reader(path, budget_s=1e-6)
    try:
        with pytest.raises(ReportTimeout):
            reader.report("7", now=NOW)
    finally:
        reader.close()


def test_the_page_has_a_chart_that_keeps_each_slice_peak() -> None:
    points = [[T0 + k, 0.05, "low"] for k in range(100)]
    points[50] = [T0 + 50, 0.95, "critical"]
    lines = jobview.chart(points, 20)
    top, below = (line.split("|", 1)[1] for line in lines[:2])
    assert top.strip() == "▆", "0.95 fills 3/4 of the 0.8-1.0 row, in eighths: 6"
    assert top.index("▆") == below.index("█") == 10 and below.strip() == "█"
    assert lines[jobview.CHART_ROWS - 1].split("|", 1)[1] == "▂" * 10 + "█" + "▂" * 9   # 0.05: a quarter of 0.0-0.2
    ascii_lines = jobview.chart(points, 20, ascii_only=True)
    assert all(line.isascii() for line in ascii_lines)
    assert "#" in ascii_lines[1] and len(ascii_lines) == jobview.CHART_ROWS + 1


@pytest.mark.parametrize("bad", ["", "12;rm -rf /", "abc", "1 2", "-5", "9" * 20])
def test_job_ids_are_checked_before_anything_is_sent(bad: str) -> None:
    with pytest.raises(jobquery.QueryError, match="not a Slurm job id"):
        jobquery.query_payload(bad)


def test_query_endpoint_is_checked_by_the_config(tmp_path: Path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text('[agent]\nquery_endpoint = ""\nquery_admins = ["nomadelab3"]\n')
    cfg = config.load(good)
    assert cfg.agent.query_endpoint == "" and cfg.agent.query_admins == ("nomadelab3",)
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nquery_endpoint = "localhost:5557"\nquery_max_per_s = 0\n')
    with pytest.raises(config.ConfigError, match="agent.query_endpoint") as e:
        config.load(bad)
    assert "agent.query_max_per_s" in str(e.value)


@pytest.mark.munge
def test_no_agent_answering_is_a_clear_error_quickly(munged: None) -> None:
    from agenttools import free_port

    t = time.monotonic()
    with pytest.raises(jobquery.QueryError, match="no answer from the agent") as e:
        jobquery.ask(f"tcp://127.0.0.1:{free_port()}", "101", timeout_s=0.5)
    assert e.value.code == "unreachable" and time.monotonic() - t < 5


# ---------------------------------------------------------------- the server, as root


@pytest.mark.munge
def test_root_sees_every_job_and_an_unknown_job_is_not_found(server: QueryServer) -> None:
    assert jobquery.ask(server.endpoint, "101")["user"] == "nomadelab1"
    assert jobquery.ask(server.endpoint, "102")["user"] == "nomadelab2"
    with pytest.raises(jobquery.QueryError) as e:
        jobquery.ask(server.endpoint, "999")
    assert e.value.code == "not_found" and str(e.value) == NOT_FOUND.format(job_id="999")
    assert server.counts["ok"] == 2 and server.counts["not_found"] == 1


def _exchange(ctx: zmq.Context, endpoint: str, *frames: bytes) -> dict[str, object] | None:
    """Send ``frames`` as one message from a fresh DEALER; the decoded reply, or None."""
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart(list(frames))
        if not sock.poll(3000):
            return None
        reply = msgpack.unpackb(sock.recv(), raw=False)
        assert isinstance(reply, dict)
        return reply


@pytest.mark.munge
def test_a_credential_answers_its_own_query_once(ctx: zmq.Context, server: QueryServer) -> None:
    payload, nonce = jobquery.query_payload("101")
    frame = jobquery.request_frame(munge.encode(payload))
    first = _exchange(ctx, server.endpoint, frame)
    assert first is not None and first["ok"] and first["nonce"] == nonce
    again = _exchange(ctx, server.endpoint, frame)
    assert again is not None and again["code"] == "auth" and "replayed" in str(again["error"])
    assert server.counts["auth"] == 1


@pytest.mark.munge
def test_malformed_requests_are_counted_answered_and_harmless(ctx: zmq.Context, server: QueryServer) -> None:
    for frame in (b"\xc1 not msgpack", msgpack.packb([1, 2]), msgpack.packb({"v": 1}),
                  msgpack.packb({"v": 1, "cred": b"MUNGE:forged"}),
                  jobquery.request_frame(munge.encode(b"not a query"))):
        reply = _exchange(ctx, server.endpoint, frame)
        assert reply is not None and not reply["ok"] and reply["code"] in ("bad_request", "auth")
    assert _exchange(ctx, server.endpoint, b"a", b"b") is None      # three frames at the ROUTER
    assert server.counts["malformed"] == 1
    assert server.counts["bad_request"] + server.counts["auth"] == 5
    assert jobquery.ask(server.endpoint, "102")["job_id"] == "102"   # still serving


@pytest.mark.munge
def test_an_oversized_request_is_dropped_by_zeromq(ctx: zmq.Context, server: QueryServer) -> None:
    assert _exchange(ctx, server.endpoint, b"x" * (jobquery.MAX_REQUEST_BYTES + 1)) is None
    assert jobquery.ask(server.endpoint, "101")["job_id"] == "101"


@pytest.mark.munge
def test_queries_beyond_the_rate_are_busy_without_unmunge(ctx: zmq.Context, store_path: Path,
                                                          munged: None) -> None:
    srv = QueryServer(_query_config(query_max_per_s=0.01), ctx, store_path)   # a burst of 1
    try:
        assert jobquery.ask(srv.endpoint, "101")["job_id"] == "101"
        payload, _ = jobquery.query_payload("101")
        reply = _exchange(ctx, srv.endpoint, jobquery.request_frame(munge.encode(payload)))
        assert reply is not None and reply["code"] == "busy"
        assert srv.counts == {**dict.fromkeys(srv.counts, 0), "ok": 1, "busy": 1}
    finally:
        srv.close()


@pytest.mark.munge
def test_the_agent_serves_queries_from_its_own_store(tmp_path: Path, munged: None) -> None:
    cfg = agent_config(tmp_path)
    make_store(Path(cfg.storage.db_path))
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, query_endpoint="tcp://127.0.0.1:*"))
    running = RunningAgent(cfg)
    try:
        query = running.agent.query
        assert query is not None
        assert jobquery.ask(query.endpoint, "102")["usage"]["samples"] == N_SAMPLES
        with pytest.raises(jobquery.QueryError):
            jobquery.ask(query.endpoint, "999")
        text = running.agent.metrics.render()
        assert 'nomade_agent_queries_total{outcome="ok"} 1.0' in text
        assert 'nomade_agent_queries_total{outcome="not_found"} 1.0' in text
    finally:
        running.stop()


@pytest.mark.munge
def test_with_curve_only_the_agent_whose_key_the_client_holds_answers(
        ctx: zmq.Context, curve_server: QueryServer, public_keys: Path) -> None:
    key = zmqkeys.load_public_key(public_keys / "server.key")
    assert jobquery.ask(curve_server.endpoint, "101", server_key=key)["job_id"] == "101"
    for wrong in (zmq.curve_keypair()[0], None):   # another server's key; no CURVE at all
        with pytest.raises(jobquery.QueryError) as e:
            jobquery.ask(curve_server.endpoint, "101", server_key=wrong, timeout_s=1.0)
        assert e.value.code == "unreachable"
    assert curve_server.counts["ok"] == 1 and sum(curve_server.counts.values()) == 1


@pytest.mark.munge
def test_the_query_domain_opens_no_other_socket_to_unknown_keys(
        ctx: zmq.Context, store_path: Path, public_keys: Path, munged: None) -> None:
    """Any key may ask a query; an ingest-like socket on the same authenticator (the
    default domain) still takes only authorized keys."""
    cfg = _query_config(public_keys / "keys")
    auth = zmqkeys.start_authenticator(ctx, cfg.security)
    assert auth is not None
    srv = QueryServer(cfg, ctx, store_path, auth=auth)
    router, stranger = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.linger = stranger.linger = 0
        zmqkeys.secure_server(router, cfg.security, auth)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        server_key = zmqkeys.load_public_key(public_keys / "server.key")
        stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        stranger.curve_serverkey = server_key
        stranger.connect(f"tcp://127.0.0.1:{port}")
        stranger.send(b"hello")
        assert jobquery.ask(srv.endpoint, "102", server_key=server_key)["job_id"] == "102"
        assert not router.poll(1000), "an unauthorized key got through the default domain"
    finally:
        router.close()
        stranger.close()
        srv.close()
        auth.stop()


# ---------------------------------------------------------------- as two Unix users


def _user_python() -> tuple[list[str], dict[str, str]] | str:
    """How another user runs this tree's nomade: argv head and environment, or why not.
    The venv's interpreter may sit in a directory only root reads (/root/.pyenv): then
    the system python of the same version runs with the venv's packages on the path."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "needs root and runuser to run as other users"
    try:
        for user in USERS:
            pwd.getpwnam(user)
    except KeyError as e:
        return f"no user {e} (slurm-conf/start-test-cluster.sh creates the test users)"
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    v = sys.version_info
    for python in (sys.executable, f"/usr/bin/python{v.major}.{v.minor}"):
        probe = subprocess.run(["runuser", "-u", USERS[0], "--", python, "-c", "import zmq, msgpack, nomade"],
                               env=env, cwd="/", capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return [python, "-m", "nomade"], env
    return f"no python {v.major}.{v.minor} that {USERS[0]} may run with this tree's packages"


@pytest.fixture(scope="module")
def as_user(munged: None) -> tuple[list[str], dict[str, str]]:
    found = _user_python()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the cross-user test cannot run: {found}", pytrace=False)
        pytest.skip(found)
    return found


def _nomade_job(as_user: tuple[list[str], dict[str, str]], user: str | None, endpoint: str,
                *args: str) -> subprocess.CompletedProcess[str]:
    """``nomade job ARGS`` run as ``user`` (None: this process's user, root), with the
    built-in defaults (CURVE on; no /etc/nomade/nomade.toml here)."""
    argv, env = as_user
    prefix = [] if user is None else ["runuser", "-u", user, "--"]
    return subprocess.run([*prefix, *argv, "job", "--endpoint", endpoint, *args], env=env, cwd="/",
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.munge
def test_each_user_sees_their_own_job_and_not_the_others(
        curve_server: QueryServer, public_keys: Path, as_user: tuple[list[str], dict[str, str]]) -> None:
    key = ("--server-key", str(public_keys / "server.key"))
    endpoint = curve_server.endpoint
    for user, mine, theirs in (("nomadelab1", "101", "102"), ("nomadelab2", "102", "101")):
        own = _nomade_job(as_user, user, endpoint, mine, *key)
        assert own.returncode == 0, own.stderr
        assert f"Job {mine}  user {user}" in own.stdout and "requested" in own.stdout
        other = _nomade_job(as_user, user, endpoint, theirs, *key)
        unknown = _nomade_job(as_user, user, endpoint, "999", *key)
        assert (other.returncode, unknown.returncode) == (1, 1)
        assert other.stdout == "" and theirs not in other.stdout
        # a job that is not yours reads exactly like a job that does not exist
        assert other.stderr.replace(theirs, "N") == unknown.stderr.replace("999", "N")
        assert "no such job of yours" in other.stderr
    as_json = _nomade_job(as_user, "nomadelab2", endpoint, "102", "--json", *key)
    assert as_json.returncode == 0, as_json.stderr
    job = json.loads(as_json.stdout)
    assert (job["user"], job["uid"], job["risk"]["n"]) == ("nomadelab2", _uid("nomadelab2"), N_SAMPLES)
    assert curve_server.counts["ok"] == 3 and curve_server.counts["not_found"] == 4
    keyless = _nomade_job(as_user, "nomadelab1", endpoint, "101")   # CURVE on, no key at hand
    assert keyless.returncode == 2 and "--server-key" in keyless.stderr, keyless.stderr


@pytest.mark.munge
def test_root_and_query_admins_see_both(ctx: zmq.Context, store_path: Path, public_keys: Path,
                                        as_user: tuple[list[str], dict[str, str]]) -> None:
    cfg = _query_config(public_keys / "keys", query_admins=("nomadelab3",))
    auth = zmqkeys.start_authenticator(ctx, cfg.security)
    assert auth is not None
    srv = QueryServer(cfg, ctx, store_path, auth=auth)
    key = ("--server-key", str(public_keys / "server.key"))
    try:
        for user in (None, "nomadelab3"):
            for job_id in ("101", "102"):
                done = _nomade_job(as_user, user, srv.endpoint, job_id, *key)
                assert done.returncode == 0, (user, done.stderr)
                assert f"Job {job_id}" in done.stdout
        plain = _nomade_job(as_user, "nomadelab1", srv.endpoint, "102", *key)
        assert plain.returncode == 1
    finally:
        srv.close()
        auth.stop()
