"""nomade.agent.backoff: the per-job batched-query backoff both Slurm trackers share (pure)."""

from __future__ import annotations

from nomade.agent.backoff import Backoff

T0 = 1000.0


def backoff(**kw: float) -> Backoff:
    settings: dict = dict(first_delay_s=2, max_delay_s=8, give_up_after_s=30, max_batch=1000)
    settings.update(kw)
    return Backoff(**settings)


def ask_times(b: Backoff, job_id: str, until: float) -> list[float]:
    """When ``job_id`` is due, stepping 0.5 s, each ask unhelpful; ends when it gives up."""
    asked, now = [], T0
    while now < until and b.get(job_id) is not None:
        if job_id in b.due(now):
            asked.append(now - T0)
            b.retry_later(job_id, now, "COMPLETING", answered=True)
        now += 0.5
    return asked


def test_due_at_once_then_doubling_capped_until_the_bound() -> None:
    b = backoff()
    b.add("1", T0)
    assert b.next_due_ts() == T0
    assert ask_times(b, "1", T0 + 100) == [0, 2, 6, 14, 22, 30]   # waits 2, 4, 8, 8, 8


def test_wait_first_delays_the_first_ask_and_doubling_follows_it() -> None:
    b = backoff()
    b.add("1", T0, wait_first=True)
    assert b.due(T0 + 1.9) == [] and b.next_due_ts() == T0 + 2
    assert ask_times(b, "1", T0 + 100) == [2, 6, 14, 22, 30]      # waits 2, 4, 8, 8, 8


def test_give_up_returns_the_final_watch_and_settles() -> None:
    b = backoff(give_up_after_s=5)
    b.add("1", T0)
    assert b.retry_later("1", T0, "not listed", answered=True) is None
    assert b.retry_later("1", T0 + 2, "query failed", answered=False) is None
    assert b.next_due_ts() == T0 + 5, "the last ask is at the bound, not one backoff later"
    gone = b.retry_later("1", T0 + 5, "not listed", answered=True)
    assert gone is not None
    assert (gone.origin_ts, gone.attempts, gone.last_seen) == (T0, 2, "not listed")
    assert b.watching() == [] and b.next_due_ts() is None
    b.add("1", T0 + 6)
    assert b.watching() == [], "a settled job is not watched again"


def test_add_is_idempotent_and_settled_jobs_stay_settled() -> None:
    b = backoff()
    b.add("1", T0)
    b.retry_later("1", T0, "x", answered=True)
    b.add("1", T0 + 1)                       # seen again: keeps its backoff
    assert b.due(T0 + 1.9) == [] and b.due(T0 + 2) == ["1"]
    b.settle("1")
    b.add("1", T0 + 3)
    assert b.watching() == [] and b.due(T0 + 100) == []


def test_due_is_earliest_first_and_bounded_by_max_batch() -> None:
    b = backoff(max_batch=2)
    for j, ts in (("c", T0 + 2), ("a", T0 + 1), ("b", T0)):
        b.add(j, ts)
    assert b.due(T0 + 0.5) == ["b"]
    assert b.due(T0 + 10) == ["b", "a"]


def test_keep_only_forgets_others_and_reopen_lets_a_settled_job_back() -> None:
    b = backoff()
    for j in "123":
        b.add(j, T0)
    b.settle("1")
    b.keep_only({"1", "2"})
    assert b.watching() == ["2"]
    b.add("1", T0 + 1)
    assert b.watching() == ["2"], "still settled while kept"
    b.reopen(["1"])
    b.add("1", T0 + 1)
    assert sorted(b.watching()) == ["1", "2"]
    b.keep_only(set())
    b.add("3", T0 + 2)                       # forgotten, seen again: starts afresh
    assert b.watching() == ["3"] and b.due(T0 + 2) == ["3"]


def test_failed_query_backs_off_watched_jobs_uncounted_and_returns_the_given_up() -> None:
    b = backoff(give_up_after_s=10)
    b.add("1", T0)
    b.add("2", T0 + 5)
    assert b.query_failed(T0, ["1", "x"]) == []                  # "x" is not watched
    assert b.due(T0 + 1.9) == [] and b.due(T0 + 2) == ["1"]
    [(job_id, watch)] = b.query_failed(T0 + 10, ["1", "2"])
    assert job_id == "1" and (watch.attempts, watch.last_seen) == (0, "query failed")
    assert b.watching() == ["2"] and b.get("2") is not None and b.get("2").attempts == 0
