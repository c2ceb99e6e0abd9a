"""nomade.jobrecord: the one declaration of the job events' fields, and the bodies made from it."""

import pytest

from nomade import jobenv, jobrecord, traces, wire
from nomade.store.records import _START_FILL, JOB_FIELDS


def test_bodies_have_every_field_in_wire_order_and_refuse_unknown_keys() -> None:
    start = jobrecord.start_body(job_id="7", user="ana", source="prolog")
    assert tuple(start) == wire.FIELDS["job.start"]
    assert start["uid"] is None and start["user"] == "ana"
    assert tuple(jobrecord.end_body(job_id="7")) == wire.FIELDS["job.end"]
    with pytest.raises(ValueError, match=r"job.start has no field \['usr'\]"):
        jobrecord.start_body(job_id="7", usr="ana")


def test_the_wire_jobenv_traces_and_store_read_the_one_declaration() -> None:
    assert [(n, t, o) for n, t, o in wire.SCHEMAS["job.start"]] == [
        (f.name, wire.values.BY_NAME[f.type], f.nullable) for f in jobrecord.START]
    assert traces.START_KEYS == jobrecord.START_FIELDS and traces.END_KEYS == jobrecord.END_FIELDS
    body = jobenv.job_start({"SLURM_JOB_ID": "12", "SLURM_JOB_USER": "ana"}, "prolog")
    assert body is not None and tuple(body) == jobrecord.START_FIELDS
    wire.make("job.start", "n1", 1, body)   # a body jobenv makes is a valid wire body
    assert set(_START_FILL) == set(jobrecord.START_FIELDS) & set(JOB_FIELDS) - {
        "job_id", "nodes", "submit_ts", "start_ts"}
