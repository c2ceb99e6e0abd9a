"""The one place that runs Slurm commands: jobs, final states, Comments, AdminComments, submit and cancel.

Works with every Slurm version through the command-line tools (``scontrol``, ``squeue``,
``sbatch``, ``scancel``), found by full path without relying on PATH (hooks and daemons
may run with none): ``bin_dir`` if given, else ``/usr/bin``, ``/usr/local/bin``,
``/opt/slurm/bin``. Arguments always go as lists, never through a shell; text from jobs
(comments, names) is only ever one argument.

``squeue --json`` is read in both shapes: openapi v0.0.38 of Slurm 22.05 (plain numbers,
``exit_code`` as a wait status, ``job_state`` a string) and the newer shapes of 23.x+
(``{"set": .., "infinite": .., "number": ..}``, ``exit_code`` as
``{"return_code": .., "signal": ..}``, ``job_state`` a list). Slurm 22.05's ``squeue
--json`` ignores ``--jobs``/``--states``, so jobs are filtered here as well.

pyslurm is used only where it imports AND its major.minor equals the running Slurm's
(``use_pyslurm="auto"``), and then only to read and write Comments; otherwise the reason
is logged once at debug level and the command-line tools are used.

A job's AdminComment is set in slurmctld (``scontrol update``) or, once the job has
finished, in its accounting record (``sacctmgr modify job``, read back with ``sacct``).

Errors from Slurm are ``SlurmError(command, returncode, stderr)``; a job Slurm does not
know (never existed, or purged after MinJobAge) is ``JobNotFound``; a Comment update of a
job that has ended is ``JobFinished``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

from nomade import slurmfmt
from nomade.errors import NomadeError
from nomade.slurmfmt import expand_hostlist
from nomade.slurmstates import is_final, normalise

if TYPE_CHECKING:
    from nomade.config import Config

log = logging.getLogger(__name__)

#: Where the Slurm tools are looked for when no bin_dir is configured.
SEARCH_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/slurm/bin")
_RUNUSER = ("/usr/sbin/runuser", "/sbin/runuser")
#: Slurm's NO_VAL / INFINITE markers (uint32 and uint64) mean "not set".
_MEM_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=")
_JOB_ID = re.compile(r"^\d+([_+]\d+)?$")


class SlurmError(NomadeError):
    """A Slurm command failed: which command, its exit status (None: it did not run or
    timed out) and what it said on stderr."""

    def __init__(self, command: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr.strip()
        status = "could not run" if returncode is None else f"exit status {returncode}"
        super().__init__(f"{' '.join(self.command)}: {status}: {self.stderr or '(no message)'}")


class JobNotFound(SlurmError):
    """Slurm does not know this job (never existed, or purged after MinJobAge)."""


class JobFinished(SlurmError):
    """The job has ended, so Slurm refuses to change it (e.g. its Comment)."""


class FinalState(NamedTuple):
    """A job's settled state (``COMPLETED``, ``TIMEOUT`` ...) and its exit code (None if unknown)."""

    state: str
    exit_code: int | None


@dataclass(frozen=True)
class Job:
    """One job as ``squeue --json`` reports it, in NØMADE's units (seconds, bytes, POSIX ts).

    ``state`` is normalised (``nomade.slurmstates.normalise``). ``start_ts`` is None while
    pending, ``end_ts``, ``exit_code`` and ``exit_signal`` while not final (Slurm shows
    predictions there). ``comment`` is for display: Slurm 22.05's JSON doubles
    backslashes, so ``Slurm.get_comment`` is the exact one. ``job_id`` of an array task is
    ``"<array job>_<task>"``; ``own_id`` is its own id (the one hooks and cgroups use).
    """

    job_id: str
    name: str
    user: str | None
    uid: int | None
    account: str | None
    partition: str | None
    state: str | None
    nodes: list[str]
    num_nodes: int | None
    req_cpus: int | None
    req_mem_bytes: int | None
    req_gpus: int
    time_limit_s: float | None
    submit_ts: float | None
    start_ts: float | None
    end_ts: float | None
    exit_code: int | None
    exit_signal: int | None
    comment: str = field(default="")
    own_id: str = field(default="")
    admin_comment: str = field(default="")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """``scontrol show -o`` output (one record) as a dict of its ``Key=Value`` fields.

    A value runs to the next `` Key=``; so a free-text value (Comment, a path) that itself
    contains `` Word=`` is split there: use ``Slurm.get_comment`` for the Comment.
    """
    matches = list(_SCONTROL_KEY.finditer(line))
    record: dict[str, str] = {}
    for m, nxt in zip(matches, [*matches[1:], None], strict=True):
        end = nxt.start() if nxt else len(line)
        record.setdefault(m.group(1), line[m.end():end].rstrip())
    return record


_num = slurmfmt.number


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None else int(n)


def _ts(value: Any) -> float | None:
    n = _num(value)
    return float(n) if n is not None and n > 0 else None


def _tres(text: Any) -> dict[str, str]:
    """``"cpu=2,mem=2000M,node=2,gres/gpu=1"`` as a dict."""
    if not isinstance(text, str):
        return {}
    pairs = (item.partition("=") for item in text.split(",") if "=" in item)
    return {k: v for k, _, v in pairs}


def _mem_bytes(text: str | None) -> int | None:
    """``"2000M"``, ``"1.5G"``, ``"512"`` (MiB) as bytes."""
    if not text:
        return None
    unit = text[-1].upper()
    number = text[:-1] if unit in _MEM_UNITS else text
    try:
        return int(float(number) * _MEM_UNITS.get(unit, _MEM_UNITS["M"]))
    except ValueError:
        return None


def _gpus(tres: Mapping[str, str]) -> int:
    """GPUs in a TRES dict: ``gres/gpu`` or, without it, the sum of ``gres/gpu:<type>``."""
    if "gres/gpu" in tres:
        return int(tres["gres/gpu"]) if tres["gres/gpu"].isdigit() else 0
    return sum(int(v) for k, v in tres.items() if k.startswith("gres/gpu:") and v.isdigit())


def _exit(value: Any) -> tuple[int | None, int | None]:
    """(return code, signal) from a wait status (22.05) or an exit-code object (23.x+)."""
    if isinstance(value, Mapping):
        signal = value.get("signal")
        if isinstance(signal, Mapping):
            signal = signal.get("id", signal.get("signal_id"))
        return _int(value.get("return_code")), _int(signal)
    status = _int(value)
    if status is None:
        return None, None
    return (status >> 8) & 0xFF, status & 0x7F


def _job_id(raw: Mapping[str, Any]) -> str:
    """``"123"``, or ``"<array_job_id>_<task>"`` for an array task."""
    task = _int(raw.get("array_task_id"))
    array_job = _int(raw.get("array_job_id"))
    if task is not None and array_job:
        return f"{array_job}_{task}"
    return str(_int(raw.get("job_id")))


def job_from_json(raw: Mapping[str, Any]) -> Job:
    """Normalise one job of ``squeue --json`` (any version's shape) into a ``Job``."""
    state = normalise(raw.get("job_state"))
    final = is_final(state)
    tres = _tres(raw.get("tres_req_str")) or _tres(raw.get("tres_alloc_str"))
    cpus = int(tres["cpu"]) if tres.get("cpu", "").isdigit() else _int(raw.get("cpus"))
    limit_min = _num(raw.get("time_limit"))
    code, signal = _exit(raw.get("exit_code")) if final else (None, None)
    nodes = raw.get("nodes")
    return Job(
        job_id=_job_id(raw),
        name=str(raw.get("name") or ""),
        user=raw.get("user_name") or None,
        uid=_int(raw.get("user_id")),
        account=raw.get("account") or None,
        partition=raw.get("partition") or None,
        state=state,
        nodes=expand_hostlist(nodes) if isinstance(nodes, str) and nodes else [],
        num_nodes=_int(raw.get("node_count")),
        req_cpus=cpus,
        req_mem_bytes=_mem_bytes(tres.get("mem")),
        req_gpus=_gpus(tres),
        time_limit_s=None if limit_min is None else float(limit_min) * 60.0,
        submit_ts=_ts(raw.get("submit_time")),
        start_ts=None if state == "PENDING" else _ts(raw.get("start_time")),
        end_ts=_ts(raw.get("end_time")) if final else None,
        exit_code=code,
        exit_signal=signal,
        comment=str(raw.get("comment") or ""),
        own_id=str(_int(raw.get("job_id"))),
        admin_comment=str(raw.get("admin_comment") or ""),
    )


def pyslurm_mismatch(pyslurm_version: str, slurm_version: str) -> str | None:
    """Why pyslurm ``pyslurm_version`` cannot drive Slurm ``slurm_version`` (None: it can).

    pyslurm releases follow Slurm's major.minor (``25.11.0`` drives Slurm ``25.11.x``).
    """
    def major_minor(v: str) -> tuple[str, ...]:
        return tuple(p.lstrip("0") or "0" for p in v.strip().split(".")[:2])

    if major_minor(pyslurm_version) != major_minor(slurm_version):
        return f"pyslurm {pyslurm_version} does not match Slurm {slurm_version}"
    return None


class Slurm:
    """Access to one Slurm cluster through its command-line tools (see the module doc).

    The constructor only stores settings; tools are looked up on first use.
    ``use_pyslurm`` is ``"auto"`` (use a matching pyslurm for Comments) or ``"never"``.
    """

    def __init__(self, bin_dir: str | None = None, timeout_s: float = 30.0,
                 use_pyslurm: str = "auto") -> None:
        if use_pyslurm not in ("auto", "never"):
            raise ValueError(f'use_pyslurm must be "auto" or "never", not {use_pyslurm!r}')
        self.bin_dir = bin_dir or None
        self.timeout_s = timeout_s
        self.use_pyslurm = use_pyslurm
        self._paths: dict[str, str] = {}
        self._pyslurm: ModuleType | None | bool = False   # False: not decided yet

    @classmethod
    def from_config(cls, cfg: Config) -> Slurm:
        """A ``Slurm`` with the ``[slurm]`` settings of a loaded config."""
        return cls(bin_dir=cfg.slurm.bin_dir or None, timeout_s=cfg.slurm.command_timeout_s,
                   use_pyslurm=cfg.slurm.use_pyslurm)

    # ------------------------------------------------------------------ running tools
    def tool(self, name: str) -> str:
        """Full path of Slurm tool ``name``; SlurmError when it is in none of the places."""
        if name not in self._paths:
            dirs = (self.bin_dir,) if self.bin_dir else SEARCH_DIRS
            found = [os.path.join(d, name) for d in dirs if os.access(os.path.join(d, name), os.X_OK)]
            if not found:
                raise SlurmError([name], None, f"{name} not found in {', '.join(dirs)}"
                                 " (set bin_dir in [slurm] of nomade.toml)")
            self._paths[name] = found[0]
        return self._paths[name]

    def _run(self, name: str, args: Sequence[str], *, stdin: str | None = None,
             as_user: str | None = None, timeout_s: float | None = None) -> str:
        """Run Slurm tool ``name`` with ``args`` (within ``timeout_s``, default the
        configured one); its stdout, or SlurmError/JobNotFound."""
        command = [self.tool(name), *args]
        if as_user is not None:
            runuser = next((p for p in _RUNUSER if os.access(p, os.X_OK)), None)
            if runuser is None:
                raise SlurmError(command, None, f"runuser not found in {', '.join(_RUNUSER)}")
            command = [runuser, "-u", as_user, "--", *command]
        log.debug("running %s", command)
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True,
                                  errors="replace", timeout=timeout_s or self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise SlurmError(command, None, f"no answer within {timeout_s or self.timeout_s:g} s") from None
        except OSError as exc:
            raise SlurmError(command, None, str(exc)) from None
        if done.returncode != 0:
            raise _error(command, done.returncode, done.stderr or done.stdout)
        return done.stdout

    def accounting(self, start: str, end: str, fields: str, timeout_s: float = 600.0) -> str:
        """``sacct --parsable2`` text (header first) of every job of every user that was
        pending, running or ended between ``start`` and ``end`` (``YYYY-MM-DDTHH:MM:SS``,
        local time as sacct reads it), allocations only, with ``fields``. A slurmdbd
        answer for a long window takes time: ``timeout_s``."""
        return self._run("sacct", ["--allusers", "--allocations", "--parsable2", f"--starttime={start}",
                                   f"--endtime={end}", f"--format={fields}"], timeout_s=timeout_s)

    def version(self) -> str:
        """The Slurm version of the tools, e.g. ``"22.05.8"``."""
        return self._run("scontrol", ["--version"]).split()[-1]

    def ping(self) -> bool:
        """True when slurmctld answers (``scontrol ping``)."""
        try:
            self._run("scontrol", ["ping"])
        except SlurmError:
            return False
        return True

    def nodes(self) -> list[str]:
        """The names of the cluster's nodes (``sinfo -N``), sorted, each once."""
        out = self._run("sinfo", ["--noheader", "--Node", "--format=%N"])
        return sorted({line.strip() for line in out.splitlines() if line.strip()})

    # ------------------------------------------------------------------ reading jobs
    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show -o job <id>`` as a dict of its fields (first record for an array).

        Raises JobNotFound when Slurm does not know the job.
        """
        out = self._run("scontrol", ["show", "-o", "job", _checked_id(job_id)])
        lines = [line for line in out.splitlines() if line.strip()]
        if not lines:
            raise JobNotFound(["scontrol", "show", "-o", "job", job_id], 0, "no record")
        return parse_scontrol_record(lines[0])

    def list_jobs(self, job_ids: Iterable[str] | None = None,
                  states: Iterable[str] | None = None) -> list[Job]:
        """Jobs Slurm knows (running, pending, and ended ones it still keeps), one query.

        ``job_ids`` keeps only those jobs (array tasks match as ``"123_4"`` or by their own
        id); ``states`` keeps only jobs whose normalised state is one of them. Jobs Slurm
        no longer knows are simply absent.
        """
        wanted = None if job_ids is None else {_checked_id(j) for j in job_ids}
        if wanted is not None and not wanted:
            return []
        keep = None if states is None else {normalise(s) for s in states}
        jobs = []
        for raw in self._squeue_json(sorted(wanted) if wanted else None):
            job = job_from_json(raw)
            own_id = str(_int(raw.get("job_id")))
            if wanted is not None and job.job_id not in wanted and own_id not in wanted:
                continue
            if keep is not None and job.state not in keep:
                continue
            jobs.append(job)
        return jobs

    def final_states(self, job_ids: Iterable[str]) -> dict[str, FinalState | None]:
        """For each job id, its FinalState, or None while it is not final (or Slurm no
        longer knows it). One ``squeue`` call for all of them."""
        ids = [_checked_id(j) for j in job_ids]
        result: dict[str, FinalState | None] = dict.fromkeys(ids)
        for job in self.list_jobs(ids):
            if job.state is None or not is_final(job.state):
                continue
            for key in {job.job_id, job.own_id} & result.keys():   # an array task: either id
                result[key] = FinalState(job.state, job.exit_code)
        return result

    def _squeue_json(self, job_ids: list[str] | None) -> list[Mapping[str, Any]]:
        """The ``jobs`` list of ``squeue --json --states=all [--jobs=...]``.

        Newer Slurm refuses the whole ``--jobs`` list when one id is unknown: the list is
        then halved and each half asked again, so k unknown ids among n cost about
        2·k·log2(n) more calls, never a listing of every job."""
        args = ["--json", "--states=all"]
        if job_ids:
            args.append("--jobs=" + ",".join(job_ids))
        try:
            out = self._run("squeue", args)
        except JobNotFound:
            if not job_ids or len(job_ids) == 1:
                return []
            half = len(job_ids) // 2
            return self._squeue_json(job_ids[:half]) + self._squeue_json(job_ids[half:])
        try:
            data = json.loads(out)
            jobs = data["jobs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SlurmError(["squeue", *args], 0, f"unreadable JSON: {exc}") from None
        if not isinstance(jobs, list):
            raise SlurmError(["squeue", *args], 0, "unreadable JSON: 'jobs' is not a list")
        return [j for j in jobs if isinstance(j, Mapping)]

    # ------------------------------------------------------------------ comments
    def get_comment(self, job_id: str) -> str:
        """The job's Comment exactly as stored ("" when none). JobNotFound if unknown."""
        job_id = _checked_id(job_id)
        lib = self._pyslurm_module()
        if lib is not None:
            with _pyslurm_errors(["pyslurm.Job.load", job_id]):
                return str(lib.Job.load(int(job_id)).comment or "")
        out = self._run("squeue", ["--noheader", "--states=all", "--jobs", job_id, "--format=%k"])
        text = out[:-1] if out.endswith("\n") else out
        return "" if text == "(null)" else text

    def set_comment(self, job_id: str, text: str) -> None:
        """Set the job's whole Comment to ``text`` (printable, at most 1024 bytes).

        Needs root or SlurmUser for another user's job. Raises ValueError for text Slurm
        would refuse, JobFinished when the job has ended, JobNotFound if unknown.
        """
        job_id = _checked_id(job_id)
        _check_comment(text)
        lib = self._pyslurm_module()
        if lib is not None:
            with _pyslurm_errors(["pyslurm.Job.modify", job_id]):
                lib.Job(int(job_id)).modify(lib.JobSubmitDescription(comment=text))
            return
        self._run("scontrol", ["update", f"JobId={job_id}", f"Comment={text}"])

    def set_admin_comment(self, job_id: str, text: str) -> None:
        """Set the job's whole AdminComment to ``text`` in slurmctld (``scontrol update``;
        root or SlurmUser only). ValueError for text Slurm would refuse, JobFinished or
        JobNotFound when slurmctld will not or cannot change the job (then see
        ``set_accounting_admin_comment``)."""
        job_id = _checked_id(job_id)
        _check_comment(text)
        self._run("scontrol", ["update", f"JobId={job_id}", f"AdminComment={text}"])

    def set_accounting_admin_comment(self, job_id: str, text: str) -> None:
        """Set the AdminComment of the job's record in the accounting database (``sacctmgr
        modify job``, which may change it after the job ended; a Slurm administrator only).
        JobNotFound while slurmdbd has no record of the job yet (or any more)."""
        job_id = _checked_id(job_id)
        _check_comment(text)
        args = ["--immediate", "modify", "job", "where", f"jobid={job_id}", "set", f"AdminComment={text}"]
        out = self._run("sacctmgr", args)
        if "nothing modified" in out.lower():
            raise JobNotFound(["sacctmgr", *args], 0, out)

    def accounting_admin_comment(self, job_id: str) -> str:
        """The AdminComment of the job's allocation in the accounting database (``sacct``;
        "" when none). JobNotFound when slurmdbd has no record of the job."""
        job_id = _checked_id(job_id)
        out = self._run("sacct", ["--noheader", "--parsable2", "--allocations", "--allusers",
                                  f"--jobs={job_id}", "--format=JobID,AdminComment"])
        for line in out.splitlines():
            found, sep, text = line.partition("|")
            if sep and found == job_id:
                return text
        raise JobNotFound(["sacct", f"--jobs={job_id}"], 0, "no accounting record")

    # ------------------------------------------------------------------ submit, cancel
    def submit(self, script: str | None = None, *, wrap: str | None = None,
               options: Sequence[str] = (), as_user: str | None = None) -> str:
        """Submit a batch job; its job id. For tests, the lab and the demo.

        Give either ``script`` (the text of a batch script, passed on stdin) or ``wrap``
        (one command line, ``sbatch --wrap``). ``options`` are sbatch options as separate
        arguments (``["--time=1", "--mem=50M"]``). ``as_user`` submits as that user
        through runuser (needs root).
        """
        if (script is None) == (wrap is None):
            raise ValueError("give exactly one of script or wrap")
        args = ["--parsable", *options]
        if wrap is not None:
            args.append(f"--wrap={wrap}")
        out = self._run("sbatch", args, stdin=script, as_user=as_user).strip()
        job_id = out.split(";", 1)[0]
        if not _JOB_ID.match(job_id):
            raise SlurmError(["sbatch", *args], 0, f"unexpected output {out!r}")
        return job_id

    def cancel(self, job_id: str) -> None:
        """Cancel the job (nothing happens to one that has ended). JobNotFound if unknown."""
        self._run("scancel", [_checked_id(job_id)])

    # ------------------------------------------------------------------ pyslurm
    def _pyslurm_module(self) -> ModuleType | None:
        """pyslurm when allowed, importable and matching the running Slurm; else None."""
        if self._pyslurm is False:
            self._pyslurm = None
            reason = self._pyslurm_refusal()
            if reason is None:
                import pyslurm  # optional and version-locked: imported only when it matches
                self._pyslurm = pyslurm
            else:
                log.debug("not using pyslurm: %s; using the Slurm command-line tools", reason)
        return self._pyslurm if isinstance(self._pyslurm, ModuleType) else None

    def _pyslurm_refusal(self) -> str | None:
        if self.use_pyslurm == "never":
            return 'use_pyslurm = "never"'
        try:
            import pyslurm
        except Exception as exc:  # any import failure means: do not use it
            return f"it does not import ({exc})"
        try:
            slurm_version = self.version()
        except SlurmError as exc:
            return f"the Slurm version is unknown ({exc})"
        return pyslurm_mismatch(str(getattr(pyslurm, "__version__", "?")), slurm_version)


def _checked_id(job_id: str) -> str:
    """``job_id`` if it looks like a Slurm job id (``123``, ``123_4``, ``123+1``), else ValueError."""
    job_id = str(job_id).strip()
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return job_id


def _check_comment(text: str) -> None:
    """ValueError unless ``text`` is what Slurm takes as a comment string."""
    if not text.isprintable() or len(text.encode()) > 1024:
        raise ValueError("a Comment must be printable text of at most 1024 bytes")


def _error(command: Sequence[str], returncode: int, message: str) -> SlurmError:
    """The SlurmError subclass that fits what Slurm said."""
    lowered = message.lower()
    if "invalid job id" in lowered:
        return JobNotFound(command, returncode, message)
    if "already finished" in lowered or "already completed" in lowered:
        return JobFinished(command, returncode, message)
    return SlurmError(command, returncode, message)


@contextmanager
def _pyslurm_errors(command: Sequence[str]) -> Iterator[None]:
    """pyslurm's exceptions (RPCError ...) as SlurmError / JobNotFound / JobFinished."""
    try:
        yield
    except ValueError:
        raise
    except Exception as exc:  # pyslurm raises several kinds
        raise _error(command, -1, str(exc)) from exc
