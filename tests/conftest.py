"""Shared fixtures. ``ctx``: a ZeroMQ context that must end with every socket closed.
``slurm_cluster``: the project's real Slurm test cluster.

Tests that need it take the ``slurm_cluster`` fixture (and carry ``@pytest.mark.slurm``).
When the cluster cannot be used (not root, not started) they are skipped with the
reason; under ``CI=true`` that is a failure instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import zmq
from slurmtools import SlurmCluster, find_cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running test cluster (run dir, spool dirs, nodes, test user, a Slurm client)."""
    found = find_cluster()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the Slurm test cluster is unusable: {found}", pytrace=False)
        pytest.skip(found)
    return found


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context; its ``term()`` hangs if a test left a socket open."""
    context = zmq.Context()
    yield context
    context.term()
