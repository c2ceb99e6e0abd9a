"""Slurm's value formats, parsed in one place (nomade.slurmfmt)."""

from __future__ import annotations

import pytest

from nomade import jobenv, slurm, slurmfmt
from nomade.slurmfmt import duration_s, expand_hostlist, number, time_limit_s


def test_hostlists_expand_with_padding_and_products() -> None:
    assert expand_hostlist("n[1-3,5],gpu[01-02],login") == ["n1", "n2", "n3", "n5", "gpu01", "gpu02", "login"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("n[08-10]") == ["n08", "n09", "n10"]
    assert expand_hostlist("") == []


@pytest.mark.parametrize("bad", ["n[1-", "n]1[", "n[3-1]", "n[a-b]", "n[[1]]", "n[]", "a b", "n;rm", "n[1-2]$x"])
def test_bad_hostlists_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(bad)


def test_hostlists_are_capped_in_every_shape() -> None:
    """One bound for every reader: a hook's, squeue's, an accounting file's."""
    assert len(expand_hostlist("n[1-100000]")) == slurmfmt.MAX_HOSTS
    for huge in ("n[1-100001]", "r[1-1000]n[1-1000]", "a[1-60000],b[1-60000]"):
        with pytest.raises(ValueError, match="100000"):
            expand_hostlist(huge)
    assert jobenv.expand_hostlist("r[1-1000]n[1-1000]") is None
    assert slurm.expand_hostlist is expand_hostlist


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("10", 600.0), ("05:30", 330.0), ("01:02:03", 3723.0), ("2-03", 183600.0),
    ("2-03:04", 183840.0), ("2-03:04:05", 183845.0), (" 1:00:00 ", 3600.0)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "Partition_Limit", "INVALID", "", None, "1:2:3:4", "-5", "1-", "x"])
def test_what_is_not_a_duration_is_none(text: str | None) -> None:
    assert duration_s(text) is None and time_limit_s(text) is None


def test_a_zero_time_limit_is_no_limit_but_a_zero_duration_is_zero() -> None:
    assert time_limit_s("0") is None and time_limit_s("00:00:00") is None
    assert duration_s("00:00:00") == 0.0
    assert time_limit_s("1-00:00:00") == 86400.0
    assert jobenv.time_limit_s is time_limit_s


@pytest.mark.parametrize(("value", "expected"), [
    (5, 5.0), (2.5, 2.5), ({"set": True, "infinite": False, "number": 7}, 7.0),
    ({"set": False, "number": 7}, None), ({"set": True, "infinite": True, "number": 0}, None),
    (0xFFFFFFFE, None), (0xFFFFFFFFFFFFFFFE, None), (None, None), (True, None), ("5", None)])
def test_json_numbers(value: object, expected: float | None) -> None:
    assert number(value) == expected
