"""The store: one SQLite file in WAL mode that holds jobs, samples, predictions and model runs.

One process writes (the agent); any number read at the same time (``nomade`` commands,
training), each through its own ``Store``. A ``Store`` wraps one connection: use it from
one thread.

Writes take wire messages that ``nomade.wire`` has already validated; only the attribute
contract is used (``kind``, ``sender``, ``seq``, ``ts``, ``body``). ``write_batch`` is
idempotent by (sender, seq) and commits before it returns, so the agent can ack after it.
A message the store cannot keep (unknown kind, no job id) raises ``ValueError`` before
anything of the call is written.

The schema carries its version in ``PRAGMA user_version``. ``MIGRATIONS[i]`` takes a file
from version ``i`` to ``i + 1``; opening an older file read-write applies the missing ones
in one transaction. Never edit a released migration: append a new one.

Retention (``prune``) deletes job sample rows. The v4 bounds (see ``_V4``) stay exact
because prune never deletes the row with the largest rowid, so a new row still gets a
rowid above every row ever stored, and a deleted row only loosens a lower bound. A plain
``VACUUM`` renumbers rowids once there are gaps (SQLite 3.40 does) and would break the
bounds: never run it on a pruned store. Freed pages are reused by new rows, so a pruned
store stops growing at its steady-state size instead of shrinking.

The package, by concern: ``records`` (field orders and row types), ``schema``
(migrations), ``rows`` (messages to rows, job merges), ``base`` (opening, transactions),
``writes``, ``reads``, ``retention`` (the policy and the thinning decision) and ``prune``
(the sweeps). ``Store`` is all of them on one connection.
"""

from __future__ import annotations

from nomade.store.base import SchemaVersionError, StoreError
from nomade.store.prune import Prune
from nomade.store.reads import Reads
from nomade.store.records import (
    JOB_FIELDS,
    JOB_SAMPLE_FIELDS,
    NODE_SAMPLE_FIELDS,
    Job,
    MessageLike,
    ModelRun,
    Prediction,
    UserHistory,
)
from nomade.store.retention import DAY_S, PruneCounts, RetentionPolicy
from nomade.store.schema import MIGRATIONS, Migration, schema_version
from nomade.store.writes import Writes

__all__ = [
    "DAY_S", "JOB_FIELDS", "JOB_SAMPLE_FIELDS", "MIGRATIONS", "NODE_SAMPLE_FIELDS", "Job",
    "MessageLike", "Migration", "ModelRun", "Prediction", "PruneCounts", "RetentionPolicy",
    "SchemaVersionError", "Store", "StoreError", "UserHistory", "schema_version",
]


class Store(Writes, Reads, Prune):
    """An open store file. ``readonly`` opens with ``mode=ro`` and never migrates.

    Read-write opening creates the parent directory (0750) and the file (0600: it holds
    every user's jobs; a file with group or world bits is made 0600), switches it to WAL
    with synchronous=FULL (a commit is on disk before it returns, so what the agent acked
    survives a power cut too; one fsync per commit, and ingest commits once a round) and
    migrates an older schema. Raises ``SchemaVersionError`` for a schema
    newer than this code (or, read-only, older), ``StoreError`` for anything else that
    keeps the file from being used.
    """

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
