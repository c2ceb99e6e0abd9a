"""cgroup readers: v2 on a file tree laid out like a real v2 host, v1 on real kernel cgroups."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nomade.collector import cgroups

FIXTURE = Path(__file__).parent / "fixtures" / "cgroupv2"
V1_ROOT = "/sys/fs/cgroup"


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    shutil.copytree(FIXTURE, root)
    return root


def test_detect_version(v2_root: Path, tmp_path: Path) -> None:
    assert cgroups.detect_version(str(v2_root)) == 2
    with pytest.raises(cgroups.CgroupError, match="no cgroup v2 mount"):
        cgroups.detect_version(str(tmp_path / "nothing"))


def test_v2_discovery_finds_jobs_of_every_slurmd(v2_root: Path) -> None:
    found = {(j.job_id, j.node) for j in cgroups.discover(str(v2_root), 2)}
    # the SLUID-named directory holds no process yet, so its job id is unknown: skipped
    assert found == {("4242", None), ("77", "n2")}
    only_n2 = cgroups.discover(str(v2_root), 2, node="n2")
    assert {(j.job_id, j.node) for j in only_n2} == {("4242", None), ("77", "n2")}
    assert {j.job_id for j in cgroups.discover(str(v2_root), 2, node="n9")} == {"4242"}


def test_v2_counters_from_real_formats(v2_root: Path) -> None:
    job = next(j for j in cgroups.discover(str(v2_root), 2) if j.job_id == "4242")
    reader = cgroups.JobReader(job)
    try:
        body = reader.read()
    finally:
        reader.close()
    assert body == {
        "cpu_user_s": 70.110254, "cpu_system_s": 5.202227,
        # anon + shmem of memory.stat, not memory.current (which counts the page cache);
        # the peak is the highest this reader has seen, not memory.peak (cache too)
        "mem_bytes": 1060200448, "mem_peak_bytes": 1060200448, "mem_limit_bytes": 2147483648,
        "mem_limit_hits": 17, "oom_kills": 1, "page_faults": 523411, "major_faults": 37,
        "swap_bytes": 4096, "read_bytes": 52428800 + 1048576, "write_bytes": 10485760 + 2097152,
        "io_pressure": 2.5, "mem_pressure": 12.75, "nprocs": 5, "nthreads": 11, "alloc_cpus": 4,
    }
    assert sorted(reader.pids) == [2001, 2010, 2020, 2030, 2031]


def test_v2_unlimited_job_without_peak(v2_root: Path) -> None:
    job = next(j for j in cgroups.discover(str(v2_root), 2) if j.job_id == "77")
    reader = cgroups.JobReader(job)
    body = reader.read()
    assert body is not None
    assert body["mem_limit_bytes"] is None          # memory.max is "max"
    assert body["mem_peak_bytes"] == body["mem_bytes"] == 16384000   # anon, no shmem
    assert (body["read_bytes"], body["write_bytes"]) == (0, 0)  # empty io.stat: no I/O yet
    assert (body["nprocs"], body["nthreads"]) == (1, 1)
    shutil.rmtree(job.path)                          # the job ends
    assert reader.read() is None
    reader.close()


def test_v2_counters_follow_the_files(v2_root: Path) -> None:
    job = next(j for j in cgroups.discover(str(v2_root), 2) if j.job_id == "4242")
    reader = cgroups.JobReader(job)
    first = reader.read()
    Path(job.path, "cpu.stat").write_text("usage_usec 90000000\nuser_usec 80000000\n"
                                          "system_usec 10000000\nnr_periods 0\n")
    Path(job.path, "memory.events").write_text("low 0\nhigh 0\nmax 18\noom 3\noom_kill 2\n"
                                               "oom_group_kill 0\n")
    second = reader.read()
    reader.close()
    assert first is not None and second is not None
    assert (second["cpu_user_s"], second["cpu_system_s"]) == (80.0, 10.0)
    assert (second["mem_limit_hits"], second["oom_kills"]) == (18, 2)


def test_v2_sluid_directory_job_id_from_environ(v2_root: Path) -> None:
    sluid = v2_root / "system.slice" / "slurmstepd.scope" / "s0BRMV3CG4Q8X"
    env = {**os.environ, "SLURM_JOB_ID": "31337"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        (sluid / "step_batch" / "user" / "task_0" / "cgroup.procs").write_text(f"{proc.pid}\n")
        found = {j.job_id: j for j in cgroups.discover(str(v2_root), 2)}
        assert set(found) == {"4242", "77", "31337"}
        assert found["31337"].path == str(sluid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("text, expected", [
    (b"0-3,8,10-11\n", 7), (b"5\n", 1), (b"\n", None), (None, None), (b"0-x", None),
])
def test_cpu_count(text: bytes | None, expected: int | None) -> None:
    assert cgroups.cpu_count(text) == expected


@pytest.mark.parametrize("text, expected", [
    (b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", 0.0),
    (b"some avg10=37.51 avg60=1.00 avg300=0.00 total=99\nfull avg10=1.00 avg60=0 avg300=0 total=1\n", 37.51),
    (b"", None), (None, None), (b"garbage", None), (b"some avg10=x avg60=0", None),
])
def test_psi_parsing(text: bytes | None, expected: float | None) -> None:
    assert cgroups.psi_some_avg10(text) == expected


def test_io_stat_skips_named_devices() -> None:
    data = b"8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n253:0 rbytes=10 wbytes=20 rios=1 wios=2\n"
    assert cgroups.io_stat_bytes(data) == (20, 40)
    assert cgroups.io_stat_bytes(data, frozenset({b"253:0"})) == (10, 20)


# ---------------------------------------------------------------- cgroup v1, real kernel

def _v1_available() -> bool:
    return os.geteuid() == 0 and os.path.isdir(f"{V1_ROOT}/memory") and \
        os.path.isdir(f"{V1_ROOT}/cpuacct") and not os.path.exists(f"{V1_ROOT}/cgroup.controllers")


needs_v1 = pytest.mark.skipif(not _v1_available(), reason="needs root and cgroup v1 memory+cpuacct")


@pytest.fixture
def v1_job():
    """A real v1 job cgroup laid out like Slurm's, with a busy process in task_0 that holds
    64 MiB and has written a 96 MiB file (page cache charged to the job)."""
    top = f"slurm_nomadetest{os.getpid()}"
    scratch = Path(f"/tmp/nomade-cgtest-{os.getpid()}")
    rel = f"{top}/uid_0/job_9001"
    dirs = [f"{V1_ROOT}/{c}/{rel}/step_batch/task_0" for c in ("memory", "cpuacct")]
    for d in dirs:
        os.makedirs(d)
    cpuset = f"{V1_ROOT}/cpuset"
    for level in (top, f"{top}/uid_0", rel):     # Slurm confines each level to the job's CPUs
        os.mkdir(f"{cpuset}/{level}")
        Path(cpuset, level, "cpuset.cpus").write_text("0")
        Path(cpuset, level, "cpuset.mems").write_text("0")
    Path(f"{V1_ROOT}/memory/{rel}/memory.limit_in_bytes").write_text(str(512 << 20))
    code = ("import sys,time\nb=bytearray(64<<20)\nfor i in range(0,len(b),4096): b[i]=1\n"
            f"open('{scratch}','wb').write(b'x'*(96<<20))\n"
            "print('ready',flush=True)\nt=time.time()\nwhile time.time()-t<30: pass\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            preexec_fn=lambda: [Path(d, "cgroup.procs").write_text(str(os.getpid()))
                                                for d in dirs])
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        scratch.unlink(missing_ok=True)
        for c in ("memory", "cpuacct"):
            for sub in ("/step_batch/task_0", "/step_batch", "", "/..", "/../.."):
                os.rmdir(os.path.normpath(f"{V1_ROOT}/{c}/{rel}{sub}"))
        for level in (rel, f"{top}/uid_0", top):
            os.rmdir(f"{cpuset}/{level}")


@needs_v1
def test_v1_real_job_cgroup(v1_job: subprocess.Popen) -> None:
    found = [j for j in cgroups.discover(V1_ROOT, 1, node=f"nomadetest{os.getpid()}")
             if j.job_id == "9001"]
    assert len(found) == 1 and found[0].uid == 0 and found[0].node == f"nomadetest{os.getpid()}"
    reader = cgroups.JobReader(found[0])
    first = reader.read()
    time.sleep(0.5)
    second = reader.read()
    reader.close()
    assert first is not None and second is not None
    assert reader.pids == [v1_job.pid]
    assert (second["nprocs"], second["nthreads"]) == (1, 1)
    assert second["cpu_user_s"] + second["cpu_system_s"] > first["cpu_user_s"] + first["cpu_system_s"]
    assert second["mem_limit_bytes"] == 512 << 20
    # the 64 MiB the process holds, not the 96 MiB of page cache its file left (charged to
    # the job's usage, dropped by the kernel before it kills anything)
    usage = int(Path(found[0].path, "memory.usage_in_bytes").read_text())
    assert usage >= (64 + 96) << 20
    assert 64 << 20 <= second["mem_bytes"] <= 96 << 20
    assert second["mem_peak_bytes"] == max(first["mem_bytes"], second["mem_bytes"])
    assert second["page_faults"] >= (64 << 20) // 4096
    assert (second["mem_limit_hits"], second["oom_kills"]) == (0, 0)
    assert second["io_pressure"] is None and second["mem_pressure"] is None
    assert second["alloc_cpus"] == 1


@needs_v1
def test_v1_oom_kill_is_counted() -> None:
    top = f"slurm_nomadeoom{os.getpid()}"
    rel = f"{top}/uid_0/job_9002"
    dirs = [f"{V1_ROOT}/{c}/{rel}/step_0/task_0" for c in ("memory", "cpuacct")]
    for d in dirs:
        os.makedirs(d)
    try:
        Path(f"{V1_ROOT}/memory/{rel}/memory.limit_in_bytes").write_text(str(32 << 20))
        Path(f"{V1_ROOT}/memory/{rel}/step_0/memory.limit_in_bytes").write_text(str(32 << 20))
        proc = subprocess.run([sys.executable, "-c", "b=bytearray(256<<20)\nfor i in range(0,len(b),4096): b[i]=1"],
                              preexec_fn=lambda: [Path(d, "cgroup.procs").write_text(str(os.getpid()))
                                                  for d in dirs], check=False)
        assert proc.returncode == -9
        job = next(j for j in cgroups.discover(V1_ROOT, 1) if j.job_id == "9002" and j.node)
        reader = cgroups.JobReader(job)
        body = reader.read()
        reader.close()
        assert body is not None
        assert body["oom_kills"] == 1
        assert body["mem_limit_hits"] >= 1
        assert body["nprocs"] == 0
    finally:
        for c in ("memory", "cpuacct"):
            for sub in ("/step_0/task_0", "/step_0", "", "/..", "/../.."):
                os.rmdir(os.path.normpath(f"{V1_ROOT}/{c}/{rel}{sub}"))
