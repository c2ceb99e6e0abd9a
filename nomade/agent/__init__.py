"""The agent: ingest (ROUTER), job state, scoring tick, prediction stream (PUB), metrics.

``jobstate``, ``ingest`` and ``scoring`` hold the decisions and are tested without
sockets; ``daemon`` is the thin I/O shell that wires sockets, timers and Slurm.
"""
