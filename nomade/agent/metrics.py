"""The agent's health and metrics in Prometheus text format, over a tiny HTTP thread.

``Metrics`` holds plain counters and gauges that the agent's one thread updates
(integer/float attribute writes; the HTTP thread only reads them, so a scrape may see
one update half-applied between two series, never a torn number). ``render()`` is the
exposition text (format 0.0.4); ``MetricsServer`` serves it on ``GET /metrics`` and a
one-line ``GET /health``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nomade.wire import LEVELS

log = logging.getLogger(__name__)

#: Most collectors whose outbox counters are exported.
MAX_COLLECTORS = 65536
#: Reasons a batch is refused or changed: ``nomade.agent.ingest``.
REFUSALS: tuple[str, ...] = ("sender", "node", "prediction", "final_state")
#: The bounds counted when hit: [agent] max_round_mb, max_sender_round_mb,
#: max_nodes_per_job, max_running_jobs, max_orphan_jobs, max_final_state_jobs.
LIMITS: tuple[str, ...] = ("round_bytes", "sender_round_bytes", "nodes_per_job", "running_jobs",
                           "orphan_jobs", "final_state_jobs")


@dataclass
class Metrics:
    """Counters (``*_total``, only grow) and gauges of one agent."""

    started_ts: float = field(default_factory=time.time)
    frames_total: int = 0
    bad_frames_total: int = 0
    batches_total: int = 0
    duplicate_batches_total: int = 0
    samples_total: int = 0
    messages_total: int = 0
    store_errors_total: int = 0
    spool_events_total: int = 0
    ticks_total: int = 0
    tick_errors_total: int = 0
    last_tick_seconds: float = 0.0
    tick_seconds_sum: float = 0.0
    predictions_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    comment_updates_total: int = 0
    comment_errors_total: int = 0
    final_states_total: int = 0
    queue_depth: int = 0
    running_jobs: int = 0
    model_loaded: int = 0
    #: Batches refused for what their sender may not say (``nomade.agent.ingest``), by
    #: reason; "final_state": batches whose job.end final state was cleared (still stored).
    refused_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))
    #: Times a bound was hit, by limit (``LIMITS``).
    limit_hits_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LIMITS, 0))
    #: Per collector (sender): its outbox's (dropped batches, failed writes), as its last
    #: node sample reported them; at most ``MAX_COLLECTORS`` senders.
    collector_outbox: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Rows removed by retention, by (table, step): ("job_samples", "thin"), (…, "drop").
    pruned_rows_total: dict[tuple[str, str], int] = field(default_factory=lambda: dict.fromkeys(
        (("job_samples", "thin"), ("job_samples", "drop"), ("node_samples", "drop"),
         ("predictions", "drop")), 0))

    def collector_reported(self, sender: str, dropped: int | None, errors: int | None) -> None:
        """Record a collector's outbox counters (from its ``node.sample``)."""
        if sender in self.collector_outbox or len(self.collector_outbox) < MAX_COLLECTORS:
            self.collector_outbox[sender] = (dropped or 0, errors or 0)

    def ingest_rate(self, now: float | None = None) -> float:
        """Job samples per second since the agent started."""
        elapsed = (time.time() if now is None else now) - self.started_ts
        return self.samples_total / elapsed if elapsed > 0 else 0.0

    def render(self) -> str:
        """The Prometheus text exposition of every series."""
        out: list[str] = []
        described: set[str] = set()

        def series(name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
            if name not in described:
                described.add(name)
                out.append(f"# HELP nomade_agent_{name} {help_}")
                out.append(f"# TYPE nomade_agent_{name} {kind}")
            out.append(f"nomade_agent_{name}{labels} {value:g}")

        series("frames_total", "counter", "Frames received on the ingest socket.", self.frames_total)
        series("bad_frames_total", "counter", "Frames dropped as malformed or invalid.", self.bad_frames_total)
        series("batches_total", "counter", "Batches stored and acknowledged.", self.batches_total)
        series("duplicate_batches_total", "counter", "Batches acknowledged again, not re-stored.",
               self.duplicate_batches_total)
        series("samples_total", "counter", "Job samples stored.", self.samples_total)
        series("messages_total", "counter", "Messages stored (all kinds).", self.messages_total)
        series("store_errors_total", "counter", "Store writes that failed (batches not acked).",
               self.store_errors_total)
        series("spool_events_total", "counter", "Hook events drained from the spools.", self.spool_events_total)
        series("ingest_samples_per_second", "gauge", "Job samples per second since start.", self.ingest_rate())
        series("queue_depth", "gauge", "Frames waiting on the ingest socket after the last drain.",
               self.queue_depth)
        series("running_jobs", "gauge", "Running jobs in the agent's state.", self.running_jobs)
        series("model_loaded", "gauge", "1 when a trained model is loaded.", self.model_loaded)
        series("ticks_total", "counter", "Scoring ticks run.", self.ticks_total)
        series("tick_errors_total", "counter", "Scoring ticks that failed.", self.tick_errors_total)
        series("tick_duration_seconds", "gauge", "Duration of the last scoring tick.", self.last_tick_seconds)
        series("tick_duration_seconds_sum", "counter", "Total time spent in scoring ticks.",
               self.tick_seconds_sum)
        for level, n in self.predictions_total.items():
            series("predictions_total", "counter", "Predictions published, by level.", n,
                   f'{{level="{level}"}}')
        series("comment_updates_total", "counter", "Job Comments written.", self.comment_updates_total)
        series("comment_errors_total", "counter", "Job Comment writes that failed.", self.comment_errors_total)
        series("final_states_total", "counter", "Final states recorded from Slurm.", self.final_states_total)
        for reason, n in self.refused_total.items():
            series("refused_total", "counter", "Batches refused (or final state cleared) for what "
                   "their sender may not say, by reason.", n, f'{{reason="{reason}"}}')
        for limit, n in self.limit_hits_total.items():
            series("limit_hits_total", "counter", "Times a configured bound was hit, by limit.", n,
                   f'{{limit="{limit}"}}')
        for sender, (dropped, errors) in sorted(self.collector_outbox.items()):
            label = f'{{sender="{_escape(sender)}"}}'
            series("collector_outbox_dropped_total", "counter", "Unacknowledged batches a "
                   "collector's full outbox dropped (as its last node sample said).", dropped, label)
            series("collector_outbox_write_errors_total", "counter", "Outbox writes that failed "
                   "on a collector (a full disk; as its last node sample said).", errors, label)
        for (table, step), n in self.pruned_rows_total.items():
            series("pruned_rows_total", "counter", "Store rows removed by retention.", n,
                   f'{{table="{table}",step="{step}"}}')
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics

    def do_GET(self) -> None:  # http.server's name for it
        if self.path == "/metrics":
            body, ctype = self.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
        elif self.path == "/health":
            body, ctype = b"ok\n", "text/plain; charset=utf-8"
        else:
            self.send_error(404, "try /metrics or /health")
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's parameter name
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class MetricsServer:
    """Serves ``metrics`` on ``host:port`` from a daemon thread; ``close()`` stops it.
    Port 0 picks a free port (see ``address``)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="nomade-metrics",
                                        daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
