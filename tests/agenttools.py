"""The agent in a thread and a client's half of its protocol, for tests on real sockets
(not a test module): ``RunningAgent``, ``agent_config``, ``batch``, ``running_job_batch``, ``dealer``,
``acked``, ``free_port``."""

from __future__ import annotations

import dataclasses
import queue
import socket
import threading
from pathlib import Path

import zmq

from nomade import config, wire, zmqkeys
from nomade.agent.daemon import Agent
from nomade.config import SecurityConfig

T0 = 1.7e9


class RunningAgent:
    """An ``Agent`` serving in a thread until ``stop()``; ``agent`` for its counters."""

    def __init__(self, cfg: config.Config) -> None:
        self._stop = False
        self._made: queue.Queue[Agent | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, args=(cfg,), daemon=True)
        self._thread.start()
        made = self._made.get(timeout=60)
        if isinstance(made, BaseException):
            raise made
        self.agent = made

    def _serve(self, cfg: config.Config) -> None:
        try:
            agent = Agent(cfg, name="agent0")
        except BaseException as e:  # hand it to the test thread
            self._made.put(e)
            return
        self._made.put(agent)
        try:
            agent.run(lambda: self._stop)
        finally:
            agent.close()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()


def agent_config(tmp_path: Path, **security: object) -> config.Config:
    cfg = config.Config()
    return dataclasses.replace(
        cfg,
        agent=dataclasses.replace(cfg.agent, ingest_endpoint="tcp://127.0.0.1:*",
                                  publish_endpoint="tcp://127.0.0.1:*", metrics_address="", query_endpoint="",
                                  interval_s=3600.0),
        ml=dataclasses.replace(cfg.ml, models_dir=str(tmp_path / "no-models")),
        storage=dataclasses.replace(cfg.storage, db_path=str(tmp_path / "agent.db")),
        # a test on loopback may run without CURVE; the shipped default is on
        security=SecurityConfig(**{"curve_enabled": False, **security}))   # type: ignore[arg-type]


def batch(sender: str, seq: int, n: int = 50, job0: int = 1) -> bytes:
    items = [wire.make("job.start", sender, seq, {"job_id": str(job0), "user": "u", "start_ts": T0}, T0)]
    items += [wire.make("job.sample", sender, seq, {"job_id": str(job0 + k % 5), "node": sender,
                                                   "ts": T0 + k, "mem_bytes": k}, T0 + k)
              for k in range(n)]
    return wire.encode(wire.make_batch(sender, seq, items))


def running_job_batch(seq: int, now: float, n_jobs: int = 3) -> bytes:
    """A batch from "n1": jobs 1..n_jobs of users u1.. on partition "cpu", started 600 s
    before ``now``, each with 20 samples 30 s apart: enough for a model to score."""
    items = []
    for j in range(1, n_jobs + 1):
        items.append(wire.make("job.start", "n1", seq, {
            "job_id": str(j), "user": f"u{j}", "partition": "cpu", "nodes": ["n1"], "req_cpus": 4,
            "req_mem_bytes": 4 << 30, "req_gpus": 0, "time_limit_s": 3600.0, "start_ts": now - 600,
            "submit_ts": now - 700}, now))
        for k in range(20):
            ts = now - 600 + 30 * k
            items.append(wire.make("job.sample", "n1", seq, {
                "job_id": str(j), "node": "n1", "ts": ts, "alloc_cpus": 4, "cpu_user_s": 30.0 * k * j,
                "mem_bytes": (k + 1) * (j << 27), "mem_limit_bytes": 4 << 30, "write_bytes": k << 20,
                "nfs_write_bytes": k << 19}, ts))
    return wire.encode(wire.make_batch("n1", seq, items))


def dealer(ctx: zmq.Context, endpoint: str, keys: zmqkeys.ClientKeys | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # a send the agent never drains fails the test (zmq.Again) instead of hanging the suite:
    # one clean-clone run stopped here for 10 min, the test thread blocked in a DEALER send
    sock.setsockopt(zmq.SNDTIMEO, 30_000)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys.public, keys.secret, keys.server_public
    sock.connect(endpoint)
    return sock


def acked(sock: zmq.Socket, timeout_ms: int = 10_000) -> int | None:
    """The seq of the next ack, or None if none comes in time."""
    if not sock.poll(timeout_ms):
        return None
    msg = wire.decode(sock.recv_multipart()[-1])
    assert msg.kind == "ack"
    return int(msg.body["seq"])


def free_port() -> int:
    """A TCP port on 127.0.0.1 free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
