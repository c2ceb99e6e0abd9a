"""The agent's health and metrics, exposed with ``prometheus_client`` over a small HTTP thread.

``Metrics`` holds plain counters and gauges that the agent's one thread updates (attribute
and dict-item writes: no lock on the ingest path; the HTTP thread only reads them, so a
scrape may see one update half-applied between two series, never a torn number). Its
``registry`` is the agent's own (never prometheus_client's global one, so several agents in
one process do not collide): a collector that reads those fields when scraped, the
tick-duration histogram, and the ``process_*`` figures (RSS, CPU seconds, descriptors).
``MetricsServer`` serves it on ``GET /metrics`` (prometheus_client's handler: text format
0.0.4, or OpenMetrics and gzip when the scraper asks) and a one-line ``GET /health``.
No rate is exported: ``rate(nomade_agent_samples_total[5m])`` is PromQL's job.

Per running job, the last tick's risk (``job_risk``) and level (``job_level``: 0 low .. 3
critical, the index in ``LEVELS``) with ``job_id``, ``user`` and ``partition`` labels, and
the count of scored jobs at each level (``jobs_by_level``). Only the jobs the last tick
scored (so at most ``[agent] max_running_jobs``) have series; a job's go as soon as its end
is known (``jobs_ended``), not at the next tick. The label is ``job_id``, not ``job``:
Prometheus gives every scraped series its own ``job`` label (the scrape job).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nomade.wire import LEVELS

log = logging.getLogger(__name__)

PREFIX = "nomade_agent_"
#: Most collectors whose outbox counters are exported.
MAX_COLLECTORS = 65536
#: Reasons a batch is refused or changed: ``nomade.agent.ingest``.
REFUSALS: tuple[str, ...] = ("sender", "node", "prediction", "final_state")
#: The bounds counted when hit: [agent] max_round_mb, max_sender_round_mb,
#: max_nodes_per_job, max_running_jobs, max_orphan_jobs, max_final_state_jobs.
LIMITS: tuple[str, ...] = ("round_bytes", "sender_round_bytes", "nodes_per_job", "running_jobs",
                           "orphan_jobs", "final_state_jobs")
#: Ended jobs with a known final state, by whether the risk reached "high" before the end:
#: a failed job caught or missed, a completed job alarmed or quiet (``job_outcome``).
OUTCOMES: tuple[str, ...] = ("caught", "missed", "false_alarm", "quiet")
#: Lead-time buckets (seconds): from half a minute to a day before the end.
LEAD_BUCKETS: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
#: Tick-duration buckets (seconds) around the budget of 1 s for 10,000 running jobs.
TICK_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Unlabelled counters: ``Metrics`` field (also the series name after ``PREFIX``), help.
_COUNTERS: tuple[tuple[str, str], ...] = (
    ("frames_total", "Frames received on the ingest socket."),
    ("bad_frames_total", "Frames dropped as malformed or invalid."),
    ("batches_total", "Batches stored and acknowledged."),
    ("duplicate_batches_total", "Batches acknowledged again, not re-stored."),
    ("samples_total", "Job samples stored."),
    ("messages_total", "Messages stored (all kinds)."),
    ("store_errors_total", "Store writes that failed (batches not acked)."),
    ("spool_events_total", "Hook events drained from the spools."),
    ("ticks_total", "Scoring ticks run."),
    ("tick_errors_total", "Scoring ticks that failed."),
    ("comment_updates_total", "Job Comments written."),
    ("comment_errors_total", "Job Comment writes that failed."),
    ("final_states_total", "Final states recorded from Slurm."),
    ("summaries_written_total", "Job-end summaries written into Slurm AdminComments."),
    ("summaries_failed_total", "Job-end summaries dropped after failed writes (or a full queue)."),
    ("mail_sent_total", "Risk mails sent to job users."),
    ("mail_failed_total", "Risk mails dropped after failed sends."),
)
_GAUGES: tuple[tuple[str, str], ...] = (
    ("queue_depth", "Frames waiting on the ingest socket after the last drain."),
    ("running_jobs", "Running jobs in the agent's state."),
    ("model_loaded", "1 when a trained model is loaded."),
    ("last_tick_duration_seconds", "Duration of the last scoring tick."),
)


class JobScore(NamedTuple):
    """A running job's labels and its last tick's risk and level index (``LEVELS``)."""

    user: str
    partition: str
    risk: float
    level: int


@dataclass
class Metrics:
    """Counters (``*_total``, only grow) and gauges of one agent, and its ``registry``."""

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
    last_tick_duration_seconds: float = 0.0
    predictions_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))
    comment_updates_total: int = 0
    comment_errors_total: int = 0
    final_states_total: int = 0
    summaries_written_total: int = 0
    summaries_failed_total: int = 0
    mail_sent_total: int = 0
    mail_failed_total: int = 0
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
    #: ``nomade job`` queries by outcome (``nomade.agent.query.OUTCOMES``; its thread counts).
    queries_total: dict[str, int] = field(default_factory=dict)
    #: Ended jobs by alert outcome (``OUTCOMES``), as their job-end summaries are written.
    ended_jobs_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    #: The last tick's score of each running job it scored, by job id (``scored``).
    job_scores: dict[str, JobScore] = field(default_factory=dict)
    registry: CollectorRegistry = field(init=False, repr=False, compare=False)
    tick_duration: Histogram = field(init=False, repr=False, compare=False)
    alert_lead: Histogram = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Exporter(self))
        ProcessCollector(registry=self.registry)
        self.tick_duration = Histogram(PREFIX + "tick_duration_seconds", "Duration of scoring ticks.",
                                       buckets=TICK_BUCKETS, registry=self.registry)
        self.alert_lead = Histogram(PREFIX + "alert_lead_seconds", "Time from a failed job's first "
                                    "high-risk prediction to its end.", buckets=LEAD_BUCKETS,
                                    registry=self.registry)

    def job_outcome(self, failed: bool, lead_s: float | None) -> None:
        """An ended job's outcome: ``failed`` or completed, and the seconds from its first
        high-risk prediction to its end (None: the risk never reached high)."""
        alerted = lead_s is not None
        outcome = ("caught" if alerted else "missed") if failed else ("false_alarm" if alerted else "quiet")
        self.ended_jobs_total[outcome] += 1
        if failed and lead_s is not None:
            self.alert_lead.observe(max(lead_s, 0.0))

    def tick_done(self, seconds: float) -> None:
        """Count one scoring tick that took ``seconds``."""
        self.ticks_total += 1
        self.last_tick_duration_seconds = seconds
        self.tick_duration.observe(seconds)

    def scored(self, predictions: Iterable[dict[str, Any]]) -> None:
        """The tick's ``prediction`` bodies replace every job's score: a job the tick did
        not score (ended, or no model) has no series from now on."""
        self.job_scores = {p["job_id"]: JobScore(p["user"] or "", p["partition"] or "",
                                                 p["risk"], LEVELS.index(p["level"]))
                           for p in predictions}

    def jobs_ended(self, job_ids: Iterable[str]) -> None:
        """Drop the scores of jobs that ended (before the next tick would)."""
        for job_id in job_ids:
            self.job_scores.pop(job_id, None)

    def collector_reported(self, sender: str, dropped: int | None, errors: int | None) -> None:
        """Record a collector's outbox counters (from its ``node.sample``)."""
        if sender in self.collector_outbox or len(self.collector_outbox) < MAX_COLLECTORS:
            self.collector_outbox[sender] = (dropped or 0, errors or 0)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series."""
        return generate_latest(self.registry).decode()


class _Exporter(Collector):
    """Reads a ``Metrics`` into metric families at each scrape (prometheus_client's
    custom-collector protocol); dicts are copied first (one atomic step under the GIL),
    as the agent's thread may add a key meanwhile."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        for name, help_ in _COUNTERS:
            yield CounterMetricFamily(PREFIX + name, help_, value=getattr(m, name))
        for name, help_ in _GAUGES:
            yield GaugeMetricFamily(PREFIX + name, help_, value=getattr(m, name))
        yield _counter("predictions_total", "Predictions published, by level.", ("level",),
                       [((k,), n) for k, n in m.predictions_total.copy().items()])
        yield _counter("refused_total", "Batches refused (or final state cleared) for what their "
                       "sender may not say, by reason.", ("reason",),
                       [((k,), n) for k, n in m.refused_total.copy().items()])
        yield _counter("limit_hits_total", "Times a configured bound was hit, by limit.", ("limit",),
                       [((k,), n) for k, n in m.limit_hits_total.copy().items()])
        yield _counter("pruned_rows_total", "Store rows removed by retention.", ("table", "step"),
                       list(m.pruned_rows_total.copy().items()))
        yield _counter("queries_total", "Job queries (nomade job) answered, by outcome.", ("outcome",),
                       [((k,), n) for k, n in m.queries_total.copy().items()])
        yield _counter("ended_jobs_total", "Ended jobs with a known final state, by whether the risk "
                       "reached high before the end (caught, missed: failed; false_alarm, quiet: "
                       "completed).", ("outcome",), [((k,), n) for k, n in m.ended_jobs_total.copy().items()])
        yield from _job_families(sorted(m.job_scores.copy().items()))
        outbox = sorted(m.collector_outbox.copy().items())
        yield _counter("collector_outbox_dropped_total", "Unacknowledged batches a collector's "
                       "full outbox dropped (as its last node sample said).", ("sender",),
                       [((s,), dropped) for s, (dropped, _) in outbox])
        yield _counter("collector_outbox_write_errors_total", "Outbox writes that failed on a "
                       "collector (a full disk; as its last node sample said).", ("sender",),
                       [((s,), errors) for s, (_, errors) in outbox])


def _job_families(scores: Sequence[tuple[str, JobScore]]) -> Iterator[Metric]:
    """The per-job risk and level gauges and the count of jobs at each level."""
    labels = ("job_id", "user", "partition")
    risk = GaugeMetricFamily(PREFIX + "job_risk", "Failure risk (0-1) of a running job at the "
                             "last scoring tick.", labels=labels)
    level = GaugeMetricFamily(PREFIX + "job_level", "Risk level of a running job at the last "
                              "scoring tick: 0 low, 1 moderate, 2 high, 3 critical.", labels=labels)
    counts = [0] * len(LEVELS)
    for job_id, s in scores:
        risk.add_metric((job_id, s.user, s.partition), s.risk)
        level.add_metric((job_id, s.user, s.partition), s.level)
        counts[s.level] += 1
    by_level = GaugeMetricFamily(PREFIX + "jobs_by_level", "Running jobs scored at each level "
                                 "by the last tick.", labels=("level",))
    for name, n in zip(LEVELS, counts, strict=True):
        by_level.add_metric((name,), n)
    yield from (risk, level, by_level)


def _counter(name: str, help_: str, labels: tuple[str, ...],
             values: Iterable[tuple[Sequence[str], float]]) -> Metric:
    """A labelled counter family: one series per (label values, value)."""
    family = CounterMetricFamily(PREFIX + name, help_, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


class _Handler(MetricsHandler):
    """prometheus_client's handler on ``/metrics`` only, plus ``/health``."""

    def do_GET(self) -> None:  # http.server's name for it
        path = urlparse(self.path).path
        if path == "/metrics":
            super().do_GET()
        elif path == "/health":
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404, "try /metrics or /health")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's parameter name
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class MetricsServer:
    """Serves ``metrics`` on ``host:port`` from a daemon thread; ``close()`` stops it.
    Port 0 picks a free port (see ``address``)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"registry": metrics.registry})
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
