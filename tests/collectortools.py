"""A stand-in agent (a ROUTER on 127.0.0.1 that acks and records) and the collector as a
real subprocess, for collector tests (not a test module)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import zmq
from waiting import wait_until

from nomade import wire

REPO = Path(__file__).parent.parent


class Agent:
    """A ROUTER that acks every batch by seq and records every arrival (duplicates too)."""

    def __init__(self, port: int = 0, server_secret: bytes | None = None, ack: bool = True) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_secret is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey = server_secret
        if port:
            self.sock.bind(f"tcp://127.0.0.1:{port}")
            self.port = port
        else:
            self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.ack = ack
        self.arrivals: list[tuple[int, bytes]] = []
        self.bad = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, data = self.sock.recv_multipart()
            try:
                msg = wire.decode(data)
            except wire.WireError:
                self.bad += 1
                continue
            self.arrivals.append((msg.seq, data))
            if self.ack:
                self.sock.send_multipart([ident, wire.encode(wire.make_ack("agent", msg.seq))])

    def batches(self) -> dict[int, wire.Message]:
        """First arrival of every seq; asserts that a resent seq carried the same bytes."""
        first: dict[int, bytes] = {}
        for seq, data in self.arrivals:
            assert first.setdefault(seq, data) == data, f"seq {seq} arrived with other content"
        return {seq: wire.decode(data) for seq, data in first.items()}

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        """Until ``n`` distinct batches have arrived."""
        wait_until(lambda: len(self.batches()) >= n, timeout, f"{n} batches did not arrive")

    def wait_for_seq(self, seq: int, timeout: float = 20.0) -> None:
        """Until batch ``seq`` has arrived."""
        wait_until(lambda: seq in self.batches(), timeout, f"batch {seq} did not arrive")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)
        self.ctx.term()


def start_collector(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "NOMADE_CONFIG": str(cfg)}
    return subprocess.Popen([sys.executable, "-m", "nomade", "collector"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE)


def stop_collector(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> bytes:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    return err
