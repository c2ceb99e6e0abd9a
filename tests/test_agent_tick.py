"""The scoring tick's shortcuts give what the plain path gives: graph neighbours kept
from tick to tick, the LSTM on worker threads whatever the torch thread count, and the
publisher's single validation (real PUB/SUB sockets on 127.0.0.1, a real store)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zmq
from modeltools import train_small_models

from nomade import features, wire
from nomade.agent import scoring
from nomade.agent.jobstate import JobState
from nomade.agent.publisher import Publisher
from nomade.ml.inference import Scorer
from nomade.store import Store

torch.set_num_threads(1)
T0 = 1.7e9


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    return Scorer.load(train_small_models(tmp_path_factory.mktemp("models"), seed=5))


def _start(job: str, ts: float, user: str, cpus: int) -> wire.Message:
    return wire.make("job.start", "ctld", 0, {
        "job_id": job, "user": user, "partition": "cpu", "nodes": ["n1"], "req_cpus": cpus,
        "req_mem_bytes": cpus << 30, "req_gpus": 0, "time_limit_s": 7200.0, "start_ts": ts}, ts)


def _sample(job: str, ts: float, k: int) -> wire.Message:
    return wire.make("job.sample", "n1", 0, {
        "job_id": job, "node": "n1", "ts": ts, "alloc_cpus": 4, "cpu_user_s": 30.0 * k * (1 + int(job) % 3),
        "mem_bytes": (1 + k % 5) << 28, "mem_limit_bytes": 8 << 30}, ts)


def _end(job: str, ts: float, state: str) -> wire.Message:
    return wire.make("job.end", "ctld", 0, {"job_id": job, "end_ts": ts, "exit_code": 1, "state": state}, ts)


class _Counting:
    """A real scorer that counts the jobs it searches neighbours for."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer, self.searched = scorer, 0
        self.models, self.version = scorer.models, scorer.version

    def neighbours(self, X: np.ndarray, mask: np.ndarray, start_ts: np.ndarray | None) -> Any:
        self.searched += len(X)
        return self.scorer.neighbours(X, mask, start_ts)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        return self.scorer.score(*args, **kwargs)

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        return self.scorer.explain(*args, **kwargs)


def _ticks(st: JobState) -> Iterator[tuple[float, str]]:
    """Ten ticks 30 s apart over 30 jobs of 3 users, and what happened before each:
    tick 2: job 2 ends (state unknown) and job 98 of its user starts; tick 3: job 1 ends
    failed (the history of every user changes, not as of the others' starts); tick 5:
    job 99 starts; tick 6: job 2's final state arrives (the history as of the start of
    98 and 99 changes); tick 7: job 4 ends."""
    st.apply([_start(str(i), T0 - 600 * (i % 4), f"u{i % 3}", 1 + i % 8) for i in range(30)])
    events = {2: ([_end("2", T0 + 50, None), _start("98", T0 + 55, "u2", 4)], "job 2 ended, 98 started"),
              3: ([_end("1", T0 + 89, "FAILED")], "job 1 ended"),
              5: ([_start("99", T0 + 145, "u2", 16)], "job 99 started"),
              7: ([_end("4", T0 + 209, "COMPLETED")], "job 4 ended")}
    for tick in range(10):
        now = T0 + 30.0 * tick
        msgs, event = events.get(tick, ([], "samples"))
        st.apply(msgs)
        if tick == 6:
            st.final_state("2", "FAILED")
            event = "job 2's final state"
        st.apply([_sample(j, now, tick) for j in list(st.running)])
        yield now, event


def test_kept_neighbours_are_a_fresh_search_and_only_changes_are_searched(scorer: Scorer) -> None:
    st, kept, counting = JobState(horizon_s=10_000.0), scoring.KeptNeighbours(), _Counting(scorer)
    searched = []
    for now, event in _ticks(st):
        inputs = scoring.tick_inputs(st, now, 8, 30.0)
        before = counting.searched
        got = kept.neighbours(counting, inputs)
        searched.append(counting.searched - before)
        fresh = scoring.search_neighbours(scorer, inputs.start_X, inputs.start_ts)
        for name in ("idx", "sim", "valid"):
            np.testing.assert_array_equal(getattr(got, name), getattr(fresh, name), err_msg=f"{name} after {event}")
        # the whole tick with kept neighbours publishes what it publishes without
        with_kept = scoring.score(inputs, scorer, kept=scoring.KeptNeighbours(), explain_min_risk=1.1)
        plain = scoring.score(inputs, scorer, explain_min_risk=1.1)
        assert with_kept == plain
    assert searched == [30, 0, 1, 0, 0, 1, 2, 0, 0, 0]
    # another model set (a reload): every job again
    other = _Counting(scorer)
    kept.neighbours(other, scoring.tick_inputs(st, T0 + 300.0, 8, 30.0))
    assert other.searched == len(st.scorable())


def test_neighbours_are_found_by_the_start_time_features_as_of_the_start(scorer: Scorer) -> None:
    """As training finds them (``train.prepare``'s ``ref_start_X``): the user's history
    as of the job's start, not as of the tick."""
    st = JobState(horizon_s=10_000.0)
    now = [t for t, _ in _ticks(st)][-1]   # every tick run, the state as of the last
    inputs = scoring.tick_inputs(st, now, 8, 30.0)
    jobs = scoring._job_table(inputs.jobs, st)
    rows = np.arange(len(inputs.jobs))
    X, mask = features.asof_features(jobs, features.SampleTable.empty(), jobs.start_ts[rows], rows)
    start = np.arange(features.N_FEATURES) < features.N_START
    np.testing.assert_array_equal(inputs.start_X, np.where(mask & start, X, 0.0).astype(np.float32))
    user_rate = features.FEATURES.index("user_fail_rate")
    assert (inputs.start_X[:, user_rate] != inputs.X[:, user_rate]).any()   # history moved on since


def test_scores_are_the_same_with_one_or_two_torch_threads_and_the_setting_is_kept(scorer: Scorer) -> None:
    st = JobState(horizon_s=10_000.0)
    now = [t for t, _ in _ticks(st)][-1]   # every tick run, the state as of the last
    inputs = scoring.tick_inputs(st, now, 8, 30.0)
    lstm = scorer.models["lstm"]
    expect = lstm.predict_proba(scorer.normalizers["lstm"].transform_sequences(inputs.S), inputs.lengths)
    got = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            got[threads] = scorer.score(inputs.X, inputs.mask, inputs.S, inputs.lengths, inputs.start_ts)
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(1)
    np.testing.assert_array_equal(got[1].parts[:, 1], expect)
    np.testing.assert_array_equal(got[1].parts, got[2].parts)
    np.testing.assert_array_equal(got[1].contributions, got[2].contributions)
    # no sequences: no LSTM part, the others still there
    none = scorer.score(inputs.X, inputs.mask, None, None, inputs.start_ts, explain=False)
    assert np.isnan(none.parts[:, 1]).all() and np.isfinite(none.parts[:, [0, 2]]).all()


def _body(job: str, risk: float, **extra: Any) -> dict[str, Any]:
    level = wire.level_for(risk) if 0 <= risk <= 1 else "low"
    return {"job_id": job, "user": "alice", "partition": "cpu", "nodes": ["n1"], "risk": risk,
            "level": level, "parts": {"gnn": 0.5, "lstm": None, "autoencoder": 0.25},
            "factors": [], "ts": T0, "model_version": "v1", **extra}


def test_publisher_sends_and_stores_valid_bodies_and_skips_refused_ones(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)   # XPUB: a PUB that shows subscriptions
    for s in (pub, sub):
        s.setsockopt(zmq.LINGER, 0)
    try:
        pub.bind("tcp://127.0.0.1:*")
        sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
        sub.subscribe(b"prediction.")
        assert pub.poll(10_000) and pub.recv() == b"\x01prediction.", "the subscription did not arrive"
        lacking = _body("3", 0.9)
        del lacking["model_version"]
        bodies = [_body("1", 0.1), _body("2", 1.5), lacking, _body("4", 0.5, extra="x")]
        with Store(tmp_path / "a.db") as store, caplog.at_level(logging.ERROR):
            sent = Publisher(pub, store, "agent").publish(bodies)
            stored = store.latest_predictions()
        assert [m.body["job_id"] for m in sent] == ["1", "3"] and [m.seq for m in sent] == [0, 1]
        assert sent[1].body["model_version"] is None and set(sent[1].body) == set(wire.FIELDS["prediction"])
        assert "job 2" in caplog.text and "job 4" in caplog.text
        assert {j: p.level for j, p in stored.items()} == {"1": "low", "3": "critical"}
        got = []
        while sub.poll(2000):
            topic, frame = sub.recv_multipart()
            got.append((topic, wire.decode(frame)))
            if len(got) == 2:
                break
        assert [t for t, _ in got] == [b"prediction.low", b"prediction.critical"]
        assert [m for _, m in got] == sent
    finally:
        pub.close()
        sub.close()
        ctx.term()
