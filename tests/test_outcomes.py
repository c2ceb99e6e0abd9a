"""nomade.agent.outcomes: the final-state tracker as a pure state machine (no Slurm, no store)."""

from __future__ import annotations

from nomade.agent.outcomes import Final, FinalStateTracker, GiveUp

END = 1000.0


def tracker() -> FinalStateTracker:
    return FinalStateTracker(first_delay_s=2, max_delay_s=16, give_up_after_s=60)


def test_first_ask_two_seconds_after_the_end_in_one_batch() -> None:
    t = tracker()
    t.job_ended("1", END)
    t.job_ended("2", END + 1)
    assert t.due(END + 1.9) == []
    assert t.due(END + 2) == ["1"]
    assert t.due(END + 3) == ["1", "2"]
    assert t.next_due_ts() == END + 2


def test_backoff_doubles_per_job_and_is_capped() -> None:
    t = tracker()
    t.job_ended("1", END)
    now, asked = END, []
    while now < END + 59:
        if t.due(now):
            asked.append(now - END)
            assert t.answered(now, {"1": ("COMPLETING", 0)}) == []
        now += 0.5
    assert asked == [2, 6, 14, 30, 46]  # +4, +8, +16, then capped at 16


def test_only_a_final_state_settles_a_job() -> None:
    t = tracker()
    t.job_ended("7", END)
    assert t.answered(END + 2, {"7": ("COMPLETING", None)}) == []
    assert t.answered(END + 6, {"7": None}) == []
    assert t.answered(END + 14, {"7": ("TIMEOUT", 0)}) == [Final("7", "TIMEOUT", 0, 1)]
    assert t.watching() == [] and t.due(END + 1000) == []


def test_state_spellings_and_labels() -> None:
    t = tracker()
    for j in "abc":
        t.job_ended(j, END)
    got = t.answered(END + 2, {"a": ("COMPLETED", 0), "b": ("cancelled by 0", None),
                               "c": ("OUT_OF_MEMORY", 0)})
    assert got == [Final("a", "COMPLETED", 0, 0), Final("b", "CANCELLED", None, 1),
                   Final("c", "OUT_OF_MEMORY", 0, 1)]


def test_give_up_after_the_bound_with_a_reason() -> None:
    t = tracker()
    t.job_ended("9", END)
    decisions: list[Final | GiveUp] = []
    now = END
    while not decisions and now < END + 1000:
        if t.due(now):
            decisions = t.answered(now, {"9": ("COMPLETING", None)})
        now += 1
    [give_up] = decisions
    assert isinstance(give_up, GiveUp) and give_up.job_id == "9"
    assert 59 <= now - END <= 62, "the last ask is at the bound, not one backoff later"
    assert "COMPLETING" in give_up.reason and "60 s" in give_up.reason
    assert t.watching() == []


def test_a_settled_job_is_not_watched_again() -> None:
    t = tracker()
    t.job_ended("1", END)
    t.answered(END + 2, {"1": ("FAILED", 3)})
    t.job_ended("1", END)  # the store still lists it until the state is written
    assert t.watching() == []


def test_failed_query_backs_off_every_asked_job() -> None:
    t = tracker()
    t.job_ended("1", END)
    t.job_ended("2", END)
    assert t.query_failed(END + 2, ["1", "2"]) == []
    assert t.due(END + 5) == [] and t.due(END + 6) == ["1", "2"]
    decisions = t.query_failed(END + 60, ["1", "2"])
    assert [d.job_id for d in decisions] == ["1", "2"]
    assert all(isinstance(d, GiveUp) and "query failed" in d.reason for d in decisions)


def test_answers_for_unwatched_jobs_are_ignored_and_batch_is_bounded() -> None:
    t = FinalStateTracker(max_batch=3)
    for j in range(5):
        t.job_ended(str(j), END + j)
    assert t.due(END + 100) == ["0", "1", "2"]
    assert t.answered(END + 100, {"x": ("COMPLETED", 0)}) == []


def test_job_ended_is_idempotent() -> None:
    t = tracker()
    t.job_ended("1", END)
    t.answered(END + 2, {"1": None})
    t.job_ended("1", END)  # seen again in the store: keeps its backoff
    assert t.due(END + 5) == [] and t.due(END + 6) == ["1"]


def test_poll_once_reads_only_the_give_up_window_and_forgets_the_rest(tmp_path) -> None:
    """A real store with 50 ended jobs: only those that ended within give_up_after_s, at
    most max_jobs, are read and asked about; the tracker remembers nothing else."""
    from nomade import wire
    from nomade.agent.outcomes import poll_once
    from nomade.store import Store

    asked: list[list[str]] = []

    class Slurm:
        def final_states(self, job_ids: list[str]) -> dict:
            asked.append(list(job_ids))
            return dict.fromkeys(job_ids)

    now = 10_000.0
    ends = [wire.make("job.end", "ctld", 0, {"job_id": str(j), "end_ts": now - 10 * j}, now)
            for j in range(1, 51)]
    t = FinalStateTracker(first_delay_s=2, max_delay_s=16, give_up_after_s=100, max_jobs=5)
    with Store(tmp_path / "s.db") as store:
        store.write_messages(ends)
        poll_once(t, store, Slurm(), now)
    assert asked == [["10", "9", "8", "7", "6"]]       # the 5 earliest ended within 100 s
    assert t.full and sorted(t.watching(), key=int) == ["6", "7", "8", "9"]   # 10: given up
