"""``nomade report --plot``: the lead-time chart is an SVG drawn by ``nomade.plot`` from
the store's figures (no matplotlib), and a wrong file name is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from nomade import config, plot, wire

NS = {"s": "http://www.w3.org/2000/svg"}
T0 = 1_700_000_000.0


def _store(path: Path) -> None:
    """Three failed jobs alerted 300 s, 900 s and 60 s before their end (risk 0.9), one
    completed job never alerted."""
    from nomade.store import Store

    ends = {"1": ("FAILED", 500, 200), "2": ("OUT_OF_MEMORY", 1050, 150), "3": ("TIMEOUT", 700, 640),
            "4": ("COMPLETED", 600, None)}
    msgs = [wire.make("job.start", "ctld", 1, {"job_id": j, "user": "alice", "start_ts": T0,
                                               "source": "prolog"}, ts=T0) for j in ends]
    msgs += [wire.make("job.end", "ctld", 1, {"job_id": j, "end_ts": T0 + end, "state": state,
                                              "source": "jobcomp"}, ts=T0 + end)
             for j, (state, end, _) in ends.items()]
    with Store(path) as store:
        store.write_messages(msgs)
        store.add_predictions(
            {"job_id": j, "ts": T0 + (at if at is not None else 100), "risk": 0.9 if at is not None else 0.1,
             "level": "critical" if at is not None else "low", "parts": {"gnn": 0.5}, "factors": [],
             "model_version": "1"} for j, (_, _, at) in ends.items())


def _nomade(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``nomade ARGS`` with an empty config (defaults: alert threshold 0.7)."""
    (tmp_path / "nomade.toml").touch()
    env = {**os.environ, "NOMADE_CONFIG": str(tmp_path / "nomade.toml")}
    return subprocess.run([sys.executable, "-m", "nomade", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_report_plot_writes_the_lead_time_ecdf(tmp_path: Path) -> None:
    _store(tmp_path / "s.db")
    svg = tmp_path / "charts" / "lead.svg"
    out = _nomade(tmp_path, "report", "--db", str(tmp_path / "s.db"), "--plot", str(svg))
    assert out.returncode == 0, out.stderr
    assert f"plot: wrote {svg}" in out.stdout and "coverage    3 of 3" in out.stdout
    root = ET.parse(svg).getroot()
    (line,) = root.findall("s:polyline[@class='series']", NS)
    assert line.get("data-name") == "failed jobs (n=3)"
    # lead times 1, 5 and 15 minutes: a linear axis 0..15, the ECDF steps at each
    frame = plot.Frame((0.0, 15.0), (0.0, 1.0))
    xs, ys = plot.ecdf([1.0, 5.0, 15.0])
    got = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert got == [pytest.approx(frame.px(x, y), abs=0.006) for x, y in zip(xs, ys, strict=True)]
    assert f"risk >= {config.Config().ml.alerts.high_risk_threshold:.2f}" in root.find("s:title", NS).text


def test_report_plot_without_lead_times_or_with_a_wrong_name(tmp_path: Path) -> None:
    _store(tmp_path / "s.db")
    svg = tmp_path / "lead.svg"
    out = _nomade(tmp_path, "report", "--db", str(tmp_path / "s.db"), "--threshold", "0.95", "--plot", str(svg))
    assert out.returncode == 0, out.stderr
    assert f"plot: no lead times yet; {svg} not written" in out.stdout and not svg.exists()
    out = _nomade(tmp_path, "report", "--db", str(tmp_path / "s.db"), "--plot", str(tmp_path / "lead.png"))
    assert out.returncode == 2 and "name it *.svg" in out.stderr
    assert not (tmp_path / "lead.png").exists()
