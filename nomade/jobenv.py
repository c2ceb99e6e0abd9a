"""One mapping from a Slurm hook environment to typed job events (standard library only).

The hooks and the collector read Slurm's variables here and nowhere else. Input is a
hook record from the spool (``NOMADE_HOOK``, ``NOMADE_TS`` and the hook's variables)
or ``os.environ``; output is the body of a ``job.start`` or ``job.end`` wire message
(docs/ARCHITECTURE.md, "Wire"). A value that is missing or does not parse becomes
``None`` (unknown, never 0); no input raises.

Which hook knows what (``/work/shared/slurm/README.md``): Prolog/Epilog (on the node)
see ``SLURM_JOB_ID/_UID/_USER/_PARTITION``, ``SLURM_CPUS_PER_NODE``,
``SLURM_JOB_NUM_NODES``, ``SLURMD_NODENAME``; the slurmctld hooks add ``SLURM_JOB_NODELIST``
and ``SLURM_JOB_ACCOUNT``; the epilogs add ``SLURM_JOB_EXIT_CODE`` (raw wait status) and
``SLURM_JOB_EXIT_CODE2`` (``exit:signal``). No hook env holds the final state except
``jobcomp/script`` (``JOBSTATE``, ``EXITCODE``, ``START``, ``END``, ``SUBMIT``, ``LIMIT``
in minutes or [D-]HH:MM:SS, ``NODES``, ``PROCS``, ``UID``, ``USERNAME``, ``PARTITION``, ``ACCOUNT``).

Job ids are Slurm's own id as a string (``SLURM_JOB_ID``/``JOBID``), also for array
elements, because that is the id in cgroup paths and in every hook.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping

from nomade import jobrecord, slurmfmt
from nomade.jobrecord import Body

HOOKS = ("prolog", "prolog_slurmctld", "epilog", "epilog_slurmctld", "jobcomp")
START_HOOKS = frozenset({"prolog", "prolog_slurmctld"})
END_HOOKS = frozenset({"epilog", "epilog_slurmctld", "jobcomp"})
_CONTEXT_TO_HOOK = {"prolog_slurmd": "prolog", "epilog_slurmd": "epilog",
                    "prolog_slurmctld": "prolog_slurmctld", "epilog_slurmctld": "epilog_slurmctld"}
_JOB_ID = re.compile(r"[0-9]{1,12}(?:[_+][0-9]{1,12})?")
_STATE = re.compile(r"[A-Z][A-Z_]{1,30}")
_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,256}")
_CPUS_PART = re.compile(r"([0-9]{1,7})(?:\(x([0-9]{1,7})\))?")


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def to_int(text: str | None, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
    """A decimal integer within [lo, hi], else None."""
    if text is None or not re.fullmatch(r"[0-9]{1,19}", text.strip()):
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def to_ts(text: str | None) -> float | None:
    """POSIX seconds (``1700000000`` or ``1700000000.123456789``) > 0, else None."""
    if text is None or not re.fullmatch(r"[0-9]{1,12}(?:\.[0-9]{1,9})?", text.strip()):
        return None
    value = float(text)
    return value if value > 0 else None


def to_name(text: str | None) -> str | None:
    """A user/partition/account name of safe characters, else None."""
    return text if text is not None and _NAME.fullmatch(text) else None


def expand_hostlist(text: str | None) -> list[str] | None:
    """Expand a Slurm hostlist (``n[1-3,5],gpu01``, ``r[1-2]n[01-02]``); None if invalid."""
    try:
        return slurmfmt.expand_hostlist(text) or None if text else None
    except ValueError:
        return None


def total_cpus(text: str | None) -> int | None:
    """Sum of a ``SLURM_CPUS_PER_NODE`` list (``2(x3),1`` -> 7), else None."""
    if not text:
        return None
    total = 0
    for part in text.split(","):
        m = _CPUS_PART.fullmatch(part.strip())
        if not m:
            return None
        total += int(m.group(1)) * int(m.group(2) or 1)
    return total


def exit_and_signal(text: str | None) -> tuple[int | None, int | None]:
    """``"3:0"`` -> (3, 0); a raw wait status (``768`` -> (3, 0), ``253`` -> (0, 125))."""
    if not text:
        return None, None
    code, sep, sig = text.partition(":")
    if sep:
        return to_int(code, 0, 255), to_int(sig, 0, 255)
    status = to_int(text, 0, 0xFFFF)
    if status is None:
        return None, None
    return (status >> 8) & 0xFF, status & 0x7F


time_limit_s = slurmfmt.time_limit_s


def hook_of(env: Mapping[str, str]) -> str | None:
    """Which hook wrote this record (``NOMADE_HOOK``, else Slurm's own hints)."""
    hook = env.get("NOMADE_HOOK")
    if hook in HOOKS:
        return hook
    context = _CONTEXT_TO_HOOK.get(env.get("SLURM_SCRIPT_CONTEXT", ""))
    if context:
        return context
    return "jobcomp" if "JOBSTATE" in env else None


def job_id(env: Mapping[str, str]) -> str | None:
    """The job id, or None when absent or malformed."""
    value = _first(env, "SLURM_JOB_ID", "JOBID")
    return value if value is not None and _JOB_ID.fullmatch(value) else None


def job_start(env: Mapping[str, str], source: str) -> Body | None:
    """``job.start`` body from a start hook's (or jobcomp's) variables; None without a job id."""
    jid = job_id(env)
    if jid is None:
        return None
    nodes = expand_hostlist(_first(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST", "NODES"))
    num_nodes = to_int(_first(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "NODECNT"), 1, slurmfmt.MAX_HOSTS)
    cpus = total_cpus(_first(env, "SLURM_JOB_CPUS_PER_NODE", "SLURM_CPUS_PER_NODE"))
    cpus = cpus if cpus is not None else to_int(env.get("PROCS"), 1)
    return jobrecord.start_body(
        job_id=jid,
        user=to_name(_first(env, "SLURM_JOB_USER", "USERNAME")),
        uid=to_int(_first(env, "SLURM_JOB_UID", "UID"), 0, 2**32 - 1),
        partition=to_name(_first(env, "SLURM_JOB_PARTITION", "PARTITION")),
        account=to_name(_first(env, "SLURM_JOB_ACCOUNT", "ACCOUNT")),
        nodes=nodes,
        num_nodes=num_nodes if num_nodes is not None else (len(nodes) if nodes else None),
        req_cpus=cpus,
        req_mem_bytes=_req_mem_bytes(env, num_nodes, cpus),
        req_gpus=_req_gpus(env),
        time_limit_s=time_limit_s(env.get("LIMIT")),
        submit_ts=to_ts(env.get("SUBMIT")),
        start_ts=to_ts(_first(env, "SLURM_JOB_START_TIME", "START", "NOMADE_TS")),
        source=source,
        cluster=to_name(_first(env, "SLURM_CLUSTER_NAME", "CLUSTER_NAME", "CLUSTER")),
    )


def _req_mem_bytes(env: Mapping[str, str], num_nodes: int | None, cpus: int | None) -> int | None:
    """Whole-job request: ``SLURM_MEM_PER_NODE`` x nodes or ``SLURM_MEM_PER_CPU`` x CPUs (MB)."""
    per_node = to_int(env.get("SLURM_MEM_PER_NODE"), 1)
    if per_node is not None and num_nodes is not None:
        return per_node * num_nodes * 2**20
    per_cpu = to_int(env.get("SLURM_MEM_PER_CPU"), 1)
    if per_cpu is not None and cpus is not None:
        return per_cpu * cpus * 2**20
    return None


def _req_gpus(env: Mapping[str, str]) -> int | None:
    count = env.get("SLURM_GPUS", "").rpartition(":")[2]
    if to_int(count) is not None:
        return to_int(count)
    indices = env.get("SLURM_JOB_GPUS")
    if indices and all(to_int(i) is not None for i in indices.split(",")):
        return len(indices.split(","))
    return None


def job_end(env: Mapping[str, str], source: str) -> Body | None:
    """``job.end`` body from an end hook's variables; None without a job id."""
    jid = job_id(env)
    if jid is None:
        return None
    if source == "jobcomp":
        code, sig = exit_and_signal(env.get("EXITCODE"))
        state = env.get("JOBSTATE", "").split(" ")[0]
        end_ts = to_ts(env.get("END")) or to_ts(env.get("NOMADE_TS"))
    else:
        code, sig = exit_and_signal(env.get("SLURM_JOB_EXIT_CODE2"))
        if code is None and sig is None:
            code, sig = exit_and_signal(env.get("SLURM_JOB_EXIT_CODE"))
        state = ""
        end_ts = to_ts(_first(env, "SLURM_JOB_END_TIME", "NOMADE_TS"))
    return jobrecord.end_body(job_id=jid, end_ts=end_ts, exit_code=code, signal=sig,
                               state=state if _STATE.fullmatch(state) else None, source=source)


def events(env: Mapping[str, str]) -> list[tuple[str, Body]]:
    """The wire (kind, body) pairs a hook record stands for, in order; [] if it says nothing.

    Start hooks give ``job.start``; epilogs give ``job.end``; jobcomp gives both (it
    knows the start, limits and final state of a job no node hook may have reported).
    """
    hook = hook_of(env)
    out: list[tuple[str, Body]] = []
    if hook in START_HOOKS or hook == "jobcomp":
        start = job_start(env, hook)
        if start is not None:
            out.append(("job.start", start))
    if hook in END_HOOKS:
        end = job_end(env, hook)
        if end is not None:
            out.append(("job.end", end))
    return out


def from_environ(hook: str) -> dict[str, str]:
    """This process's environment as a hook record, stamped now (for Python callers)."""
    record = dict(os.environ)
    record["NOMADE_HOOK"] = hook
    record["NOMADE_TS"] = f"{time.time():.9f}"
    return record


__all__ = ["HOOKS", "events", "exit_and_signal", "expand_hostlist",
           "from_environ", "hook_of", "job_end", "job_id", "job_start", "time_limit_s",
           "to_int", "to_name", "to_ts", "total_cpus"]
