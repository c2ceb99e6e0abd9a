"""Collector delivery against a real ROUTER on 127.0.0.1 playing the agent.

The collector runs as a real subprocess (``python -m nomade collector``) on a cgroup v2
tree laid out like a real host (tests/fixtures/cgroupv2), so it always finds two jobs.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest
import zmq
import zmq.auth
from collectortools import REPO, Agent, start_collector, stop_collector
from waiting import wait_until

from nomade import wire, zmqkeys
from nomade.collector.daemon import Collector
from nomade.collector.openfiles import OpenFiles, network_mounts, used_pct
from nomade.collector.outbox import Outbox
from nomade.collector.sampler import Counters, NodeSampler, cpu_seconds, rates
from nomade.collector.sender import Sender
from nomade.collector.watch import SpoolWatch
from nomade.spool import Spool
from nomade.zmqkeys import ClientKeys

FIXTURE = Path(__file__).parent / "fixtures" / "cgroupv2"


@pytest.fixture
def agent() -> Iterator[Agent]:
    a = Agent()
    yield a
    a.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "cgroup")
    (tmp_path / "spool").mkdir()
    return tmp_path


def write_config(site: Path, port: int, interval_s: float = 0.3, outbox_max_mb: int = 64,
                 extra: str = "") -> Path:
    cfg = site / "nomade.toml"
    cfg.write_text(f"""
[collector]
agent_endpoint = "tcp://127.0.0.1:{port}"
interval_s = {interval_s}
jitter_s = 0.0
node_name = "cn01"
cgroup_root = "{site / 'cgroup'}"
outbox_dir = "{site / 'outbox'}"
outbox_max_mb = {outbox_max_mb}
ack_timeout_s = 0.5
spool_dir = "{site / 'spool'}"
{extra or "[security]" + chr(10) + "curve_enabled = false"}""")
    return cfg


def pending(outbox: Path) -> list[int]:
    """The seqs of the batches in an outbox."""
    return [int(p.stem) for p in outbox.glob("*.batch")]


def read_ready(pipe: IO[bytes] | None, into: bytearray) -> bytearray:
    """Append to ``into`` what ``pipe`` has ready now, without blocking; ``into``."""
    assert pipe is not None
    while select.select([pipe], [], [], 0)[0] and (chunk := os.read(pipe.fileno(), 65536)):
        into += chunk
    return into


def assert_contiguous(batches: dict[int, wire.Message]) -> None:
    assert sorted(batches) == list(range(min(batches), max(batches) + 1)), "a seq is missing"


def test_batches_arrive_with_job_and_node_samples(site: Path, agent: Agent) -> None:
    proc = start_collector(write_config(site, agent.port))
    try:
        agent.wait_for(3)
    finally:
        err = stop_collector(proc)
    assert proc.returncode == 0, err.decode()
    batches = agent.batches()
    assert_contiguous(batches)
    items = [i for m in batches.values() for i in m.body["items"]]
    jobs = {(i.body["job_id"], i.body["node"]) for i in items if i.kind == "job.sample"}
    assert jobs == {("4242", "cn01")}     # node_name set: only its own and the plain scope
    sample = next(i.body for i in items if i.kind == "job.sample" and i.body["job_id"] == "4242")
    assert (sample["cpu_user_s"], sample["mem_limit_hits"], sample["oom_kills"]) == (70.110254, 17, 1)
    assert sample["alloc_cpus"] == 4 and sample["nfs_write_bytes"] == 0
    assert all(i.body["node"] == "cn01" for i in items if i.kind == "node.sample")
    assert not list((site / "outbox").glob("*.batch")), "acked batches must leave the outbox"


def test_agent_down_then_up_loses_nothing(site: Path) -> None:
    first = Agent()
    port = first.port
    first.close()                                   # the agent is down from the start
    outbox = site / "outbox"
    proc = start_collector(write_config(site, port))
    try:
        waiting = wait_until(lambda: (n := len(pending(outbox))) >= 3 and n, 20,
                             "batches must wait in the outbox while the agent is down")
        agent = Agent(port)
        try:
            agent.wait_for(waiting + 2)
            first_part = dict(agent.batches())
            agent.close()                           # down again, mid-stream
            wait_until(lambda: any(seq > max(first_part) for seq in pending(outbox)), 20,
                       "no batch was made while the agent was down again")
            agent = Agent(port)
            agent.wait_for(3)
            later = agent.batches()
        finally:
            agent.close()
    finally:
        err = stop_collector(proc)
    assert proc.returncode == 0, err.decode()
    everything = {**first_part, **later}
    assert_contiguous(everything)
    for seq in set(first_part) & set(later):       # resent: same seq, same content
        assert wire.encode(first_part[seq]) == wire.encode(later[seq])


def test_kill_9_and_restart_loses_nothing(site: Path) -> None:
    silent = Agent(ack=False)                       # receives but never acks: all stays pending
    cfg = write_config(site, silent.port)
    proc = start_collector(cfg)
    try:
        silent.wait_for(4)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    port = silent.port
    seen_before = silent.batches()
    silent.close()
    pending_before = sorted(int(p.stem) for p in (site / "outbox").glob("*.batch"))
    assert pending_before, "unacknowledged batches stay in the outbox"
    agent = Agent(port)
    proc = start_collector(cfg)
    try:
        agent.wait_for_seq(max(pending_before) + 3)
    finally:
        err = stop_collector(proc)
        agent.close()
    assert proc.returncode == 0, err.decode()
    after = agent.batches()
    assert_contiguous(after)
    assert set(pending_before) <= set(after)
    for seq in set(seen_before) & set(after):
        assert wire.encode(seen_before[seq]) == wire.encode(after[seq])
    assert max(after) > max(pending_before), "the restarted collector continues the sequence"


def test_spool_events_are_forwarded_with_an_immediate_sample(site: Path, agent: Agent) -> None:
    proc = start_collector(write_config(site, agent.port, interval_s=3600.0))
    try:
        agent.wait_for(1)                           # its start-up sample: the loop now waits
        Spool(site / "spool").put({"NOMADE_HOOK": "prolog", "NOMADE_TS": f"{time.time():.3f}",
                                   "SLURM_JOB_ID": "4242", "SLURM_JOB_UID": "1000",
                                   "SLURM_JOB_USER": "alice", "SLURMD_NODENAME": "cn01"}, tag="prolog")
        wait_until(lambda: any(i.kind == "job.start" for m in agent.batches().values() for i in m.body["items"]),
                   10, "job.start did not arrive")
    finally:
        err = stop_collector(proc)
    assert proc.returncode == 0, err.decode()
    items = [i for m in agent.batches().values() for i in m.body["items"]]
    start = next(i for i in items if i.kind == "job.start")
    assert (start.body["job_id"], start.body["user"]) == ("4242", "alice")
    early = [i for i in items if i.kind == "job.sample" and i.body["job_id"] == "4242"]
    assert early, "a start event must bring a sample of its job at once"
    assert not list((site / "spool").glob("*.ev")), "forwarded events leave the spool"


def test_the_loop_sleeps_until_a_hook_event_lands(site: Path, agent: Agent) -> None:
    """No timer between samples: the spool watch (inotify) wakes the loop for an event."""
    (site / "spool").rmdir()                                  # the collector makes it for the hooks
    c = Collector(node="cn01", endpoint=f"tcp://127.0.0.1:{agent.port}", cgroup_root=str(site / "cgroup"),
                  outbox_dir=str(site / "outbox"), outbox_max_bytes=1 << 20,
                  spool_dir=str(site / "spool"), interval_s=3600.0, jitter_s=0.0, node_filter="cn01")
    try:
        assert c.watch is not None, "inotify is available on Linux"
        timer = threading.Timer(0.5, Spool(site / "spool").put, args=(
            {"NOMADE_HOOK": "epilog", "NOMADE_TS": "1.7e9", "SLURM_JOB_ID": "9",
             "SLURM_JOB_EXIT_CODE": "0", "SLURMD_NODENAME": "cn01"},), kwargs={"tag": "epilog"})
        timer.start()
        end = time.monotonic() + 20
        c.run(lambda: any(i.kind == "job.end" for m in agent.batches().values()
                          for i in m.body["items"]) or time.monotonic() > end, deadline=end)
        timer.join()
    finally:
        c.close()
    assert c.ticks == 1, "one sample at start, none since (interval 3600 s)"
    ends = [i.body for m in agent.batches().values() for i in m.body["items"] if i.kind == "job.end"]
    assert [e["job_id"] for e in ends] == ["9"]


def test_spool_watch_fires_on_rename_into_the_directory_only(tmp_path: Path) -> None:
    watch = SpoolWatch(tmp_path)
    try:
        (tmp_path / ".a.tmp").write_bytes(b"x")          # a writer's temp file: no wake-up
        assert not select.select([watch.fd], [], [], 0)[0]
        os.rename(tmp_path / ".a.tmp", tmp_path / "a.ev")
        assert select.select([watch.fd], [], [], 5)[0]
        watch.drain()
        assert not select.select([watch.fd], [], [], 0)[0]
    finally:
        watch.close()
    with pytest.raises(OSError, match="inotify_add_watch"):
        SpoolWatch(tmp_path / "missing")


def test_once_delivers_one_sample_or_says_it_could_not(site: Path, agent: Agent) -> None:
    env = {**os.environ, "NOMADE_CONFIG": str(write_config(site, agent.port))}
    done = subprocess.run([sys.executable, "-m", "nomade", "collector", "--once"], cwd=REPO, env=env,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert len(agent.batches()) == 1 and not list((site / "outbox").glob("*.batch"))
    silent = Agent(ack=False)
    try:
        env["NOMADE_CONFIG"] = str(write_config(site, silent.port))
        done = subprocess.run([sys.executable, "-m", "nomade", "collector", "--once"], cwd=REPO,
                              env=env, capture_output=True, timeout=30)
    finally:
        silent.close()
    assert done.returncode == 1, "not acknowledged within ack_timeout_s"
    assert len(list((site / "outbox").glob("*.batch"))) == 1, "kept for the next run"


def test_curve_keys_from_nomade_curve(site: Path) -> None:
    keys = site / "keys"
    zmqkeys.create_keypair(keys, "server")
    zmqkeys.create_keypair(keys, "client")
    server = zmqkeys.load_keypair(keys / "server.key", keys / "server.key_secret")
    secure = Agent(server_secret=server.secret)
    cfg = write_config(site, secure.port, extra=f'[security]\ncurve_enabled = true\nkeys_dir = "{keys}"\n')
    proc = start_collector(cfg)
    try:
        secure.wait_for(2)
    finally:
        err = stop_collector(proc)
        secure.close()
    assert proc.returncode == 0, err.decode()
    (keys / "client.key_secret").unlink()
    env = {**os.environ, "NOMADE_CONFIG": str(cfg)}
    done = subprocess.run([sys.executable, "-m", "nomade", "collector", "--once"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "client.key_secret" in done.stderr and "nomade keys generate --client" in done.stderr


def test_a_full_disk_is_logged_once_and_retried_without_exiting(site: Path, agent: Agent) -> None:
    """The outbox's writes fail (RLIMIT_FSIZE: EFBIG, as ENOSPC would) for a while: the
    collector keeps running, says so once, keeps the hook events, and delivers when the
    disk takes writes again; the drops are reported in its node sample."""
    import resource

    spool = Spool(site / "spool")
    event = spool.put({"SLURM_JOB_ID": "4242", "SLURM_SCRIPT_CONTEXT": "prolog_slurmd",
                       "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": "1000"})
    env = {**os.environ, "NOMADE_CONFIG": str(write_config(site, agent.port, interval_s=0.2))}
    starter = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (8, resource.RLIM_INFINITY)); "
               "sys.argv = ['nomade', 'collector']; runpy.run_module('nomade', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", starter], cwd=REPO, env=env, stderr=subprocess.PIPE)
    said = bytearray()   # its stderr so far (a pipe: a file would be under the size limit too)
    try:
        wait_until(lambda: b"cannot be written" in read_ready(proc.stderr, said) or proc.poll() is not None,
                   20, "the collector did not meet the full disk")
        assert proc.poll() is None, "the collector exited on a full disk"
        assert not agent.arrivals and (site / "spool" / event).exists()
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        agent.wait_for(2)
    finally:
        err = (bytes(said) + stop_collector(proc)).decode()
    assert proc.returncode == 0, err
    failed = re.search(r"writable again after (\d+) failed writes", err)
    assert err.count("cannot be written") == 1 and failed
    assert not (site / "spool" / event).exists()
    items = [i for m in agent.batches().values() for i in m.body["items"]]
    assert any(i.kind == "job.start" and i.body["job_id"] == "4242" for i in items)
    errors = [i.body["outbox_write_errors"] for i in items if i.kind == "node.sample"]
    assert errors and max(errors) == int(failed.group(1)) >= 1   # every failed write reported


# ---------------------------------------------------------------- outbox

def test_outbox_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_bytes=10_000)
    first = box.last_seq + 1
    for _ in range(25):
        box.add(lambda seq: bytes([seq % 256]) * 1000)
    assert box.dropped == 15
    assert box.pending() == list(range(first + 15, first + 25))
    assert box.get(first + 15) == bytes([(first + 15) % 256]) * 1000
    assert box.size_bytes() == 10_000
    one_big = Outbox(tmp_path / "big", max_bytes=10)
    seq = one_big.add(lambda s: b"x" * 100)         # the newest batch is never dropped
    assert one_big.pending() == [seq]


def test_outbox_seq_survives_restart_even_when_empty(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_bytes=1 << 20)
    seqs = [box.add(lambda seq: b"batch %d" % seq) for _ in range(3)]
    assert [box.ack(s) for s in (*seqs, seqs[-1])] == [True, True, True, False]
    (tmp_path / ".00000000000000000009.batch.tmp").write_bytes(b"half")   # a killed write
    again = Outbox(tmp_path, max_bytes=1 << 20)
    assert again.pending() == [] and again.last_seq == seqs[-1]
    assert again.add(lambda seq: b"x") == seqs[-1] + 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_fresh_outbox_never_repeats_an_earlier_lifes_seqs(tmp_path: Path) -> None:
    """A node reinstalled (outbox wiped) must not reuse (sender, seq) pairs the agent holds."""
    before_us = time.time_ns() // 1000
    old = Outbox(tmp_path / "old", max_bytes=1 << 20)
    old_seqs = [old.add(lambda seq: b"old") for _ in range(50)]
    assert old_seqs[0] > before_us, "a fresh outbox starts after the clock in microseconds"
    assert old_seqs == list(range(old_seqs[0], old_seqs[0] + 50)), "then counts on by one"
    shutil.rmtree(tmp_path / "old")                          # the node is reinstalled
    new = Outbox(tmp_path / "old", max_bytes=1 << 20)
    assert new.add(lambda seq: b"new") > old_seqs[-1]
    (tmp_path / "old" / "seq").write_text("garbage\n")      # an unreadable seq file: the same
    assert Outbox(tmp_path / "old", max_bytes=1 << 20).last_seq > new.last_seq


# ---------------------------------------------------------------- sender

def test_sender_survives_garbage_from_the_agent_and_uses_curve(tmp_path: Path) -> None:
    server_pub, server_sec = zmq.auth.create_certificates(str(tmp_path), "server")
    client_pub, client_sec = zmq.auth.create_certificates(str(tmp_path), "client")
    spub, ssec = zmq.auth.load_certificate(server_sec)
    cpub, csec = zmq.auth.load_certificate(client_sec)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_secretkey = ssec
    port = router.bind_to_random_port("tcp://127.0.0.1")
    box = Outbox(tmp_path / "outbox", 1 << 20)
    seq = box.add(lambda seq: wire.encode(wire.make_batch("cn01", seq, [], ts=1.7e9)))
    batch = box.get(seq)
    sender = Sender(ctx, f"tcp://127.0.0.1:{port}", box, ack_timeout_s=0.2,
                    curve=ClientKeys(public=cpub, secret=csec, server_public=spub))
    try:
        deadline = time.monotonic() + 10
        while not router.poll(50):
            assert time.monotonic() < deadline, "no batch over CURVE"
            sender.on_monitor()
            sender.pump(time.monotonic())
        ident, data = router.recv_multipart()
        assert data == batch
        router.send_multipart([ident, b"\xc1not msgpack"])
        router.send_multipart([ident, wire.encode(wire.make_ack("agent", 99))])   # unknown seq
        router.send_multipart([ident, wire.encode(wire.make_ack("agent", seq))])
        while box.pending():
            assert time.monotonic() < deadline, "ack not handled"
            if sender.socket.poll(50):
                sender.on_readable()
        assert (sender.bad_frames, sender.acked) == (1, 1)
    finally:
        sender.close()
        router.close(linger=0)
        ctx.term()


# ---------------------------------------------------------------- node sample

def test_node_rates_leave_guest_time_out_and_unknown_as_none() -> None:
    cpu_type = type(psutil.cpu_times())
    fields = dict.fromkeys(cpu_type._fields, 0.0)
    before = cpu_seconds(cpu_type(**fields))
    # 10 s more of user time, 4 of it a guest's (already inside user), 5 s idle, 5 s iowait
    after = cpu_seconds(cpu_type(**{**fields, "user": 10.0, "guest": 4.0, "idle": 5.0, "iowait": 5.0}))
    assert after == (20.0, 10.0, 5.0)
    body: dict = {}
    rates(body, 2.0, Counters(before, (0, 0), None), Counters(after, (1000, 4000), (10, 10)))
    assert body == {"cpu_pct": 50.0, "iowait_pct": 25.0, "disk_read_Bps": 500.0, "disk_write_Bps": 2000.0}


def test_node_sample_agrees_with_the_kernel_on_this_host() -> None:
    nodes = NodeSampler("cn01")
    first = nodes.sample(time.time())
    assert first["cpu_pct"] is None and first["disk_read_Bps"] is None, "no rate without a previous sample"
    time.sleep(0.2)
    body = nodes.sample(time.time())
    wire.make("node.sample", "cn01", 1, body)                # valid on the wire
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024
               for line in Path("/proc/meminfo").read_text().splitlines()}
    assert body["mem_total_bytes"] == meminfo["MemTotal"]
    assert abs(body["mem_used_bytes"] - (meminfo["MemTotal"] - meminfo["MemAvailable"])) < 2**28
    assert abs(body["swap_used_bytes"] - (meminfo["SwapTotal"] - meminfo["SwapFree"])) < 2**28
    for key in ("cpu_pct", "iowait_pct"):
        assert 0.0 <= body[key] <= 100.0
    for key in ("disk_read_Bps", "disk_write_Bps", "net_rx_Bps", "net_tx_Bps"):
        assert body[key] >= 0.0


# ---------------------------------------------------------------- NFS estimate

def _fstype_of(path: Path) -> str:
    best = ("", "")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        point = head.split()[4]
        if str(path).startswith(point) and len(point) >= len(best[0]):
            best = (point, tail.split()[0])
    return best[1]


def test_nfs_estimate_follows_write_offsets(tmp_path: Path) -> None:
    """The method, exercised on the test directory's filesystem standing in for NFS."""
    fstype = _fstype_of(tmp_path)
    assert network_mounts(frozenset({fstype}))
    files = OpenFiles(frozenset({fstype}))
    files.begin_sample()
    pid = os.getpid()
    with open(tmp_path / "out.dat", "wb") as out, open(tmp_path / "in.dat", "wb+") as _:
        out.write(b"x" * 1000)
        out.flush()
        assert files.look("j", [pid])[0] >= 1000
        base = files.look("j", [pid])[0]
        out.write(b"y" * 500)
        out.flush()
        assert files.look("j", [pid])[0] == base + 500
    assert files.look("j", [pid])[0] == base + 500          # closed: the count stays
    none = OpenFiles(frozenset({"no-such-fs"}))
    none.begin_sample()
    assert none.look("j", [pid])[0] == 0


def _df_pct(path: Path) -> float:
    v = os.statvfs(path)
    blocks = 100 * (v.f_blocks - v.f_bfree) / (v.f_blocks - v.f_bfree + v.f_bavail)
    inodes = 100 * (v.f_files - v.f_ffree) / (v.f_files - v.f_ffree + v.f_favail) if v.f_files else 0.0
    return max(blocks, inodes)


_OPENER = """
import sys
opened = []
for line in sys.stdin:
    mode, path = line.split()
    opened.append(open(path, mode))
    print("open", flush=True)
"""


def test_fullness_is_that_of_the_filesystem_written_to(tmp_path: Path) -> None:
    """df's figure for the directory the job writes in; a job with only pipes, devices
    and files open for reading gives no figure."""
    (tmp_path / "in.dat").write_bytes(b"x")
    child = subprocess.Popen([sys.executable, "-c", _OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert child.stdin is not None and child.stdout is not None
    files = OpenFiles()

    def open_in_child(mode: str, path: Path) -> None:
        child.stdin.write(f"{mode} {path}\n")
        child.stdin.flush()
        assert child.stdout.readline() == "open\n"

    try:
        open_in_child("rb", tmp_path / "in.dat")
        files.begin_sample()
        assert files.look("j", [child.pid])[1] is None
        open_in_child("ab", tmp_path / "out.dat")
        files.begin_sample()
        assert files.look("j", [child.pid])[1] == pytest.approx(_df_pct(tmp_path), abs=0.5)
        r, w = os.pipe()
        try:
            assert used_pct(os.getpid(), str(w)) is None
        finally:
            os.close(r)
            os.close(w)
    finally:
        child.kill()
        child.communicate()
