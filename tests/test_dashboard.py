"""The Grafana dashboard in agent/grafana queries only what the agent exports: every
PromQL expression parses (promql_parser, Prometheus's grammar), and every metric it
selects is a sample name (``_bucket`` and ``_total`` included, as PromQL names them) on
the /metrics of a real agent (real sockets) that scored running jobs with the shipped
starter model; a job's series go when the job ends."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import zmq
from agenttools import acked, agent_config, dealer, free_port, running_job_batch
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from nomade import wire
from nomade.agent.daemon import Agent
from nomade.agent.exporter import Metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "agent" / "grafana" / "nomade-dashboard.json"
PER_JOB = ("nomade_agent_job_risk", "nomade_agent_job_level")
#: Grafana's interval variables, replaced by a duration PromQL's parser reads.
INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (Grafana's ``$__rate_interval`` and friends
    allowed) selects, from its parse tree; ValueError if it is not valid PromQL, or
    AssertionError for a selector without a metric name."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(INTERVALS.sub("5m", expr)), visit)
    return names


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target, rows' nested panels included, and of every
    templating query (``label_values(metric, label)`` reads ``metric``)."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))
    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            yield f"variable {v['name']!r}", m.group(1) if m else q


def test_metric_names_are_the_selected_metrics_only() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y}[", i=~"$instance"}'
            '[$__rate_interval]))) / 2^20 + 1e3 and on (job_id) max without (user) (b:rec) > bool 0.5'
            ' or max_over_time(c[1h:5m])')
    assert metric_names(expr) == {"a_bucket", "b:rec", "c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a[5m])")


def test_the_dashboard_uses_its_datasource_variable_only() -> None:
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {json.loads(text)["uid"]}
    assert uids == {"${datasource}"}
    variables = {v["name"]: v for v in json.loads(text)["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


def scrape(port: int) -> dict[str, list[Any]]:
    """The samples of the agent's /metrics (``samples``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return samples(r.read().decode())


def samples(text: str) -> dict[str, list[Any]]:
    """The samples of a text exposition by sample name (``_bucket``, ``_total`` ... kept)."""
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def per_job(samples: dict[str, list[Any]], name: str) -> dict[str, tuple[str, str, float]]:
    return {s.labels["job_id"]: (s.labels["user"], s.labels["partition"], s.value)
            for s in samples.get(name, [])}


@pytest.mark.slow
def test_every_dashboard_query_names_a_metric_a_scoring_agent_exports(tmp_path: Path, ctx: zmq.Context) -> None:
    """The agent driven in this thread (receive, tick) so that job 2's end is the only
    thing between two scrapes: its series must go with the end, not at the next tick."""
    port = free_port()
    cfg = agent_config(tmp_path)   # no models of its own: the shipped starter scores
    agent = Agent(dataclasses.replace(cfg, agent=dataclasses.replace(
        cfg.agent, metrics_address=f"127.0.0.1:{port}")), name="agent0")
    sock = dealer(ctx, agent.ingest_endpoint)
    try:
        now = time.time()
        sock.send(running_job_batch(1, now))
        wait_until(agent.receive, 30, "the agent received no batch")
        assert acked(sock) == 1
        assert len(agent.tick()) == 3
        scored = scrape(port)
        ticks = agent.metrics.ticks_total
        end = wire.make("job.end", "n1", 2, {"job_id": "2", "end_ts": now + 1}, now + 1)
        sock.send(wire.encode(wire.make_batch("n1", 2, [end])))
        wait_until(agent.receive, 30, "the agent received no end")
        assert acked(sock) == 2
        ended = scrape(port)
        assert agent.metrics.ticks_total == ticks
    finally:
        sock.close()
        agent.close()

    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for where, expr in queries(dashboard):
        try:
            names = metric_names(expr)
        except ValueError as e:
            pytest.fail(f"{where}: not PromQL ({e}): {expr!r}")
        assert names, f"{where}: no metric found in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    missing = {name: sorted(where) for name, where in used.items() if name not in scored}
    assert not missing, f"dashboard queries of metrics the agent does not export: {missing}"
    assert {*PER_JOB, "nomade_agent_jobs_by_level", "nomade_agent_tick_duration_seconds_bucket",
            "nomade_agent_predictions_total"} <= set(used)

    risk, level = per_job(scored, PER_JOB[0]), per_job(scored, PER_JOB[1])
    assert set(risk) == set(level) == {"1", "2", "3"}
    for job_id, (user, partition, r) in risk.items():
        assert (user, partition) == (f"u{job_id}", "cpu") and 0.0 <= r <= 1.0
        assert level[job_id] == (user, partition, wire.LEVELS.index(wire.level_for(r)))
    by_level = {s.labels["level"]: s.value for s in scored["nomade_agent_jobs_by_level"]}
    assert set(by_level) == set(wire.LEVELS) and sum(by_level.values()) == 3

    assert set(per_job(ended, PER_JOB[0])) == set(per_job(ended, PER_JOB[1])) == {"1", "3"}
    assert sum(s.value for s in ended["nomade_agent_jobs_by_level"]) == 2


def test_job_series_follow_the_last_tick_and_escape_their_labels() -> None:
    """``scored`` replaces every job's series, ``jobs_ended`` drops one at once; label
    values with quotes, backslashes and newlines come back from the text format intact."""
    m = Metrics()
    user = 'o"brien\\x\ny'
    m.scored([{"job_id": "7", "user": user, "partition": None, "risk": 0.85, "level": "critical"},
              {"job_id": "8", "user": "u", "partition": "gpu", "risk": 0.1, "level": "low"}])
    exposed = samples(m.render())
    assert per_job(exposed, "nomade_agent_job_risk") == {"7": (user, "", 0.85), "8": ("u", "gpu", 0.1)}
    assert per_job(exposed, "nomade_agent_job_level")["7"] == (user, "", 3)
    m.jobs_ended(["7", "not running"])
    assert m.registry.get_sample_value("nomade_agent_job_risk", {"job_id": "7", "user": user,
                                                                 "partition": ""}) is None
    assert m.registry.get_sample_value("nomade_agent_jobs_by_level", {"level": "critical"}) == 0
    assert m.registry.get_sample_value("nomade_agent_jobs_by_level", {"level": "low"}) == 1
    m.scored([])   # a tick that scored nothing (no model, or it failed)
    assert m.registry.get_sample_value("nomade_agent_job_risk", {"job_id": "8", "user": "u",
                                                                 "partition": "gpu"}) is None


def test_ended_jobs_count_by_alert_outcome_and_failed_ones_give_lead_times() -> None:
    m = Metrics()
    m.job_outcome(True, 600.0)     # failed, high risk 10 min before the end: caught
    m.job_outcome(True, None)      # failed, never high: missed
    m.job_outcome(False, 90.0)     # completed after a high risk: a false alarm (no lead time)
    m.job_outcome(False, None)     # completed, quiet
    m.job_outcome(False, None)
    get = m.registry.get_sample_value
    assert {o: get("nomade_agent_ended_jobs_total", {"outcome": o}) for o in ("caught", "missed", "false_alarm",
                                                                               "quiet")} == {
        "caught": 1, "missed": 1, "false_alarm": 1, "quiet": 2}
    assert get("nomade_agent_alert_lead_seconds_count") == 1 and get("nomade_agent_alert_lead_seconds_sum") == 600
    assert get("nomade_agent_alert_lead_seconds_bucket", {"le": "300.0"}) == 0
    assert get("nomade_agent_alert_lead_seconds_bucket", {"le": "600.0"}) == 1
