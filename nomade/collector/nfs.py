"""Bytes a job writes to network filesystems (NFS), estimated from open file positions.

Method. Neither the cgroup (``io.stat`` counts block devices only) nor
``/proc/<pid>/io`` (one ``write_bytes`` for all filesystems) splits writes by
filesystem. What the kernel does give per open file is ``/proc/<pid>/fdinfo/<fd>``:
``pos`` (the file offset), ``flags`` and ``mnt_id`` (the mount it lives on, the first
field of ``/proc/self/mountinfo``). So at each sample, for every process of the job
and every descriptor open for writing on a mount whose type is NFS, the growth of its
offset since the last sample is added to the job's cumulative ``nfs_write_bytes``.
A descriptor seen for the first time counts its whole offset (the job wrote the file
from its start), except with ``O_APPEND``, where the offset starts at the old file
size: it counts from its first sighting.

Limits (honest): a file opened, written and closed between two samples is missed;
``pwrite``/``lseek`` make the offset differ from the bytes written; memory-mapped
writes are invisible; a descriptor shared by two processes is counted once per
process. The estimate suits the usual HPC pattern (logs, checkpoints and outputs
written sequentially by long-lived processes) and is a share signal, not accounting.

Cost: the node's mount table is read once a sample; when it has no NFS mount, no
descriptor is inspected and every job reads 0 (nothing can go to NFS).
"""

from __future__ import annotations

import os

NFS_TYPES = frozenset({"nfs", "nfs4"})
_WRITE_MODES = (0o1, 0o2)     # O_WRONLY, O_RDWR
_O_APPEND = 0o2000


def network_mounts(fstypes: frozenset[str] = NFS_TYPES, mountinfo: str = "/proc/self/mountinfo") -> set[int]:
    """Mount ids whose filesystem type is in ``fstypes``."""
    ids = set()
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return ids
    wanted = {t.encode() for t in fstypes}
    for line in lines:
        head, sep, tail = line.partition(b" - ")
        if sep and tail.split(b" ", 1)[0] in wanted:
            ids.add(int(head.split(b" ", 1)[0]))
    return ids


def _fdinfo(pid: int, fd: str) -> tuple[int, int, int, int] | None:
    """(pos, flags, mnt_id, ino) of one descriptor, None if it closed meanwhile."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    info = dict(zip(fields[::2], fields[1::2], strict=False))  # an odd last word is dropped
    try:
        return (int(info[b"pos:"]), int(info[b"flags:"], 8), int(info[b"mnt_id:"]),
                int(info.get(b"ino:", b"0")))
    except (KeyError, ValueError):
        return None


class NfsWrites:
    """Cumulative NFS write estimate per job (see the module doc for method and limits)."""

    def __init__(self, fstypes: frozenset[str] = NFS_TYPES) -> None:
        self.fstypes = fstypes
        self._mounts: set[int] = set()
        self._positions: dict[str, dict[tuple[int, str, int], int]] = {}
        self._totals: dict[str, int] = {}

    def refresh_mounts(self) -> None:
        """Re-read the mount table; call once per sample before ``job_bytes``."""
        self._mounts = network_mounts(self.fstypes)

    def job_bytes(self, job_id: str, pids: list[int]) -> int:
        """The job's cumulative NFS write estimate after looking at ``pids`` now."""
        total = self._totals.get(job_id, 0)
        if not self._mounts:
            return total
        before = self._positions.get(job_id, {})
        now: dict[tuple[int, str, int], int] = {}
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fdinfo")
            except OSError:
                continue
            for fd in fds:
                info = _fdinfo(pid, fd)
                if info is None:
                    continue
                pos, flags, mnt, ino = info
                if mnt not in self._mounts or (flags & 0o3) not in _WRITE_MODES:
                    continue
                key = (pid, fd, ino)
                if key in before:
                    total += max(0, pos - before[key])
                elif not flags & _O_APPEND:
                    total += pos
                now[key] = pos
        self._positions[job_id] = now
        self._totals[job_id] = total
        return total

    def forget(self, job_id: str) -> None:
        """Drop the state of an ended job."""
        self._positions.pop(job_id, None)
        self._totals.pop(job_id, None)
