"""The real hook script under ``env -i``: exit 0 always, one exact event file, or a syslog line.

Read-only and full spool directories, and the config file and syslog socket at their
fixed paths, are made real in a private mount namespace (``unshare --mount``), so
nothing leaks into the host even if a test dies; those tests need root.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from nomade import jobenv
from nomade.spool import Spool, decode

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "prolog/nomade-hook"
# What Slurm sets to tell the one script which hook it runs as; jobcomp/script sets
# none of it but JOBSTATE.
CONTEXT = {"prolog": "prolog_slurmd", "epilog": "epilog_slurmd",
           "prolog_slurmctld": "prolog_slurmctld", "epilog_slurmctld": "epilog_slurmctld",
           "jobcomp": None}
HOOKS = sorted(CONTEXT)
SLURM_ENV = {"SLURM_JOB_ID": "42", "SLURM_JOB_UID": "1001", "SLURM_JOB_GID": "1001",
             "SLURM_JOB_USER": "u1", "SLURM_JOB_PARTITION": "debug",
             "SLURM_CPUS_PER_NODE": "2(x2)", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_WORK_DIR": "/home/u1", "CLUSTER_NAME": "nomade",
             "SLURMD_NODENAME": "n1", "SLURM_JOB_EXIT_CODE": "768",
             "SLURM_JOB_EXIT_CODE2": "3:0", "SLURM_SCRIPT_CONTEXT": "epilog_slurmd"}
JOBCOMP_ENV = {"JOBID": "42", "JOBSTATE": "TIMEOUT", "EXITCODE": "0:9", "DERIVED_EC": "0:0",
               "USERNAME": "u1", "UID": "1001", "GID": "1001", "START": "1700000000",
               "END": "1700000070", "SUBMIT": "1699999999", "LIMIT": "1", "NODES": "n[1-2]",
               "PARTITION": "debug", "PROCS": "4", "JOBNAME": "sleepy", "BATCH": "yes",
               "PATH": "/bin:/usr/bin"}
# slurmctld builds the jobcomp environment from the job alone, so jobcomp keeps all of it
# but PATH and the like; the other hooks keep SLURM_*, SLURMD_* and CLUSTER_NAME only.
NOT_RECORDED = {"jobcomp": {"PATH", "NOMADE_SPOOL"}, "other": {"NOMADE_SPOOL", "UNRELATED"}}
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare for a private mount namespace")


def hook_env(hook: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` as Slurm hands it to ``hook``: with that hook's SLURM_SCRIPT_CONTEXT."""
    env = {k: v for k, v in env.items() if k != "SLURM_SCRIPT_CONTEXT"}
    context = CONTEXT[hook]
    return env if context is None else {**env, "SLURM_SCRIPT_CONTEXT": context}


def run_hook(hook: str, env: dict[str, str] | dict[bytes, bytes]) -> subprocess.CompletedProcess[bytes]:
    """Run the hook script as Slurm runs ``hook``: no PATH, no HOME, nothing but ``env``
    and the hook's SLURM_SCRIPT_CONTEXT."""
    if env and isinstance(next(iter(env)), bytes):
        context = CONTEXT[hook]
        env = {**env, **({b"SLURM_SCRIPT_CONTEXT": context.encode()} if context else {})}
    else:
        env = hook_env(hook, env)  # type: ignore[arg-type]
    return subprocess.run([str(HOOK)], env=env, capture_output=True, timeout=30)


def in_namespace(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a /bin/sh script in a private mount namespace (mounts vanish with it)."""
    return subprocess.run(["/usr/bin/unshare", "--mount", "--propagation", "private",
                           "/bin/sh", "-c", script, "sh", *args],
                          capture_output=True, text=True, timeout=60)


def events_in(spool: Path) -> list[Path]:
    return sorted(p for p in spool.iterdir() if p.name.endswith(".ev"))


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_writes_one_exact_event(hook: str, tmp_path: Path) -> None:
    variables = hook_env(hook, JOBCOMP_ENV if hook == "jobcomp" else SLURM_ENV)
    result = run_hook(hook, {**variables, "NOMADE_SPOOL": str(tmp_path), "UNRELATED": "x"})
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    [path] = events_in(tmp_path)
    record = decode(path.read_bytes())
    assert record.pop("NOMADE_HOOK") == hook
    ts = record.pop("NOMADE_TS")
    assert jobenv.to_ts(ts) is not None and path.name.startswith(f"{ts}-{hook}-")
    assert re.fullmatch(r"\d{10,}\.\d{9}", ts), "the width of Spool.put's names: they sort together"
    skip = NOT_RECORDED["jobcomp" if hook == "jobcomp" else "other"]
    assert record == {k: v for k, v in {**variables, "UNRELATED": "x"}.items() if k not in skip}
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temp file left"


def test_names_sort_by_time_and_spool_takes_them_in_order(tmp_path: Path) -> None:
    env = {**SLURM_ENV, "NOMADE_SPOOL": str(tmp_path)}
    for hook in ("prolog_slurmctld", "prolog", "epilog", "epilog_slurmctld"):
        assert run_hook(hook, env).returncode == 0
    items = Spool(tmp_path).take(10)
    assert [it.record["NOMADE_HOOK"] for it in items] == [
        "prolog_slurmctld", "prolog", "epilog", "epilog_slurmctld"]
    assert [k for k, _ in jobenv.events(items[2].record)] == ["job.end"]


def test_epilog_folder_holds_the_same_script() -> None:
    epilog = ROOT / "epilog/nomade-hook"
    assert epilog.resolve() == HOOK.resolve() and os.access(HOOK, os.X_OK)


@pytest.mark.parametrize("hook", ["prolog", "epilog", "prolog_slurmctld", "epilog_slurmctld"])
def test_without_script_context_the_hook_is_told_by_its_name(hook: str, tmp_path: Path) -> None:
    """Slurm releases without SLURM_SCRIPT_CONTEXT: the script installed under the hook's name."""
    named = tmp_path / f"nomade-{hook.replace('_', '-')}"
    named.symlink_to(HOOK)
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {k: v for k, v in SLURM_ENV.items() if k != "SLURM_SCRIPT_CONTEXT"}
    result = subprocess.run([str(named)], env={**env, "NOMADE_SPOOL": str(spool)},
                            capture_output=True, timeout=30)
    assert result.returncode == 0
    [path] = events_in(spool)
    assert decode(path.read_bytes())["NOMADE_HOOK"] == hook


@pytest.mark.parametrize("context", [None, "task_prolog", "epilog_slurmd;x"])
def test_unknown_hook_writes_nothing_and_exits_0(context: str | None, tmp_path: Path) -> None:
    env = {k: v for k, v in SLURM_ENV.items() if k != "SLURM_SCRIPT_CONTEXT"}
    if context is not None:
        env["SLURM_SCRIPT_CONTEXT"] = context
    result = subprocess.run([str(HOOK)], env={**env, "NOMADE_SPOOL": str(tmp_path)},
                            capture_output=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, b"")
    assert list(tmp_path.iterdir()) == []


def test_garbage_values_round_trip_byte_for_byte(tmp_path: Path) -> None:
    garbage = {b"SLURM_JOB_ID": b"42", b"SLURM_JOB_NAME": b"a'b\"c\n$(rm -rf /)`x`\\\t",
               b"SLURM_JOB_COMMENT": b"\xff\xfe\xc3(", b"SLURM_EMPTY": b"",
               b"SLURM_EQ": b"a=b=c", b"NOMADE_SPOOL": os.fsencode(tmp_path)}
    assert run_hook("prolog", garbage).returncode == 0
    [path] = events_in(tmp_path)
    raw = path.read_bytes()
    for key in (b"SLURM_JOB_NAME", b"SLURM_JOB_COMMENT", b"SLURM_EMPTY", b"SLURM_EQ"):
        assert b"\0" + key + b"=" + garbage[key] + b"\0" in raw
    [item] = Spool(tmp_path).take(1)
    assert os.fsencode(item.record["SLURM_JOB_COMMENT"]) == b"\xff\xfe\xc3("


@pytest.mark.parametrize("locale", [{}, {"LC_ALL": "C.UTF-8"}, {"LANG": "C.UTF-8"}])
def test_invalid_utf8_and_newlines_survive_any_locale(locale: dict[str, str], tmp_path: Path) -> None:
    """bash keeps bytes whatever the locale: mapfile, case and printf never re-encode."""
    garbage = b"\xff\n\xc3(\r\n\xe2\x82 caf\xc3\xa9 \x01\x7f"
    env = {b"SLURM_JOB_ID": b"42", b"SLURM_JOB_NAME": garbage, b"SLURM_\xff": b"\xfe",
           b"NOMADE_SPOOL": os.fsencode(tmp_path)}
    env.update((k.encode(), v.encode()) for k, v in locale.items())
    result = run_hook("prolog", env)
    assert (result.returncode, result.stderr) == (0, b"")
    [path] = events_in(tmp_path)
    raw = path.read_bytes()
    assert b"\0SLURM_JOB_NAME=" + garbage + b"\0" in raw and b"\0SLURM_\xff=\xfe\0" in raw


def test_older_bash_without_epochrealtime_or_mapfile_writes_the_same_event(tmp_path: Path) -> None:
    """bash 4.4 (no $EPOCHREALTIME: date) and < 4.4 (no ``mapfile -d``: read loop), simulated."""
    old = tmp_path / "old-bash-hook"
    old.write_text(HOOK.read_text().replace(
        "\ntmp=\n", "\ntmp=\nenable -n mapfile; unset -v EPOCHREALTIME\n", 1))
    old.chmod(0o755)
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {**hook_env("prolog", SLURM_ENV), "SLURM_JOB_NAME": "a\nb", "NOMADE_SPOOL": str(spool)}
    result = subprocess.run([str(old)], env=env, capture_output=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, b"")
    [path] = events_in(spool)
    record = decode(path.read_bytes())
    assert re.fullmatch(r"\d{10,}\.\d{9}", record.pop("NOMADE_TS")) and record.pop("NOMADE_HOOK") == "prolog"
    assert record == {k: v for k, v in env.items() if k != "NOMADE_SPOOL"}


def test_environment_cannot_inject_code_or_redirect_the_cleanup(tmp_path: Path) -> None:
    """``bash -p``: no BASH_ENV, no exported functions; the hook's own variables start empty."""
    marker, victim = tmp_path / "bash_env_ran", tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "bash_env").write_text(f"echo x > {marker}\n")
    env = {**SLURM_ENV, "NOMADE_SPOOL": str(tmp_path / "spool"), "BASH_ENV": str(tmp_path / "bash_env"),
           "BASH_FUNC_printf%%": "() { :; }", "tmp": str(victim), "SHELLOPTS": "xtrace"}
    assert run_hook("epilog", env).returncode == 0  # spool missing: fail() runs
    assert victim.read_text() == "keep me" and not marker.exists()
    (tmp_path / "spool").mkdir()
    result = run_hook("epilog", env)
    assert (result.returncode, result.stderr) == (0, b"")
    [path] = events_in(tmp_path / "spool")
    assert decode(path.read_bytes())["SLURM_JOB_ID"] == "42", "printf is the builtin"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count the processes")
@pytest.mark.parametrize("hook", ["prolog", "jobcomp"])
def test_only_the_fsync_and_the_rename_run_a_program(hook: str, tmp_path: Path) -> None:
    """Process creation dominates a hook's wall time on a busy node: keep it to sync and mv."""
    variables = hook_env(hook, JOBCOMP_ENV if hook == "jobcomp" else SLURM_ENV)
    trace = tmp_path / "trace"
    spool = tmp_path / "spool"
    spool.mkdir()
    result = subprocess.run([shutil.which("strace") or "strace", "-f", "-qq", "-e", "trace=execve",
                             "-o", str(trace), str(HOOK)],
                            env={**variables, "NOMADE_SPOOL": str(spool)}, capture_output=True, timeout=30)
    assert result.returncode == 0 and len(events_in(spool)) == 1
    programs = [line.split('"')[1] for line in trace.read_text().splitlines() if "execve(" in line]
    assert programs == [str(HOOK), "/usr/bin/sync", "/usr/bin/mv"]


@pytest.mark.parametrize("hook", HOOKS)
def test_no_job_id_writes_nothing_and_exits_0(hook: str, tmp_path: Path) -> None:
    result = run_hook(hook, {"NOMADE_SPOOL": str(tmp_path)})
    assert (result.returncode, result.stdout) == (0, b"")
    assert list(tmp_path.iterdir()) == []


def test_partial_variables_still_spool_what_there_is(tmp_path: Path) -> None:
    assert run_hook("epilog", {"SLURM_JOB_ID": "9", "NOMADE_SPOOL": str(tmp_path)}).returncode == 0
    [item] = Spool(tmp_path).take(1)
    assert jobenv.events(item.record) == [("job.end", {
        "job_id": "9", "end_ts": jobenv.to_ts(item.record["NOMADE_TS"]), "exit_code": None,
        "signal": None, "state": None, "source": "epilog"})]


@pytest.mark.parametrize("hook", HOOKS)
def test_missing_spool_directory_exits_0(hook: str, tmp_path: Path) -> None:
    result = run_hook(hook, {**SLURM_ENV, **JOBCOMP_ENV, "NOMADE_SPOOL": str(tmp_path / "none")})
    assert (result.returncode, result.stdout) == (0, b"")
    assert list(tmp_path.iterdir()) == []


def test_spool_path_that_is_a_file_exits_0(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = run_hook("epilog", {**SLURM_ENV, "NOMADE_SPOOL": str(tmp_path / "file")})
    assert result.returncode == 0 and (tmp_path / "file").read_text() == "x"


ENV_ARGS = " ".join(shlex.quote(f"{k}={v}") for k, v in SLURM_ENV.items())


@needs_root
def test_read_only_spool_exits_0(tmp_path: Path) -> None:
    out = in_namespace(
        f'/usr/bin/mount -t tmpfs -o ro tmpfs "$1" || exit 99\n'
        f'/usr/bin/env -i NOMADE_SPOOL="$1" {ENV_ARGS} "$2"; echo "rc=$?"; /usr/bin/ls -A "$1"',
        str(tmp_path), str(HOOK))
    assert out.stdout == "rc=0\n", out.stderr


@needs_root
def test_full_disk_exits_0_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = in_namespace(
        '/usr/bin/mount -t tmpfs -o size=8k tmpfs "$1" || exit 99\n'
        '/usr/bin/dd if=/dev/zero of="$1/fill" bs=1k count=64 2>/dev/null\n'
        f'/usr/bin/env -i NOMADE_SPOOL="$1" {ENV_ARGS} "$2"; echo "rc=$?"; /usr/bin/ls -A "$1"',
        str(tmp_path), str(HOOK))
    assert out.stdout == "rc=0\nfill\n", out.stderr


@needs_root
def test_spool_dir_from_config_and_default(tmp_path: Path) -> None:
    """``[hooks] spool_dir`` of /etc/nomade/nomade.toml, else /var/spool/nomade."""
    conf, spool, var = tmp_path / "nomade.toml", tmp_path / "from-config", tmp_path / "var-spool"
    spool.mkdir()
    var.mkdir()
    conf.write_text(
        '[collector]\nspool_dir = "/wrong"\n\n[hooks.sub]\nspool_dir = "/wrong"\n'
        f'[hooks]\n# comment\n  spool_dir = "{spool}"   # trailing comment\n[ml]\nseed = 1')
    # tmpfs over /etc and /var/spool inside the namespace: the host's stay untouched.
    script = ('/usr/bin/mount -t tmpfs tmpfs /var/spool && /usr/bin/mkdir /var/spool/nomade '
              '&& /usr/bin/mount --bind "$3" /var/spool/nomade || exit 98\n'
              '/usr/bin/mount -t tmpfs tmpfs /etc && /usr/bin/mkdir /etc/nomade '
              '&& /usr/bin/cp "$1" /etc/nomade/nomade.toml || exit 99\n'
              f'/usr/bin/env -i {ENV_ARGS} "$2"; echo "rc=$?"\n'
              '/usr/bin/rm /etc/nomade/nomade.toml\n'
              f'/usr/bin/env -i {ENV_ARGS} "$2"; echo "rc=$?"\n')
    out = in_namespace(script, str(conf), str(HOOK), str(var))
    assert out.stdout == "rc=0\nrc=0\n", out.stderr
    assert len(events_in(spool)) == 1 and len(events_in(var)) == 1


@needs_root
def test_problem_is_logged_to_syslog_with_the_job_id(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "null", 0o666 | 0o020000, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log:
        log.bind(str(dev / "log"))
        log.settimeout(10)
        out = in_namespace(
            '/usr/bin/mount --bind "$1" /dev || exit 99\n'
            f'/usr/bin/env -i NOMADE_SPOOL=/nonexistent {ENV_ARGS} "$2"; echo "rc=$?"',
            str(dev), str(HOOK))
        assert out.stdout == "rc=0\n", out.stderr
        line = log.recv(4096).decode()
    assert "nomade-hook" in line and "job=42 hook=epilog" in line and "/nonexistent" in line


@needs_root
def test_without_proc_the_environment_comes_from_env(tmp_path: Path) -> None:
    out = in_namespace(
        '/usr/bin/mount -t tmpfs tmpfs /proc || exit 99\n'
        f'/usr/bin/env -i NOMADE_SPOOL="$1" {ENV_ARGS} "$2"; echo "rc=$?"',
        str(tmp_path), str(HOOK))
    assert out.stdout == "rc=0\n", out.stderr
    [path] = events_in(tmp_path)
    record = decode(path.read_bytes())
    assert {k: v for k, v in record.items() if not k.startswith("NOMADE_")} == SLURM_ENV


# --- nomade.agent.hook_drain: real scripts -> spool -> real wire -> real store ------------

def _job_rows(db: Path) -> list[tuple[object, ...]]:
    """Every jobs row, ``updated_ts`` last."""
    from nomade.store import JOB_FIELDS

    assert JOB_FIELDS[-1] == "updated_ts"
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(f"SELECT {', '.join(JOB_FIELDS)} FROM jobs ORDER BY job_id").fetchall()


def test_drain_stores_each_event_once_even_if_killed_before_confirm(tmp_path: Path) -> None:
    from nomade.agent.hook_drain import drain_spool
    from nomade.store import Store

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    env = {**SLURM_ENV, "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ACCOUNT": "physics",
           "NOMADE_SPOOL": str(spool_dir)}
    for hook in ("prolog_slurmctld", "prolog", "epilog", "epilog_slurmctld"):
        assert run_hook(hook, env).returncode == 0
    assert run_hook("jobcomp", {**JOBCOMP_ENV, "NOMADE_SPOOL": str(spool_dir)}).returncode == 0
    saved = {p.name: p.read_bytes() for p in spool_dir.iterdir()}

    with Store(tmp_path / "a.db") as store:
        assert drain_spool(Spool(spool_dir), store, "ctld") == 5
        job = store.get_job("42")
    assert Spool(spool_dir).pending() == 0
    assert job is not None and (job.state, job.label, job.state_source) == ("TIMEOUT", 1, "jobcomp")
    assert (job.user, job.uid, job.account, job.nodes) == ("u1", 1001, "physics", ("n1", "n2"))
    assert job.time_limit_s == 60 and job.cluster == "nomade"
    assert (job.exit_code, job.signal) == (0, 9), "the final state's exit code (jobcomp) wins"
    once = _job_rows(tmp_path / "a.db")

    # Killed after the store commit and before any confirm: the same files come back.
    for name, data in saved.items():
        (spool_dir / name).write_bytes(data)
    with Store(tmp_path / "a.db") as store:
        assert drain_spool(Spool(spool_dir), store, "ctld") == 5
    twice = _job_rows(tmp_path / "a.db")
    assert len(twice) == 1 and twice[0][:-1] == once[0][:-1], "only updated_ts may change"


def test_drain_moves_unusable_events_aside(tmp_path: Path) -> None:
    from nomade.agent.hook_drain import drain_spool
    from nomade.store import Store

    spool = Spool(tmp_path / "spool")
    spool.dir.mkdir()
    spool.put({"NOMADE_HOOK": "epilog", "NOMADE_TS": "1700000000.0"})  # no job id
    spool.put({"NOMADE_HOOK": "epilog", "SLURM_JOB_ID": "5", "NOMADE_TS": "1700000001.0"})
    with Store(tmp_path / "a.db") as store:
        assert drain_spool(spool, store, "n1") == 1
        assert store.get_job("5") is not None
    assert spool.pending() == 0 and spool.bad_moved == 1
    assert len(list((spool.dir / "bad").iterdir())) == 1
