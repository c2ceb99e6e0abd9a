"""What a job's open files say: the bytes it writes to network filesystems (NFS), and
how full the filesystems it writes to are.

One walk over the descriptors of the job's processes (``/proc/<pid>/fdinfo/<fd>``: the
file offset ``pos``, the open ``flags``, the mount ``mnt_id``) at each sample serves both.

NFS writes. Neither the cgroup (``io.stat`` counts block devices only) nor
``/proc/<pid>/io`` (one ``write_bytes`` for all filesystems) splits writes by
filesystem, so for every descriptor open for writing on a mount whose type is NFS, the
growth of its offset since the last sample is added to the job's cumulative
``nfs_write_bytes``. A descriptor seen for the first time counts its whole offset (the
job wrote the file from its start), except with ``O_APPEND``, where the offset starts at
the old file size: it counts from its first sighting. Limits (honest): a file opened,
written and closed between two samples is missed; ``pwrite``/``lseek`` make the offset
differ from the bytes written; memory-mapped writes are invisible; a descriptor shared
by two processes is counted once per process. A share signal, not accounting.

Filesystem fullness. ``fs_used_pct`` is the fullest filesystem on which the job has a
regular file open for writing: used / (used + available to users), of blocks or of
inodes, whichever is fuller (``df``'s figure; either running out is ENOSPC). It is read
with ``fstatvfs`` through the descriptor itself (``/proc/<pid>/fd/<fd>`` opened
``O_PATH``), so a job in its own mount namespace (a private ``/tmp``) is measured on the
filesystem it really writes to; each mount is measured once a sample. None when the job
has no regular file open for writing (nothing it writes can fill a disk now).

Cost: a few small reads per descriptor; at most ``MAX_FDS_PER_JOB`` descriptors of a job
are looked at per sample.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

NFS_TYPES = frozenset({"nfs", "nfs4"})
MAX_FDS_PER_JOB = 2048
"""Descriptors of one job inspected per sample (a job holding more is judged on these)."""
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


def used_pct(pid: int, fd: str) -> float | None:
    """How full (percent, blocks or inodes, the fuller) the filesystem of a regular file
    open as ``fd`` in ``pid`` is; None for anything else or a descriptor gone."""
    try:
        handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return None
        v = os.fstatvfs(handle)
    except OSError:
        return None
    finally:
        os.close(handle)
    shares = [_used(v.f_blocks, v.f_bfree, v.f_bavail), _used(v.f_files, v.f_ffree, v.f_favail)]
    known = [s for s in shares if s is not None]
    return max(known) if known else None


def _used(total: int, free: int, avail: int) -> float | None:
    """df's use%: used / (used + available to users); None for a filesystem without a size."""
    used = total - free
    if total <= 0 or used + avail <= 0:
        return None
    return min(100.0, 100.0 * used / (used + avail))


class OpenFiles:
    """Per job: the cumulative NFS write estimate and the fullest filesystem written to
    (see the module doc for the method and its limits)."""

    def __init__(self, fstypes: frozenset[str] = NFS_TYPES) -> None:
        self.fstypes = fstypes
        self._nfs_mounts: set[int] = set()
        self._full: dict[int, float | None] = {}
        self._positions: dict[str, dict[tuple[int, str, int], int]] = {}
        self._totals: dict[str, int] = {}

    def begin_sample(self) -> None:
        """Re-read the mount table and forget the last sample's fullness; call once per
        sample before ``look``."""
        self._nfs_mounts = network_mounts(self.fstypes)
        self._full = {}

    def look(self, job_id: str, pids: list[int]) -> tuple[int, float | None]:
        """``(nfs_write_bytes, fs_used_pct)`` of the job after looking at ``pids`` now."""
        total = self._totals.get(job_id, 0)
        before = self._positions.get(job_id, {})
        now: dict[tuple[int, str, int], int] = {}
        fullest: float | None = None
        budget = MAX_FDS_PER_JOB
        for pid, fd in _descriptors(pids):
            budget -= 1
            if budget < 0:
                break
            info = _fdinfo(pid, fd)
            if info is None or (info[1] & 0o3) not in _WRITE_MODES:
                continue
            pos, flags, mnt, ino = info
            if mnt not in self._full:
                self._full[mnt] = used_pct(pid, fd)
            full = self._full[mnt]
            if full is not None and (fullest is None or full > fullest):
                fullest = full
            if mnt not in self._nfs_mounts:
                continue
            key = (pid, fd, ino)
            if key in before:
                total += max(0, pos - before[key])
            elif not flags & _O_APPEND:
                total += pos
            now[key] = pos
        self._positions[job_id] = now
        self._totals[job_id] = total
        return total, fullest

    def forget(self, job_id: str) -> None:
        """Drop the state of an ended job."""
        self._positions.pop(job_id, None)
        self._totals.pop(job_id, None)


def _descriptors(pids: list[int]) -> Iterator[tuple[int, str]]:
    """``(pid, fd)`` of every descriptor of ``pids`` open now (processes gone are skipped)."""
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            yield pid, fd
