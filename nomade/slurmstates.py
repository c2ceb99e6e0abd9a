"""Slurm job states: which are final, and the training label of each final one.

Standard library only. The label is the one of DESIGN.md: COMPLETED is 0; FAILED,
TIMEOUT, CANCELLED, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL, DEADLINE and PREEMPTED are 1.
The exact state is always kept beside the label.

Slurm spells a state in several ways, and ``normalise`` turns each into one upper-case
name: ``"cancelled by 1234"`` (scontrol, sacct), ``"CANCELLED+"`` (sacct, truncated),
``["CANCELLED"]`` or ``["COMPLETED", "COMPLETING"]`` (``squeue --json`` of newer Slurm:
a base state followed by flags), ``"JOB_CANCELLED"`` (the C enum names of jobcomp/data
plugins).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

#: Final states and their label (0 = success, 1 = failure).
LABELS: dict[str, int] = {
    "COMPLETED": 0,
    "FAILED": 1,
    "TIMEOUT": 1,
    "CANCELLED": 1,
    "OUT_OF_MEMORY": 1,
    "NODE_FAIL": 1,
    "BOOT_FAIL": 1,
    "DEADLINE": 1,
    "PREEMPTED": 1,
}

#: Final states.
FINAL_STATES: frozenset[str] = frozenset(LABELS)

#: States and state flags of a job that has not finished (or is finishing: its final
#: state is not settled while one of these is shown).
ACTIVE_STATES: frozenset[str] = frozenset({
    "PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "SPECIAL_EXIT", "POWER_UP_NODE", "RESV_DEL_HOLD", "UPDATE_DB", "LAUNCH_FAILED",
    "RECONFIG_FAIL", "REVOKED",
})


@functools.lru_cache(maxsize=4096)  # a history spells its states a few ways, millions of times
def _one(state: str) -> str:
    """Normalise one state word: strip, upper-case, drop ``by ...``, ``+`` and ``JOB_``."""
    word = state.strip().upper()
    word = word.split(" BY ", 1)[0].split()[0] if word else ""
    word = word.rstrip("+")
    if word.startswith("JOB_") and word[4:] in FINAL_STATES | ACTIVE_STATES:
        word = word[4:]
    return word


def normalise(state: str | Iterable[str] | None) -> str | None:
    """Return the one upper-case state name that ``state`` stands for, or None if empty.

    A list (``squeue --json``: base state then flags) gives its first flag that shows the
    job is not settled (``COMPLETING``, ``REQUEUED`` ...) when there is one, else its base
    state. Unknown names come back normalised but unchanged otherwise; ``is_final`` and
    ``label_for`` treat them as not final.
    """
    if state is None:
        return None
    if isinstance(state, str):
        return _one(state) or None
    words = [w for w in (_one(s) for s in state if isinstance(s, str)) if w]
    if not words:
        return None
    unsettled = [w for w in words[1:] if w in ACTIVE_STATES]
    return unsettled[0] if unsettled else words[0]


def is_final(state: str | Iterable[str] | None) -> bool:
    """True when ``state`` (any spelling ``normalise`` accepts) is a final job state."""
    return normalise(state) in FINAL_STATES


def label_for(state: str | Iterable[str] | None) -> int | None:
    """The training label of ``state``: 0 for COMPLETED, 1 for a failure, None if not final."""
    name = normalise(state)
    return LABELS.get(name) if name is not None else None
