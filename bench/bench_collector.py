"""Collector cost: CPU (% of one core) and peak RSS with 50 running jobs at the 30 s interval.

Budget (DESIGN): <= 0.05 % of one core on average, <= 25 MB RSS.

Jobs. The project's test cluster has 2 nodes x 2 CPUs, so it cannot run 50 jobs at
once; as root the bench instead makes 50 real cgroup v1 job cgroups laid out exactly
as Slurm does (``memory``, ``cpuacct``, ``cpuset`` trees, ``slurm_nomadebench/uid_0/
job_N/step_batch/task_0``), each holding a real ``sleep`` process, so the collector reads
real kernel files and real ``/proc`` entries. Without root (or on a v2 host) it copies
the v2 fixture job 50 times into a file tree (no processes): the figure is then a lower
bound. The note says which.

Measure. The collector runs as ``python -m nomade collector`` (the real service) against
a ROUTER that acks every batch. CPU is the time on CPU of all its threads (the first
field of ``/proc/<pid>/task/<tid>/schedstat``, in ns: ``utime``+``stime`` count in
10 ms clock ticks, too coarse for a budget of 15 ms per 30 s) between the end of the
first tick (startup and imports excluded: they happen once) and the end of the run,
over that wall time; the note splits it by thread. Peak RSS is ``VmHWM``. Full run:
5.5 min; quick: 65 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from bench.result import Result
from nomade import wire

JOBS = 50
INTERVAL_S = 30.0
V1 = "/sys/fs/cgroup"
FIXTURE_JOB = Path(__file__).parent.parent / "tests/fixtures/cgroupv2/system.slice/slurmstepd.scope/job_4242"


class _Acker:
    """A ROUTER on 127.0.0.1 that acks every batch (the agent's side of delivery), a
    CURVE server with the key set in ``keys`` (as shipped: CURVE on)."""

    def __init__(self, keys: Path) -> None:
        from nomade import zmqkeys

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        pair = zmqkeys.load_keypair(keys / "server.key", keys / "server.key_secret")
        self.sock.curve_server, self.sock.curve_secretkey = True, pair.secret
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.batches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                ident, data = self.sock.recv_multipart()
                msg = wire.decode(data)
                self.batches += 1
                self.sock.send_multipart([ident, wire.encode(wire.make_ack("bench", msg.seq))])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)
        self.ctx.term()


def _v1_usable() -> bool:
    return os.geteuid() == 0 and os.path.isdir(f"{V1}/memory") and \
        not os.path.exists(f"{V1}/cgroup.controllers")


class _V1Jobs:
    """50 Slurm-shaped v1 job cgroups, each with a sleeping process."""

    top = "slurm_nomadebench"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        cs = f"{V1}/cpuset"
        for level in (self.top, f"{self.top}/uid_0"):
            os.makedirs(f"{cs}/{level}", exist_ok=True)
            Path(cs, level, "cpuset.cpus").write_text("0")
            Path(cs, level, "cpuset.mems").write_text("0")
        for n in range(1, JOBS + 1):
            rel = f"{self.top}/uid_0/job_{n}"
            os.makedirs(f"{cs}/{rel}", exist_ok=True)
            Path(cs, rel, "cpuset.cpus").write_text("0")
            Path(cs, rel, "cpuset.mems").write_text("0")
            dirs = [f"{V1}/{c}/{rel}/step_batch/task_0" for c in ("memory", "cpuacct")]
            for d in dirs:
                os.makedirs(d, exist_ok=True)
            Path(V1, "memory", rel, "memory.limit_in_bytes").write_text(str(1 << 30))
            self.procs.append(subprocess.Popen(
                ["sleep", "3600"], preexec_fn=lambda dirs=dirs: [
                    Path(d, "cgroup.procs").write_text(str(os.getpid())) for d in dirs]))

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for c in ("memory", "cpuacct", "cpuset"):
            for d, _, _ in os.walk(f"{V1}/{c}/{self.top}", topdown=False):
                os.rmdir(d)


def _v2_tree(root: Path) -> None:
    scope = root / "system.slice" / "slurmstepd.scope"
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for n in range(1, JOBS + 1):
        shutil.copytree(FIXTURE_JOB, scope / f"job_{n}")


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by "tid:name" (sum_exec_runtime, ns resolution)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        out[f"{tid}:{(task / 'comm').read_text().strip()}"] = int((task / "schedstat").read_text().split()[0]) / 1e9
    return out


def _hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def run(quick: bool) -> list[Result]:
    """Run the collector for 5.5 min (quick: 65 s) at 30 s with 50 jobs; CPU % and peak RSS."""
    duration = 65.0 if quick else 330.0
    from nomade import zmqkeys

    work = Path(tempfile.mkdtemp(prefix="nomade-bench-collector-"))
    keys = zmqkeys.setup_keys(work / "keys", "nomadebench")
    acker = _Acker(keys)
    jobs = _V1Jobs() if _v1_usable() else None
    root = V1
    if jobs is None:
        root = str(work / "cgroup")
        _v2_tree(Path(root))
    how = ("50 real v1 job cgroups with a sleep process each (Slurm layout)" if jobs else
           "50 copies of the v2 fixture job, files only (not root): lower bound")
    (work / "nomade.toml").write_text(f"""
[collector]
agent_endpoint = "tcp://127.0.0.1:{acker.port}"
interval_s = {INTERVAL_S}
jitter_s = 0.0
node_name = "nomadebench"
cgroup_root = "{root}"
outbox_dir = "{work / 'outbox'}"
spool_dir = "{work / 'spool'}"
[security]
keys_dir = "{keys}"
""")
    (work / "spool").mkdir()
    env = {**os.environ, "NOMADE_CONFIG": str(work / "nomade.toml")}
    proc = subprocess.Popen([sys.executable, "-m", "nomade", "collector"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        while acker.batches < 1:              # first tick done: startup is behind us
            time.sleep(0.05)
        t0, c0 = time.monotonic(), _thread_cpu_s(proc.pid)
        time.sleep(duration - 5.0)
        t1, c1 = time.monotonic(), _thread_cpu_s(proc.pid)
        hwm = _hwm_bytes(proc.pid)
        batches = acker.batches
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        acker.close()
        if jobs is not None:
            jobs.close()
        shutil.rmtree(work, ignore_errors=True)
    used = {name: c1[name] - c0.get(name, 0.0) for name in c1}
    pct = 100.0 * sum(used.values()) / (t1 - t0)
    per_tick = {name.split(":", 1)[1]: f"{1e3 * s * INTERVAL_S / (t1 - t0):.2f}" for name, s in used.items()}
    note = (f"{how}; {t1 - t0:.0f} s measured, {batches} batches acked, interval {INTERVAL_S:g} s; "
            f"CPU ms per interval by thread: {per_tick}")
    return [
        Result("collector CPU, 50 jobs @30 s", pct, "% of one core", "<= 0.05", pct <= 0.05, note),
        Result("collector peak RSS", hwm / 2**20, "MB", "<= 25", hwm <= 25 * 2**20, note),
    ]
