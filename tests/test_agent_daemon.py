"""The agent daemon: SIGTERM without loss (a real ``nomade agent`` process), restart from
the store, and the scoring tick with and without a trained model, on real sockets."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from agenttools import RunningAgent, acked, agent_config, batch, dealer, free_port, running_job_batch
from modeltools import train_small_models
from waiting import wait_until

from nomade import wire
from nomade.agent.publisher import topics_from
from nomade.store import Store

REPO = Path(__file__).resolve().parent.parent


def start_agent(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp_path / "nomade.toml"
    conf.write_text(f'[agent]\ningest_endpoint = "tcp://127.0.0.1:{port}"\n'
                    f'publish_endpoint = "tcp://127.0.0.1:{free_port()}"\nmetrics_address = ""\n'
                    f'[storage]\ndb_path = "{tmp_path / "agent.db"}"\n'
                    f'[ml]\nmodels_dir = "{tmp_path / "models"}"\n'
                    '[security]\ncurve_enabled = false\n')   # loopback only
    env = {**os.environ, "NOMADE_CONFIG": str(conf), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "nomade", "-v", "agent", "--no-slurm"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE)


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, 60, "the agent did not listen")


def collect_acks(sock: zmq.Socket, acks: set[int], timeout_ms: int) -> None:
    while (seq := acked(sock, timeout_ms)) is not None:
        acks.add(seq)


def test_sigterm_flushes_and_a_restart_loses_and_doubles_nothing(tmp_path: Path, ctx: zmq.Context) -> None:
    port = free_port()
    n_batches, per_batch = 300, 50
    frames = {seq: batch("n1", seq, per_batch, job0=1 + seq % 7) for seq in range(1, n_batches + 1)}
    proc = start_agent(tmp_path, port)
    acks: set[int] = set()
    sock = dealer(ctx, f"tcp://127.0.0.1:{port}")
    try:
        wait_listening(proc, port)
        for frame in frames.values():
            sock.send(frame)
        proc.send_signal(signal.SIGTERM)   # while batches are still arriving
        collect_acks(sock, acks, 2000)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
        with Store(tmp_path / "agent.db") as store:   # every acked batch is stored
            stored = store.sample_count()
        assert stored >= len(acks) * per_batch
        # the collector resends what was not acked to a restarted agent
        proc = start_agent(tmp_path, port)
        wait_listening(proc, port)
        for seq in sorted(set(frames) - acks):
            sock.send(frames[seq])
        deadline = time.monotonic() + 60
        while len(acks) < n_batches and time.monotonic() < deadline:
            collect_acks(sock, acks, 2000)
            for seq in sorted(set(frames) - acks):
                sock.send(frames[seq])
    finally:
        sock.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert acks == set(frames)
    with Store(tmp_path / "agent.db") as store:
        assert store.sample_count() == n_batches * per_batch   # no loss, no duplicate


def test_restart_rebuilds_running_jobs_from_the_store(tmp_path: Path) -> None:
    now = time.time()
    msgs = [wire.make("job.start", "c", 0, {"job_id": j, "user": "u", "start_ts": now - 100,
                                            "req_cpus": 2, "nodes": ["n1"]}, now) for j in ("1", "2", "3")]
    msgs += [wire.make("job.end", "c", 0, {"job_id": "3", "end_ts": now - 10, "state": "FAILED"}, now)]
    msgs += [wire.make("job.sample", "n1", 0, {"job_id": "1", "node": "n1", "ts": now - 60 + k}, now)
             for k in range(5)]
    with Store(tmp_path / "agent.db") as store:
        store.write_batch("n1", 1, msgs)
    running = RunningAgent(agent_config(tmp_path))
    running.stop()
    state = running.agent.state
    assert [r.job_id for r in state.scorable()] == ["1", "2"]
    assert len(state.running["1"].samples) == 5 and state.running["1"].request["req_cpus"] == 2
    assert state.history["3"].state == "FAILED"
    assert running.agent.metrics.running_jobs == 2


def test_without_a_model_the_tick_publishes_nothing(tmp_path: Path, ctx: zmq.Context,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = agent_config(tmp_path)
    cfg = dataclasses.replace(cfg, ml=dataclasses.replace(cfg.ml, starter=False))   # no starter model either
    running = RunningAgent(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, interval_s=0.2)))
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(running.agent.publish_endpoint)
    sub.subscribe(b"")
    sock = dealer(ctx, running.agent.ingest_endpoint)
    try:
        sock.send(running_job_batch(1, time.time()))
        assert acked(sock) == 1
        ticks = running.agent.metrics.ticks_total
        wait_until(lambda: running.agent.metrics.ticks_total >= ticks + 3, 30, "the agent did not tick")
        assert not sub.poll(500)
    finally:
        sock.close()
        sub.close()
        running.stop()
    m = running.agent.metrics
    assert m.ticks_total >= 3 and m.tick_errors_total == 0 and m.model_loaded == 0
    assert sum(m.predictions_total.values()) == 0
    no_model = [r for r in caplog.records if "no trained model" in r.getMessage()]
    assert len(no_model) == 1   # said once, not every tick
    with Store(tmp_path / "agent.db") as store:
        assert store.counts()["predictions"] == 0


@pytest.mark.slow
def test_without_models_of_its_own_the_agent_scores_with_the_starter(tmp_path: Path, ctx: zmq.Context) -> None:
    from nomade.ml import persist, starter
    cfg = agent_config(tmp_path)
    running = RunningAgent(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, interval_s=0.5)))
    sock = dealer(ctx, running.agent.ingest_endpoint)
    try:
        sock.send(running_job_batch(1, time.time()))
        assert acked(sock) == 1
        wait_until(lambda: sum(running.agent.metrics.predictions_total.values()) >= 3, 60,
                   "the starter scored no job")
    finally:
        sock.close()
        running.stop()
    shipped = persist.model_version(persist.read_metadata(starter.STARTER_DIR))
    with Store(tmp_path / "agent.db") as store:
        stored = store.latest_predictions()
    assert set(stored) == {"1", "2", "3"} and {p.model_version for p in stored.values()} == {shipped}
    state = persist.read_agent_state(tmp_path)
    assert state is not None and state["which"] == "starter" and state["model_version"] == shipped
    assert "no models of the site's own" in state["reason"]


@pytest.mark.slow
def test_site_models_that_cannot_be_loaded_leave_the_starter_scoring(tmp_path: Path, ctx: zmq.Context) -> None:
    """Models the site trained for another feature set (or broken files) must not stop
    the scoring: the starter scores meanwhile and the state says why."""
    import shutil

    from nomade.ml import persist, starter
    site = tmp_path / "site-models"
    shutil.copytree(starter.STARTER_DIR, site, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    site.chmod(0o700)
    with open(site / "gnn_model.pt", "ab") as f:        # no longer the file its metadata names
        f.write(b"\0")
    cfg = agent_config(tmp_path)
    running = RunningAgent(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, interval_s=0.5),
                                               ml=dataclasses.replace(cfg.ml, models_dir=str(site))))
    sock = dealer(ctx, running.agent.ingest_endpoint)
    try:
        sock.send(running_job_batch(1, time.time()))
        assert acked(sock) == 1
        wait_until(lambda: sum(running.agent.metrics.predictions_total.values()) >= 3, 60,
                   "nothing scored the jobs")
    finally:
        sock.close()
        running.stop()
    state = persist.read_agent_state(tmp_path)
    assert state is not None and state["which"] == "starter"
    assert f"the site's models in {site} cannot be loaded" in state["reason"]


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small models trained on synthetic data through the ML pipeline."""
    return train_small_models(tmp_path_factory.mktemp("models"), seed=3)


@pytest.mark.slow
def test_with_a_model_every_running_job_is_scored_published_and_stored(
        tmp_path: Path, ctx: zmq.Context, trained_models: Path) -> None:
    cfg = agent_config(tmp_path)
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, interval_s=0.5),
                              ml=dataclasses.replace(cfg.ml, models_dir=str(trained_models)))
    running = RunningAgent(cfg)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(running.agent.publish_endpoint)
    for t in topics_from("low"):
        sub.subscribe(t)
    sock = dealer(ctx, running.agent.ingest_endpoint)
    got: dict[str, wire.Message] = {}
    try:
        sock.send(running_job_batch(1, time.time()))
        assert acked(sock) == 1
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            if sub.poll(1000):
                topic, frame = sub.recv_multipart()
                msg = wire.decode(frame)
                assert topic == b"prediction." + msg.body["level"].encode()
                got[msg.body["job_id"]] = msg
    finally:
        sock.close()
        sub.close()
        running.stop()
    assert set(got) == {"1", "2", "3"}
    for job_id, msg in got.items():
        body = msg.body
        assert body["user"] == f"u{job_id}" and body["partition"] == "cpu" and body["nodes"] == ["n1"]
        assert 0.0 <= body["risk"] <= 1.0 and body["level"] == wire.level_for(body["risk"])
        assert set(body["parts"]) == {"gnn", "lstm", "autoencoder"}
        assert all(v is not None for v in body["parts"].values())
        if body["risk"] >= 0.3:
            assert all(f["text"] for f in body["factors"])
    assert running.agent.metrics.model_loaded == 1
    with Store(tmp_path / "agent.db") as store:
        stored = store.latest_predictions()
    assert set(stored) == {"1", "2", "3"}


class _Cycle:
    """A reference cycle: only the cyclic GC reclaims it."""

    def __init__(self) -> None:
        self.me = self


def test_the_tick_freezes_the_heap_and_reclaims_frozen_cycles_every_full_gc_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import weakref

    from nomade.agent import daemon

    monkeypatch.setattr(daemon, "FULL_GC_EVERY", 2)
    agent = daemon.Agent(agent_config(tmp_path), name="agent0")
    try:
        assert gc.get_freeze_count() > 0   # the rebuilt state: no full pass walks it
        dead = _Cycle()
        gone = weakref.ref(dead)
        gc.freeze()   # as if it had survived a tick
        del dead
        agent.tick()   # tick 1: frozen again, the frozen cycle stays
        assert gc.get_freeze_count() > 0 and gone() is not None
        agent.tick()   # tick 2: the unfrozen full collection reclaims it
        assert gone() is None and gc.get_freeze_count() > 0
    finally:
        agent.close()
        gc.unfreeze()
