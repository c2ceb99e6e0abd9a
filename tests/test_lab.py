"""The lab's job plan (``nomade.tools.lab``): exact archetype shares, users, same requests."""

from __future__ import annotations

from collections import Counter

import pytest

from nomade.tools import lab


@pytest.mark.parametrize("n", [1, 3, 7, 36, 90, 101])
def test_counts_apportion_the_weights_exactly(n: int) -> None:
    counts = lab.archetype_counts(n)
    assert sum(counts.values()) == n and set(counts) == set(lab.ARCHETYPES)
    total = sum(w for _, w in lab.ARCHETYPES.values())
    for a, (_, w) in lab.ARCHETYPES.items():
        assert abs(counts[a] - n * w / total) < 1, (a, counts[a], n * w / total)


def test_a_plan_holds_those_counts_over_all_users_in_any_order() -> None:
    users = ["u1", "u2", "u3", "u4"]
    jobs = lab.plan(36, users, seed=5)
    assert Counter(j.archetype for j in jobs) == Counter(lab.archetype_counts(36))
    assert {j.user for j in jobs} <= set(users) and len({j.user for j in jobs}) > 1
    assert all(j.expected_state == lab.ARCHETYPES[j.archetype][0] for j in jobs)
    assert [j.archetype for j in jobs] != sorted(j.archetype for j in jobs)     # shuffled
    assert jobs == lab.plan(36, users, seed=5) and jobs != lab.plan(36, users, seed=6)
    # only runtime behaviour and history may tell outcomes apart: requests come from one pool
    requests = {a: {j.options for j in jobs if j.archetype == a} for a in ("leak", "compute")}
    pool = {o for opts in requests.values() for o in opts}
    assert all(o[2:] == ("--cpus-per-task=1", "--job-name=lab") for o in pool)
