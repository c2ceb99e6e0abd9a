"""Job and node sampling: ``job.sample`` bodies from the job cgroups, ``node.sample`` from /proc.

``JobSampler`` keeps one ``cgroups.JobReader`` per live job (descriptors stay open
between samples) and adds the NFS write estimate (``nfs.NfsWrites``). A job is named
by the node of its cgroup directory (``slurm_<node>``, ``<node>_slurmstepd.scope``),
else by ``default_node``: one collector serves a host with several slurmd.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NamedTuple

from nomade import cgroups
from nomade.collector.nfs import NfsWrites

log = logging.getLogger(__name__)


class JobSampler:
    """Samples every Slurm job cgroup of this host (or of ``node_filter``'s directories)."""

    def __init__(self, root: str, default_node: str, node_filter: str | None = None,
                 nfs: NfsWrites | None = None) -> None:
        self.root = root
        self.version = cgroups.detect_version(root)
        self.default_node = default_node
        self.node_filter = node_filter
        self.nfs = nfs or NfsWrites()
        self._readers: dict[tuple[str | None, str], cgroups.JobReader] = {}

    def _discover(self) -> list[cgroups.JobCgroup]:
        return cgroups.discover(self.root, self.version, self.node_filter)

    def sample_all(self, ts: float) -> list[dict]:
        """One ``job.sample`` body per job cgroup present now; readers of ended jobs are closed."""
        self.nfs.refresh_mounts()
        present = {(j.node, j.job_id): j for j in self._discover()}
        for key in [k for k in self._readers if k not in present]:
            self._readers.pop(key).close()
            self.nfs.forget(f"{key[0]}/{key[1]}")
        bodies = []
        for key, job in present.items():
            reader = self._readers.get(key)
            if reader is None:
                reader = self._readers[key] = cgroups.JobReader(job)
            body = self._sample(reader, ts)
            if body is not None:
                bodies.append(body)
        return bodies

    def sample_jobs(self, job_ids: set[str], ts: float) -> tuple[list[dict], set[str]]:
        """Sample just these jobs now (a start event arrived); return the bodies and the
        ids whose cgroup does not exist yet."""
        self.nfs.refresh_mounts()
        bodies, found = [], set()
        for job in self._discover():
            if job.job_id not in job_ids:
                continue
            key = (job.node, job.job_id)
            reader = self._readers.get(key)
            if reader is None:
                reader = self._readers[key] = cgroups.JobReader(job)
            body = self._sample(reader, ts)
            if body is not None:
                bodies.append(body)
                found.add(job.job_id)
        return bodies, job_ids - found

    def _sample(self, reader: cgroups.JobReader, ts: float) -> dict | None:
        try:
            counters = reader.read()
        except (OSError, ValueError) as e:   # a half-written or odd file: skip this job this time
            log.warning("job %s: cgroup read failed: %s", reader.job.job_id, e)
            return None
        if counters is None:
            return None
        job = reader.job
        counters["nfs_write_bytes"] = self.nfs.job_bytes(f"{job.node}/{job.job_id}", reader.pids)
        counters.update(job_id=job.job_id, node=job.node or self.default_node, ts=ts)
        return counters

    def close(self) -> None:
        """Close every reader."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


class NodeSampler:
    """``node.sample`` bodies: CPU, iowait, memory, swap, load and disk/network rates.

    The figures are those of psutil (``cpu_times``, ``virtual_memory``,
    ``swap_memory``, ``disk_io_counters``, ``net_io_counters``), read from the same
    kernel files directly: ``/proc/stat`` (CPU times; guest time is already inside
    user/nice and is not added again), ``/proc/meminfo`` (used = MemTotal -
    MemAvailable; swap used = SwapTotal - SwapFree), ``/proc/diskstats`` (sectors of
    the whole devices listed in ``/sys/block``, partitions left out so nothing counts
    twice; 512 bytes a sector, as the kernel reports them there) and ``/proc/net/dev``
    (every interface, loopback included). Importing psutil alone would cost 0.8 MB of
    the collector's 25 MB budget. Percentages and rates are over the time since the
    previous sample; the first sample has them None, as has a figure whose file is
    missing.
    """

    def __init__(self, node: str, proc: str = "/proc", sys_block: str = "/sys/block") -> None:
        self.node = node
        self.proc = proc
        self.sys_block = sys_block
        self._whole_disk: dict[bytes, bool] = {}
        self._prev: tuple[float, _Counters] | None = None

    def sample(self, ts: float) -> dict:
        """The node's figures now."""
        mem = parse_meminfo(_read(self.proc + "/meminfo"))
        now = _Counters(parse_cpu(_read(self.proc + "/stat")),
                        parse_diskstats(_read(self.proc + "/diskstats"), self._is_whole_disk),
                        parse_net_dev(_read(self.proc + "/net/dev")))
        body: dict = {
            "node": self.node, "ts": ts, "cpu_pct": None, "iowait_pct": None,
            "mem_used_bytes": _minus(mem.get(b"MemTotal:"), mem.get(b"MemAvailable:")),
            "mem_total_bytes": mem.get(b"MemTotal:"),
            "swap_used_bytes": _minus(mem.get(b"SwapTotal:"), mem.get(b"SwapFree:")),
            "load1": os.getloadavg()[0],
            "disk_read_Bps": None, "disk_write_Bps": None, "net_rx_Bps": None, "net_tx_Bps": None,
        }
        if self._prev is not None:
            _rates(body, ts - self._prev[0], self._prev[1], now)
        self._prev = (ts, now)
        return body

    def _is_whole_disk(self, name: bytes) -> bool:
        known = self._whole_disk.get(name)
        if known is None:
            known = self._whole_disk[name] = os.path.exists(
                os.path.join(self.sys_block, name.decode(errors="replace").replace("/", "!")))
        return known


class _Counters(NamedTuple):
    cpu: tuple[int, int, int] | None          # (total, idle incl. iowait, iowait) in clock ticks
    disk: tuple[int, int] | None              # (read, written) bytes
    net: tuple[int, int] | None               # (received, sent) bytes


def _rates(body: dict, dt: float, before: _Counters, now: _Counters) -> None:
    if before.cpu is not None and now.cpu is not None:
        total = now.cpu[0] - before.cpu[0]
        if total > 0:
            body["cpu_pct"] = _clamp(100.0 * (total - (now.cpu[1] - before.cpu[1])) / total)
            body["iowait_pct"] = _clamp(100.0 * (now.cpu[2] - before.cpu[2]) / total)
    if dt <= 0:
        return
    if before.disk is not None and now.disk is not None:
        body["disk_read_Bps"] = max(0.0, (now.disk[0] - before.disk[0]) / dt)
        body["disk_write_Bps"] = max(0.0, (now.disk[1] - before.disk[1]) / dt)
    if before.net is not None and now.net is not None:
        body["net_rx_Bps"] = max(0.0, (now.net[0] - before.net[0]) / dt)
        body["net_tx_Bps"] = max(0.0, (now.net[1] - before.net[1]) / dt)


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_cpu(stat: bytes | None) -> tuple[int, int, int] | None:
    """(total, idle + iowait, iowait) clock ticks from the ``cpu`` line of /proc/stat.

    Total is user+nice+system+idle+iowait+irq+softirq+steal: guest and guest_nice are
    already counted in user and nice."""
    if not stat or not stat.startswith(b"cpu "):
        return None
    fields = stat[4:stat.find(b"\n")].split()
    try:
        ticks = [int(f) for f in fields[:8]]
    except ValueError:
        return None
    if len(ticks) < 5:
        return None
    return sum(ticks), ticks[3] + ticks[4], ticks[4]


def parse_meminfo(data: bytes | None) -> dict[bytes, int]:
    """``/proc/meminfo`` as {b"MemTotal:": bytes, ...} (the kB figures times 1024)."""
    out: dict[bytes, int] = {}
    for line in (data or b"").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if parts[2:3] == [b"kB"] else 1)
    return out


def parse_diskstats(data: bytes | None, whole_disk: Callable[[bytes], bool]) -> tuple[int, int] | None:
    """Bytes read and written by the whole disks (``whole_disk(name)``) of /proc/diskstats."""
    if data is None:
        return None
    read = written = 0
    for line in data.splitlines():
        f = line.split()
        if len(f) >= 10 and whole_disk(f[2]):
            read += int(f[5]) * 512
            written += int(f[9]) * 512
    return read, written


def parse_net_dev(data: bytes | None) -> tuple[int, int] | None:
    """Bytes received and sent over every interface of /proc/net/dev."""
    if data is None:
        return None
    rx = tx = 0
    for line in data.splitlines()[2:]:
        _, sep, counters = line.partition(b":")
        f = counters.split()
        if sep and len(f) >= 9:
            rx += int(f[0])
            tx += int(f[8])
    return rx, tx


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def _clamp(pct: float) -> float:
    return min(100.0, max(0.0, pct))
