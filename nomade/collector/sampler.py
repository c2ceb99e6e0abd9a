"""Job and node sampling: ``job.sample`` bodies from the job cgroups, ``node.sample`` from psutil.

``JobSampler`` keeps one ``cgroups.JobReader`` per live job (descriptors stay open
between samples) and adds what the job's open files say (``openfiles.OpenFiles``: NFS writes, the fullest
filesystem written to). A job is named
by the node of its cgroup directory (``slurm_<node>``, ``<node>_slurmstepd.scope``),
else by ``default_node``: one collector serves a host with several slurmd.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import psutil

from nomade.collector import cgroups
from nomade.collector.openfiles import OpenFiles

log = logging.getLogger(__name__)


class JobSampler:
    """Samples every Slurm job cgroup of this host (or of ``node_filter``'s directories)."""

    def __init__(self, root: str, default_node: str, node_filter: str | None = None,
                 files: OpenFiles | None = None) -> None:
        self.root = root
        self.version = cgroups.detect_version(root)
        self.default_node = default_node
        self.node_filter = node_filter
        self.files = files or OpenFiles()
        self._readers: dict[tuple[str | None, str], cgroups.JobReader] = {}

    def _discover(self) -> list[cgroups.JobCgroup]:
        return cgroups.discover(self.root, self.version, self.node_filter)

    def sample_all(self, ts: float) -> list[dict]:
        """One ``job.sample`` body per job cgroup present now; readers of ended jobs are closed."""
        self.files.begin_sample()
        present = {(j.node, j.job_id): j for j in self._discover()}
        for key in [k for k in self._readers if k not in present]:
            self._readers.pop(key).close()
            self.files.forget(f"{key[0]}/{key[1]}")
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
        self.files.begin_sample()
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
        counters["nfs_write_bytes"], counters["fs_used_pct"] = self.files.look(
            f"{job.node}/{job.job_id}", reader.pids)
        counters.update(job_id=job.job_id, node=job.node or self.default_node, ts=ts)
        return counters

    def close(self) -> None:
        """Close every reader."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


class NodeSampler:
    """``node.sample`` bodies: CPU, iowait, memory, swap, load and disk/network rates, from
    psutil: ``cpu_times`` (guest time is already inside user/nice and is not added
    again), ``virtual_memory`` (used = total - available, what no job can have),
    ``swap_memory``, ``disk_io_counters`` (whole disks only, so nothing counts twice)
    and ``net_io_counters`` (every interface, loopback included); both kept monotonic
    across a kernel counter wrap. Percentages and rates are over the time since the
    previous sample; the first sample has them None, as has a figure psutil cannot read.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._prev: tuple[float, Counters] | None = None

    def sample(self, ts: float) -> dict:
        """The node's figures now."""
        mem = _read(psutil.virtual_memory)
        swap = _read(psutil.swap_memory)
        now = read_counters()
        body: dict = {
            "node": self.node, "ts": ts, "cpu_pct": None, "iowait_pct": None,
            "mem_used_bytes": None if mem is None else mem.total - mem.available,
            "mem_total_bytes": None if mem is None else mem.total,
            "swap_used_bytes": None if swap is None else swap.used,
            "load1": os.getloadavg()[0],
            "disk_read_Bps": None, "disk_write_Bps": None, "net_rx_Bps": None, "net_tx_Bps": None,
        }
        if self._prev is not None:
            rates(body, ts - self._prev[0], self._prev[1], now)
        self._prev = (ts, now)
        return body


class Counters(NamedTuple):
    """The node's cumulative counters at one instant (None: not readable here)."""

    cpu: tuple[float, float, float] | None    # (total, idle incl. iowait, iowait) seconds
    disk: tuple[int, int] | None              # (read, written) bytes
    net: tuple[int, int] | None               # (received, sent) bytes


def read_counters() -> Counters:
    """The node's counters now, from psutil."""
    cpu, disk, net = (_read(psutil.cpu_times), _read(psutil.disk_io_counters),
                      _read(psutil.net_io_counters))
    return Counters(None if cpu is None else cpu_seconds(cpu),
                    None if disk is None else (disk.read_bytes, disk.write_bytes),
                    None if net is None else (net.bytes_recv, net.bytes_sent))


def cpu_seconds(times: NamedTuple) -> tuple[float, float, float]:
    """(total, idle + iowait, iowait) from ``psutil.cpu_times()``: the total leaves out
    guest and guest_nice, which the kernel already counts in user and nice."""
    fields = times._asdict()
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    iowait = fields.get("iowait", 0.0)
    return total, fields["idle"] + iowait, iowait


def rates(body: dict, dt: float, before: Counters, now: Counters) -> None:
    """Fill ``body``'s percentages and per-second rates from two ``Counters`` ``dt`` s apart."""
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


_T = TypeVar("_T")


def _read(figure: Callable[[], _T]) -> _T | None:
    """``figure()``, or None (logged at debug) when this host cannot give it."""
    try:
        return figure()
    except (OSError, RuntimeError, ValueError) as e:
        log.debug("node figure %s unreadable: %s", figure.__name__, e)
        return None


def _clamp(pct: float) -> float:
    return min(100.0, max(0.0, pct))
