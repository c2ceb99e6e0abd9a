"""Final states and labels: every spelling Slurm's tools give, and the label table of DESIGN."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomade import slurmstates

FAILURES = ["FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"]
NOT_FINAL = ["PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED",
             "REQUEUED", "RESIZING", "REQUEUE_HOLD", "SIGNALING", "STAGE_OUT"]


def test_completed_is_the_only_success() -> None:
    assert slurmstates.label_for("COMPLETED") == 0
    assert slurmstates.is_final("COMPLETED")


@pytest.mark.parametrize("state", FAILURES)
def test_each_failure_state_is_final_with_label_1(state: str) -> None:
    assert slurmstates.is_final(state)
    assert slurmstates.label_for(state) == 1


@pytest.mark.parametrize("state", NOT_FINAL)
def test_active_states_are_not_final_and_have_no_label(state: str) -> None:
    assert not slurmstates.is_final(state)
    assert slurmstates.label_for(state) is None


@pytest.mark.parametrize(("raw", "name"), [
    ("CANCELLED by 1234", "CANCELLED"),     # scontrol / sacct name who cancelled
    ("cancelled BY 0", "CANCELLED"),
    ("CANCELLED+", "CANCELLED"),            # sacct truncates long states with '+'
    ("  timeout\n", "TIMEOUT"),
    ("JOB_OUT_OF_MEMORY", "OUT_OF_MEMORY"),  # C enum names
    ("Node_Fail", "NODE_FAIL"),
    (["CANCELLED"], "CANCELLED"),           # squeue --json (newer Slurm): a list
    (("FAILED",), "FAILED"),
    (["COMPLETED", "COMPLETING"], "COMPLETING"),  # epilog still running: not settled
    (["PENDING", "REQUEUED"], "REQUEUED"),
    (["TIMEOUT", "SOMETHING_NEW"], "TIMEOUT"),    # an unknown flag does not hide the base
])
def test_normalise_spellings(raw: object, name: str) -> None:
    assert slurmstates.normalise(raw) == name  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [None, "", "   ", [], [""], [None]])
def test_normalise_empty_is_none(raw: object) -> None:
    assert slurmstates.normalise(raw) is None  # type: ignore[arg-type]
    assert slurmstates.label_for(raw) is None  # type: ignore[arg-type]
    assert not slurmstates.is_final(raw)  # type: ignore[arg-type]


def test_unknown_state_is_kept_but_not_final() -> None:
    assert slurmstates.normalise("weird_new_state") == "WEIRD_NEW_STATE"
    assert slurmstates.label_for("WEIRD_NEW_STATE") is None


def test_label_table_matches_design() -> None:
    assert slurmstates.LABELS == {"COMPLETED": 0, **{s: 1 for s in FAILURES}}
    assert not slurmstates.FINAL_STATES & slurmstates.ACTIVE_STATES


@given(st.sampled_from(sorted(slurmstates.FINAL_STATES)), st.sampled_from(["", " by 7", "+"]),
       st.sampled_from([str.upper, str.lower, str.title]))
def test_any_spelling_of_a_final_state_keeps_its_label(base: str, suffix: str, case) -> None:
    assert slurmstates.label_for(case(base) + suffix) == slurmstates.LABELS[base]


@given(st.text())
def test_normalise_never_raises_on_text(text: str) -> None:
    name = slurmstates.normalise(text)
    assert name is None or (name == name.upper() and " " not in name)
