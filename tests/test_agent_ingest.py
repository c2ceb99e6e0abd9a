"""Agent ingest over real ZeroMQ sockets on 127.0.0.1: acks, duplicates, garbage, CURVE.

The agent runs in a thread (its own store connection, made in that thread) on random
ports; every client socket is closed with linger 0 and the context terminated.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from agenttools import RunningAgent, acked, agent_config, batch, dealer
from prometheus_client.parser import text_string_to_metric_families

from nomade import wire, zmqkeys
from nomade.agent.exporter import Metrics
from nomade.config import SecurityConfig
from nomade.store import Store


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningAgent]:
    running = RunningAgent(agent_config(tmp_path))
    yield running
    running.stop()


def samples_in(db: Path) -> int:
    with Store(db) as store:
        return store.sample_count()


def test_batches_are_stored_then_acked_and_duplicates_not_rewritten(
        served: RunningAgent, ctx: zmq.Context, tmp_path: Path) -> None:
    sock = dealer(ctx, served.agent.ingest_endpoint)
    try:
        sock.send(batch("n1", 1))
        assert acked(sock) == 1
        assert samples_in(tmp_path / "agent.db") == 50   # committed before the ack
        sock.send(batch("n1", 1))                         # a resend: acked, not re-stored
        sock.send(batch("n2", 1))                         # same seq, other sender: new
        assert {acked(sock), acked(sock)} == {1}
    finally:
        sock.close()
    served.stop()
    m = served.agent.metrics
    assert (m.batches_total, m.duplicate_batches_total, m.samples_total) == (2, 1, 100)
    assert samples_in(tmp_path / "agent.db") == 100
    assert [r.job_id for r in served.agent.state.scorable()] == ["1"]   # 2-5: samples only
    rings = served.agent.state.running
    assert sum(len(r.samples) for r in rings.values()) == sum(r.appended for r in rings.values()) == 100
    assert all(s[0] == r.job_id for r in rings.values() for s in r.samples)   # rows, by job


def test_garbage_at_full_speed_does_not_stop_the_agent(
        served: RunningAgent, ctx: zmq.Context, tmp_path: Path) -> None:
    rng = random.Random(6)
    good = batch("n1", 7)
    sock = dealer(ctx, served.agent.ingest_endpoint)
    sent = 0
    valid_seqs = {7}             # seqs of the frames sent that are valid batches
    try:
        deadline = time.monotonic() + 3.0
        while sent < 20_000 and time.monotonic() < deadline:
            kind = sent % 4
            if kind == 0:
                frame = os.urandom(rng.randrange(0, 300))
            elif kind == 1:                      # a valid frame with random bytes changed
                raw = bytearray(good)
                for _ in range(rng.randrange(1, 8)):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
                frame = bytes(raw)
                try:
                    valid_seqs.add(wire.decode(frame).seq)
                except wire.WireError:
                    pass
            elif kind == 2:                      # valid msgpack, wrong shape or kind
                frame = rng.choice([b"\x80", b"\x93\x01\x02\x03", wire.encode(wire.make_ack("x", 1)),
                                    good[: rng.randrange(len(good))]])
            else:                                # several frames in one message
                sock.send_multipart([os.urandom(8), b"", os.urandom(rng.randrange(1, 50))])
                sent += 1
                continue
            sock.send(frame)
            sent += 1
        sock.send(batch("n9", 3))
        seqs = set()
        while (seq := acked(sock)) is not None and seq != 3:
            seqs.add(seq)
        assert seq == 3
        assert seqs <= valid_seqs
    finally:
        sock.close()
    served.stop()
    m = served.agent.metrics
    assert m.frames_total == sent + 1
    assert m.bad_frames_total >= sent * 0.9
    assert m.store_errors_total == 0


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    """(Content-Type, body) of a GET on the agent's metrics listener."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_metrics_endpoint_serves_prometheus_text(tmp_path: Path, ctx: zmq.Context) -> None:
    """The agent's own listener serves what prometheus_client's parser reads back exactly,
    counters past 1e8 included (``{:g}`` printed 123456839 as 1.23457e+08)."""
    import socket as pysocket

    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = agent_config(tmp_path)
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, metrics_address=f"127.0.0.1:{port}"))
    running = RunningAgent(cfg)
    sock = dealer(ctx, running.agent.ingest_endpoint)
    try:
        sock.send(b"not a frame")
        sock.send(batch("n1", 1))
        assert acked(sock) == 1     # the loop is idle now: its first tick ran before the drain
        running.agent.metrics.samples_total += 123_456_789
        ctype, text = scrape(port)
        assert scrape(port, "/health") == ("text/plain; charset=utf-8", "ok\n")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            scrape(port, "/elsewhere")
    finally:
        sock.close()
        running.stop()
    assert ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {s.name + str(sorted(s.labels.items())): s.value for f in families.values() for s in f.samples}
    assert value["nomade_agent_samples_total[]"] == 50 + 123_456_789
    assert value["nomade_agent_bad_frames_total[]"] == 1
    assert value["nomade_agent_predictions_total[('level', 'high')]"] == 0
    assert families["nomade_agent_samples"].type == "counter"
    assert families["nomade_agent_running_jobs"].type == "gauge"
    tick = families["nomade_agent_tick_duration_seconds"]
    assert tick.type == "histogram"
    assert value["nomade_agent_tick_duration_seconds_count[]"] == value["nomade_agent_ticks_total[]"] == 1
    assert value["nomade_agent_tick_duration_seconds_bucket[('le', '+Inf')]"] == 1
    assert value["nomade_agent_tick_duration_seconds_sum[]"] == pytest.approx(
        value["nomade_agent_last_tick_duration_seconds[]"])
    assert value["process_resident_memory_bytes[]"] > 0
    assert not [name for name in families if "per_second" in name]   # rates are PromQL's job


def test_each_agent_has_its_own_registry() -> None:
    """Two agents in one process: no duplicate-series error, no shared values."""
    one, two = Metrics(), Metrics()
    one.samples_total = 7
    assert one.registry is not two.registry
    assert one.registry.get_sample_value("nomade_agent_samples_total") == 7
    assert two.registry.get_sample_value("nomade_agent_samples_total") == 0


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    zmqkeys.create_keypair(directory, "server")
    public, _ = zmqkeys.create_keypair(directory, "client")
    # authorized as n1: the node it speaks for (the batches' sender)
    zmqkeys.authorize(public, SecurityConfig(curve_enabled=True, keys_dir=str(directory)), name="n1")
    zmqkeys.create_keypair(directory, "intruder")   # a valid pair that nobody authorized
    return directory


def client(directory: Path, name: str) -> zmqkeys.ClientKeys:
    keys = zmqkeys.client_keys(SecurityConfig(
        curve_enabled=True, keys_dir=str(directory), client_public_key_file=str(directory / f"{name}.key"),
        client_secret_key_file=str(directory / f"{name}.key_secret")))
    assert keys is not None
    return keys


def test_curve_refuses_clients_without_an_authorized_key(
        tmp_path: Path, keys_dir: Path, ctx: zmq.Context) -> None:
    running = RunningAgent(agent_config(tmp_path, curve_enabled=True, keys_dir=str(keys_dir)))
    endpoint = running.agent.ingest_endpoint
    intruder = dealer(ctx, endpoint, client(keys_dir, "intruder"))
    plain = dealer(ctx, endpoint)
    good = dealer(ctx, endpoint, client(keys_dir, "client"))
    try:
        for refused, frame in ((intruder, batch("evil", 1, job0=666)), (plain, batch("plain", 1, job0=777))):
            try:
                refused.send(frame, zmq.NOBLOCK)
            except zmq.Again:   # the agent refused its handshake already: no peer to queue the frame for
                pass
        good.send(batch("n1", 1))
        assert acked(good) == 1
        assert acked(intruder, 1500) is None and acked(plain, 500) is None
    finally:
        for s in (intruder, plain, good):
            s.close()
        running.stop()
    with Store(tmp_path / "agent.db") as store:
        assert store.get_job("666") is None and store.get_job("777") is None
        assert store.sample_count() == 50
    assert running.agent.metrics.frames_total == 1
