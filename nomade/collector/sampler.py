"""Job and node sampling: ``job.sample`` bodies from the job cgroups, ``node.sample`` from psutil.

``JobSampler`` keeps one ``cgroups.JobReader`` per live job (descriptors stay open
between samples) and adds the NFS write estimate (``nfs.NfsWrites``). A job is named
by the node of its cgroup directory (``slurm_<node>``, ``<node>_slurmstepd.scope``),
else by ``default_node``: one collector serves a host with several slurmd.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psutil

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

    Percentages and rates are over the time since the previous sample; the first
    sample has them None.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._prev: tuple[float, Any, Any, Any] | None = None

    def sample(self, ts: float) -> dict:
        """The node's figures now."""
        cpu = psutil.cpu_times()
        disk = psutil.disk_io_counters(nowrap=True)
        net = psutil.net_io_counters(nowrap=True)
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        body: dict = {
            "node": self.node, "ts": ts, "cpu_pct": None, "iowait_pct": None,
            "mem_used_bytes": mem.total - mem.available, "mem_total_bytes": mem.total,
            "swap_used_bytes": swap.used, "load1": os.getloadavg()[0],
            "disk_read_Bps": None, "disk_write_Bps": None, "net_rx_Bps": None, "net_tx_Bps": None,
        }
        if self._prev is not None:
            self._rates(body, ts, cpu, disk, net)
        self._prev = (ts, cpu, disk, net)
        return body

    def _rates(self, body: dict, ts: float, cpu: Any, disk: Any, net: Any) -> None:
        assert self._prev is not None
        t0, cpu0, disk0, net0 = self._prev
        total = sum(cpu) - sum(cpu0)
        if total > 0:
            idle = (cpu.idle - cpu0.idle) + (getattr(cpu, "iowait", 0.0) - getattr(cpu0, "iowait", 0.0))
            body["cpu_pct"] = _clamp(100.0 * (total - idle) / total)
            if hasattr(cpu, "iowait"):
                body["iowait_pct"] = _clamp(100.0 * (cpu.iowait - cpu0.iowait) / total)
        dt = ts - t0
        if dt > 0:
            if disk is not None and disk0 is not None:
                body["disk_read_Bps"] = max(0.0, (disk.read_bytes - disk0.read_bytes) / dt)
                body["disk_write_Bps"] = max(0.0, (disk.write_bytes - disk0.write_bytes) / dt)
            if net is not None and net0 is not None:
                body["net_rx_Bps"] = max(0.0, (net.bytes_recv - net0.bytes_recv) / dt)
                body["net_tx_Bps"] = max(0.0, (net.bytes_sent - net0.bytes_sent) / dt)


def _clamp(pct: float) -> float:
    return min(100.0, max(0.0, pct))
