"""Per-job cgroup readers for Slurm jobs, cgroup v1 and v2: pure file reads.

Where Slurm puts a job (``root`` is ``/sys/fs/cgroup``):

* cgroup v1 (hybrid hosts, Slurm's ``cgroup/v1``): one tree per controller,
  ``<root>/<controller>/slurm[_<node>]/uid_<uid>/job_<id>/step_<step>/task_<n>``.
  ``slurm_<node>`` appears when several slurmd run on one host. We read the
  ``memory`` and ``cpuacct`` trees. Slurm makes no ``pids`` or ``blkio`` job cgroup,
  so processes and threads are counted from ``cgroup.procs``/``tasks`` of every cgroup
  in the job's subtree, and bytes read/written are the sum of ``read_bytes`` /
  ``write_bytes`` of ``/proc/<pid>/io`` over the job's processes (these include the
  I/O of children they have reaped; a process reaped outside the job takes its
  counts with it, so the sum is kept monotone with a running maximum).
* cgroup v2 (``cgroup/v2``): ``<root>/system.slice/slurmstepd.scope/job_<id>/...``,
  or ``<node>_slurmstepd.scope`` with several slurmd per host. Counters come from the
  job cgroup itself (``cpu.stat``, ``memory.*``, ``io.stat``, ``*.pressure``). When
  ``CgroupJobIdPaths`` is off (Slurm ≥ 26.05) the directory is named by SLUID and holds
  no job id: we then read ``SLURM_JOB_ID`` from ``/proc/<pid>/environ`` of a process in
  the subtree (root only) and remember it per directory; a directory with no process
  yet is skipped until one appears.

Memory (``mem_bytes``) is what the job holds that the kernel cannot reclaim to keep it
under its limit: anonymous memory and shmem (tmpfs, ``/dev/shm``), v1 ``total_rss +
total_shmem``, v2 ``anon + shmem`` of ``memory.stat``. The cgroup's usage also counts
the page cache of every file the job read or wrote, which the kernel drops before it
kills anything: a job that writes 300 MB under ``--mem=256M`` sits at its limit and
completes. ``mem_peak_bytes`` is the highest ``mem_bytes`` this reader has seen (the
kernel's own peak counts the cache too).

Counters are cumulative as the kernel gives them; ``None`` means unknown, never 0.
Files are read with ``pread`` on descriptors kept open for the job's life (one
syscall a read instead of three); a vanished file reads as ``None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nomade.errors import NomadeError

_USER_HZ = os.sysconf("SC_CLK_TCK")
_UNLIMITED = 1 << 62          # v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE
_RESCAN_EVERY = 10            # full subtree rescan every N reads even if nothing changed
_YOUNG_SCANS = 2              # rescan a new job's subtree on its first N reads
_BUF = 65536


class CgroupError(NomadeError):
    """The cgroup root is missing or is neither a v1 nor a v2 layout."""


@dataclass(frozen=True, slots=True)
class JobCgroup:
    """Where one Slurm job's cgroup lives.

    ``job_id`` is the Slurm job id as a string (the raw id the cgroup is named by);
    ``node`` the node named by ``slurm_<node>`` / ``<node>_slurmstepd.scope`` or None
    for the plain names; ``uid`` from ``uid_<uid>`` (v1 only). ``path`` is the job
    directory (v1: in the memory tree); ``cpu_path`` the directory with CPU counters
    (v1: in the cpuacct tree; v2: same as ``path``); ``cpus_file`` the file listing
    the job's CPUs (v1: ``cpuset.cpus`` in the cpuset tree; v2: ``cpuset.cpus.effective``).
    """

    job_id: str
    node: str | None
    uid: int | None
    version: int
    path: str
    cpu_path: str
    cpus_file: str


def detect_version(root: str = "/sys/fs/cgroup") -> int:
    """Return 2 for a unified (v2) mount at ``root``, 1 for v1 or hybrid; raise CgroupError."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return 2
    if os.path.isdir(os.path.join(root, "memory")):
        return 1
    raise CgroupError(f"{root}: no cgroup v2 mount and no v1 memory controller there")


def discover(root: str, version: int, node: str | None = None) -> list[JobCgroup]:
    """List the job cgroups now present under ``root``.

    With ``node`` set, only that node's directories (``slurm_<node>``,
    ``<node>_slurmstepd.scope``) and the plain single-slurmd names are searched;
    with None, every Slurm directory on the host.
    """
    if version == 1:
        return _discover_v1(root, node)
    if version == 2:
        return _discover_v2(root, node)
    raise ValueError(f"cgroup version must be 1 or 2, not {version!r}")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _subdirs(path: str) -> list[str]:
    """Names of the directories in ``path`` (``d_type``, no stat), [] if it is gone."""
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _discover_v1(root: str, node: str | None) -> list[JobCgroup]:
    mem, cpu = os.path.join(root, "memory"), os.path.join(root, "cpuacct")
    jobs = []
    for top in _subdirs(mem):
        if top != "slurm" and not top.startswith("slurm_"):
            continue
        top_node = top[6:] or None
        if node is not None and top_node not in (None, node):
            continue
        for udir in _subdirs(os.path.join(mem, top)):
            if not udir.startswith("uid_") or not udir[4:].isdigit():
                continue
            for jdir in _subdirs(os.path.join(mem, top, udir)):
                if jdir.startswith("job_") and jdir[4:].isdigit():
                    rel = os.path.join(top, udir, jdir)
                    jobs.append(JobCgroup(jdir[4:], top_node, int(udir[4:]), 1,
                                          os.path.join(mem, rel), os.path.join(cpu, rel),
                                          os.path.join(root, "cpuset", rel, "cpuset.cpus")))
    return jobs


_SCOPE = "slurmstepd.scope"
_SLUID_JOB_IDS: dict[str, str] = {}


def _discover_v2(root: str, node: str | None) -> list[JobCgroup]:
    base = os.path.join(root, "system.slice")
    jobs = []
    seen: dict[str, str] = {}
    for scope in _subdirs(base):
        if scope == _SCOPE:
            scope_node = None
        elif scope.endswith("_" + _SCOPE):
            scope_node = scope[:-len(_SCOPE) - 1]
        else:
            continue
        if node is not None and scope_node not in (None, node):
            continue
        for jdir in _subdirs(os.path.join(base, scope)):
            path = os.path.join(base, scope, jdir)
            if jdir.startswith("job_") and jdir[4:].isdigit():
                job_id: str | None = jdir[4:]
            elif jdir == "system":
                continue
            else:
                job_id = _SLUID_JOB_IDS.get(path) or _job_id_from_environ(path)
                if job_id is None:
                    continue
                seen[path] = job_id
            jobs.append(JobCgroup(job_id, scope_node, None, 2, path, path,
                                  os.path.join(path, "cpuset.cpus.effective")))
    _SLUID_JOB_IDS.clear()
    _SLUID_JOB_IDS.update(seen)
    return jobs


def _job_id_from_environ(path: str) -> str | None:
    """SLURM_JOB_ID from the environment of any process in the subtree at ``path``."""
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" not in files:
            continue
        for pid in _ints(_read_once(os.path.join(dirpath, "cgroup.procs"))):
            env = _read_once(f"/proc/{pid}/environ") or b""
            for item in env.split(b"\0"):
                if item.startswith(b"SLURM_JOB_ID=") and item[13:].isdigit():
                    return item[13:].decode()
    return None


def _read_once(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, _BUF)
    except OSError:
        return None
    finally:
        os.close(fd)


def _ints(data: bytes | None) -> list[int]:
    return [int(x) for x in data.split()] if data else []


def _keyed(data: bytes | None) -> dict[bytes, bytes]:
    """``key value`` lines (cpu.stat, memory.stat, memory.events) as a dict of bytes."""
    if not data:
        return {}
    words = data.split()
    return dict(zip(words[::2], words[1::2], strict=False))  # an odd last word is dropped


def _int_or_none(value: bytes | None) -> int | None:
    """A decimal counter (surrounding whitespace allowed), None for absent or "max"."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


def cpu_count(data: bytes | None) -> int | None:
    """Number of CPUs in a cpuset list such as ``0-3,8,10-11``; None if empty or malformed."""
    if not data or not data.strip():
        return None
    count = 0
    for part in data.strip().split(b","):
        lo, _, hi = part.partition(b"-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        count += int(hi) - int(lo) + 1 if hi else 1
    return count


def psi_some_avg10(data: bytes | None) -> float | None:
    """The ``some avg10`` percentage of a PSI file (``some avg10=1.23 avg60=...``)."""
    if not data or not data.startswith(b"some avg10="):
        return None
    try:
        return float(data[11:data.index(b" ", 11)])
    except ValueError:
        return None


def io_stat_bytes(data: bytes | None, skip: frozenset[bytes] = frozenset()) -> tuple[int, int] | None:
    """Sum ``rbytes`` and ``wbytes`` of a v2 ``io.stat`` over its devices, minus ``skip``."""
    if data is None:
        return None
    rbytes = wbytes = 0
    for line in data.splitlines():
        dev, _, rest = line.partition(b" ")
        if dev in skip:
            continue
        for field in rest.split():
            key, _, value = field.partition(b"=")
            if key == b"rbytes":
                rbytes += int(value)
            elif key == b"wbytes":
                wbytes += int(value)
    return rbytes, wbytes


_STACKED: dict[bytes, bool] = {}


def _is_stacked(dev: bytes) -> bool:
    """A device whose I/O is also counted on the devices under it (dm, md): skip it."""
    if dev not in _STACKED:
        _STACKED[dev] = bool(_listdir(f"/sys/dev/block/{dev.decode()}/slaves"))
    return _STACKED[dev]


class _Files:
    """Open descriptors by path, read with ``pread`` at offset 0."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> bytes | None:
        """The file's content now, or None if it cannot be read (it vanished)."""
        fd = self._fds.get(path)
        if fd is not None:
            try:
                return os.pread(fd, _BUF, 0)
            except OSError:  # ENODEV: cgroup removed; ESRCH: process gone
                self._drop(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, _BUF, 0)
        except OSError:
            os.close(fd)
            return None
        self._fds[path] = fd
        return data

    def _drop(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def keep_only(self, paths: set[str]) -> None:
        """Close every descriptor whose path is not in ``paths``."""
        for path in [p for p in self._fds if p not in paths]:
            self._drop(path)

    def keep_only_dirs(self, dirs: set[str]) -> None:
        """Close every descriptor of a file that is not directly in one of ``dirs``."""
        self.keep_only({p for p in self._fds if os.path.dirname(p) in dirs})

    def close(self) -> None:
        """Close every descriptor."""
        for path in list(self._fds):
            self._drop(path)


class _Subtree:
    """The cgroup directories under one job directory, rescanned when they change.

    A change of the job directory's link count (one per subdirectory) triggers a
    rescan; young jobs and every ``_RESCAN_EVERY``-th call rescan anyway, which
    catches task directories created inside an existing step.
    """

    def __init__(self, top: str) -> None:
        self.top = top
        self.dirs: list[str] = [top]
        self._nlink = -1
        self._calls = 0

    def refresh(self) -> bool | None:
        """Rescan if needed: True if rescanned, False if not, None when the job directory is gone."""
        try:
            nlink = os.stat(self.top).st_nlink
        except OSError:
            return None
        self._calls += 1
        if nlink != self._nlink or self._calls <= _YOUNG_SCANS or self._calls % _RESCAN_EVERY == 0:
            self._nlink = nlink
            self.dirs = [d for d, _, _ in os.walk(self.top)]
            return True
        return False


class JobReader:
    """Reads one job's counters; keep one per live job and ``close`` it when the job ends."""

    def __init__(self, job: JobCgroup) -> None:
        self.job = job
        self.pids: list[int] = []
        self._files = _Files()
        self._procs = _Files()
        self._tree = _Subtree(job.path)
        self._io_max = (0, 0)
        self._mem_peak: int | None = None

    def close(self) -> None:
        """Release the descriptors."""
        self._files.close()
        self._procs.close()

    def read(self) -> dict[str, int | float | None] | None:
        """The job's counters now (``job.sample`` body keys but job_id/node/ts/nfs_write_bytes),
        or None once the cgroup is gone.

        Also sets ``self.pids`` to the processes found in the job's subtree.
        """
        rescanned = self._tree.refresh()
        if rescanned is None:
            return None
        if rescanned:
            self._files.keep_only_dirs({*self._tree.dirs, self.job.cpu_path,
                                        os.path.dirname(self.job.cpus_file)})
        nprocs, nthreads = self._count_tasks()
        body = self._read_v1() if self.job.version == 1 else self._read_v2()
        if body is not None:
            mem = body["mem_bytes"]
            if isinstance(mem, int):
                self._mem_peak = mem if self._mem_peak is None else max(self._mem_peak, mem)
            body["mem_peak_bytes"] = self._mem_peak
            body["nprocs"], body["nthreads"] = nprocs, nthreads
            body["alloc_cpus"] = cpu_count(self._files.read(self.job.cpus_file))
        return body

    def _count_tasks(self) -> tuple[int, int]:
        threads_file = "tasks" if self.job.version == 1 else "cgroup.threads"
        pids: list[int] = []
        nthreads = 0
        for d in self._tree.dirs:
            pids.extend(_ints(self._files.read(d + "/cgroup.procs")))
            threads = self._files.read(d + "/" + threads_file)
            nthreads += threads.count(b"\n") if threads else 0
        self.pids = pids
        return len(pids), nthreads

    def _read_v1(self) -> dict[str, int | float | None] | None:
        read = self._files.read
        cpu = _keyed(read(self.job.cpu_path + "/cpuacct.stat"))
        stat = _keyed(read(self.job.path + "/memory.stat"))
        if not stat:
            return None
        limit = _int_or_none(stat.get(b"hierarchical_memory_limit"))
        hits = ooms = 0
        for d in self._tree.dirs:
            hits += _int_or_none(read(d + "/memory.failcnt")) or 0
            ooms += _int_or_none(_keyed(read(d + "/memory.oom_control")).get(b"oom_kill")) or 0
        io = self._v1_io()
        return {
            "cpu_user_s": _ticks(cpu.get(b"user")),
            "cpu_system_s": _ticks(cpu.get(b"system")),
            "mem_bytes": _unreclaimable(stat, b"total_rss", b"total_shmem"),
            "mem_limit_bytes": limit if limit is not None and limit < _UNLIMITED else None,
            "mem_limit_hits": hits,
            "oom_kills": ooms,
            "page_faults": _int_or_none(stat.get(b"total_pgfault")),
            "major_faults": _int_or_none(stat.get(b"total_pgmajfault")),
            "swap_bytes": _int_or_none(stat.get(b"total_swap")),
            "read_bytes": io[0],
            "write_bytes": io[1],
            "io_pressure": None,
            "mem_pressure": None,
        }

    def _v1_io(self) -> tuple[int, int]:
        """Sum of /proc/<pid>/io read_bytes/write_bytes over the job's pids, kept monotone."""
        rsum = wsum = 0
        paths = set()
        for pid in self.pids:
            path = f"/proc/{pid}/io"
            paths.add(path)
            fields = _keyed(self._procs.read(path))
            rsum += _int_or_none(fields.get(b"read_bytes:")) or 0
            wsum += _int_or_none(fields.get(b"write_bytes:")) or 0
        self._procs.keep_only(paths)
        self._io_max = (max(self._io_max[0], rsum), max(self._io_max[1], wsum))
        return self._io_max

    def _read_v2(self) -> dict[str, int | float | None] | None:
        read, path = self._files.read, self.job.path
        cpu = _keyed(read(path + "/cpu.stat"))
        if not cpu:
            return None
        stat = _keyed(read(path + "/memory.stat"))
        events = _keyed(read(path + "/memory.events"))
        io = _io_v2(read(path + "/io.stat"))
        return {
            "cpu_user_s": _usec(cpu.get(b"user_usec")),
            "cpu_system_s": _usec(cpu.get(b"system_usec")),
            "mem_bytes": _unreclaimable(stat, b"anon", b"shmem"),
            "mem_limit_bytes": _int_or_none(read(path + "/memory.max")),
            "mem_limit_hits": _int_or_none(events.get(b"max")),
            "oom_kills": _int_or_none(events.get(b"oom_kill")),
            "page_faults": _int_or_none(stat.get(b"pgfault")),
            "major_faults": _int_or_none(stat.get(b"pgmajfault")),
            "swap_bytes": _int_or_none(read(path + "/memory.swap.current")),
            "read_bytes": io[0] if io else None,
            "write_bytes": io[1] if io else None,
            "io_pressure": psi_some_avg10(read(path + "/io.pressure")),
            "mem_pressure": psi_some_avg10(read(path + "/memory.pressure")),
        }


def _io_v2(data: bytes | None) -> tuple[int, int] | None:
    """io.stat bytes, leaving out stacked devices (their I/O is counted below them)."""
    if data is None:
        return None
    devices = (line.partition(b" ")[0] for line in data.splitlines())
    return io_stat_bytes(data, frozenset(d for d in devices if _is_stacked(d)))


def _unreclaimable(stat: dict[bytes, bytes], anon: bytes, shmem: bytes) -> int | None:
    """Anonymous plus shmem bytes of a ``memory.stat``; None without the anon line."""
    held = _int_or_none(stat.get(anon))
    return None if held is None else held + (_int_or_none(stat.get(shmem)) or 0)


def _ticks(value: bytes | None) -> float | None:
    return int(value) / _USER_HZ if value is not None and value.isdigit() else None


def _usec(value: bytes | None) -> float | None:
    return int(value) / 1e6 if value is not None and value.isdigit() else None


__all__ = ["CgroupError", "JobCgroup", "JobReader", "cpu_count", "detect_version", "discover",
           "io_stat_bytes", "psi_some_avg10"]
