"""``nomade report``: what the store says about jobs, failures and how well alerts came.

Example::

    $ nomade report
    store /var/lib/nomade/nomade.db  alert threshold 0.70
    jobs          1250 (running 12, ended 1238, final state known 1230)
    failures      182 of 1230 ended (14.8%)
      COMPLETED   1048  85.2%
      FAILED        97   7.9%
      TIMEOUT       41   3.3%
      OUT_OF_MEMORY 44   3.6%
    predictions   36410 for 1190 jobs; 214 jobs crossed the threshold
    alerts on ended jobs with predictions (1180):
      coverage    151 of 176 failed jobs crossed before they ended (85.8%)
      lead time   median 14.5 min (p25 4.0, p75 41.0, min 0.5, max 310.0)
      false alarms 38 of 1004 completed jobs crossed (3.8%)
      precision   151 of 189 alerted ended jobs failed (79.9%)

Lead time: from the first prediction at or above ``[ml.alerts] high_risk_threshold``
to the job's end. ``--json`` prints the same figures as one JSON object.
``--plot FILE.svg`` also draws the distribution (ECDF) of those lead times as an SVG
file (``nomade.plot``, standard library only; opens in a browser).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nomade.config import Config

NAME = "report"
HELP = "summary from the store: failures by state, alerts, lead times, false alarms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[--db FILE] [--threshold R] [--json] [--plot FILE]``."""
    parser.add_argument("--db", type=Path, metavar="FILE",
                        help="the store (default: [storage] db_path)")
    parser.add_argument("--threshold", type=_fraction, metavar="R",
                        help="alert threshold (default: [ml.alerts] high_risk_threshold)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument("--plot", type=_svg_path, metavar="FILE.svg",
                        help="write the lead-time distribution as an SVG chart")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print the report; returns 0."""
    from nomade.store import Store  # lazily, as every command module does

    db = args.db or cfg.paths().db_path
    threshold = cfg.ml.alerts.high_risk_threshold if args.threshold is None else args.threshold
    with Store(db, readonly=True) as store:
        jobs = store.running_jobs() + store.ended_jobs()
        crossed, predicted, n_predictions = prediction_facts(store, threshold)
    summary = summarize(jobs, crossed, predicted, n_predictions, threshold)
    summary["store"] = str(db)
    if args.plot is not None:
        summary["plot"] = plot_lead_times(summary["alerts"]["lead_times_s"], args.plot, threshold)
    print(json.dumps(summary, indent=2) if args.json else format_text(summary))
    return 0


def prediction_facts(store: Any, threshold: float) -> tuple[dict[str, float], set[str], int]:
    """(first ts at or above ``threshold`` by job, jobs with any prediction, how many
    predictions) in one read snapshot of ``store``."""
    with store._snapshot() as conn:   # no public query for this yet (see the module report)
        crossed = dict(conn.execute("SELECT job_id, min(ts) FROM predictions WHERE risk >= ? "
                                    "GROUP BY job_id", (threshold,)).fetchall())
        predicted = {r[0] for r in conn.execute("SELECT DISTINCT job_id FROM predictions")}
        n = int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
    return crossed, predicted, n


# ------------------------------------------------------------------ figures (pure)

def summarize(jobs: Sequence[Any], crossed: Mapping[str, float], predicted: Iterable[str],
              n_predictions: int, threshold: float) -> dict[str, Any]:
    """The report's figures from store ``Job`` rows (job_id, start_ts, end_ts, state,
    label) and each job's first threshold crossing time.

    An alert counts for an ended job only if it came before the end. Coverage: failed
    jobs (label 1) with predictions that crossed; false alarms: completed jobs (label 0)
    with predictions that crossed; precision: failed among ended jobs that crossed.
    """
    predicted = set(predicted)
    ended = [j for j in jobs if j.end_ts is not None]
    final = [j for j in ended if j.label is not None]
    states = Counter(j.state for j in final)
    failed = sum(j.label == 1 for j in final)

    def alerted(j: Any) -> bool:
        return j.job_id in crossed and crossed[j.job_id] <= j.end_ts

    scored = [j for j in final if j.job_id in predicted]
    bad = [j for j in scored if j.label == 1]
    good = [j for j in scored if j.label == 0]
    caught = [j for j in bad if alerted(j)]
    false = [j for j in good if alerted(j)]
    leads = sorted(j.end_ts - crossed[j.job_id] for j in caught)
    return {
        "threshold": threshold,
        "jobs": {"total": len(jobs), "running": len(jobs) - len(ended), "ended": len(ended),
                 "final_state_known": len(final)},
        "failures": {"failed": failed, "ended": len(final), "rate": _rate(failed, len(final)),
                     "by_state": {s: {"jobs": n, "share": _rate(n, len(final))}
                                  for s, n in states.most_common()}},
        "predictions": {"count": n_predictions, "jobs": len(predicted),
                        "jobs_crossed": len(crossed)},
        "alerts": {
            "ended_with_predictions": len(scored),
            "coverage": {"caught": len(caught), "failed": len(bad),
                         "rate": _rate(len(caught), len(bad))},
            "false_alarms": {"alerted": len(false), "completed": len(good),
                             "rate": _rate(len(false), len(good))},
            "precision": {"failed": len(caught), "alerted": len(caught) + len(false),
                          "rate": _rate(len(caught), len(caught) + len(false))},
            "lead_time_s": _quantiles(leads),
            "lead_times_s": leads,
        },
    }


def _rate(n: int, of: int) -> float | None:
    return n / of if of else None


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    """min, p25, median, p75, max of sorted ``values`` (linear interpolation); None if empty."""
    if not values:
        return None

    def q(p: float) -> float:
        x = p * (len(values) - 1)
        lo, hi = math.floor(x), math.ceil(x)
        return values[lo] + (values[hi] - values[lo]) * (x - lo)

    return {"min": values[0], "p25": q(0.25), "median": q(0.5), "p75": q(0.75), "max": values[-1]}


# ------------------------------------------------------------------ output

def format_text(s: Mapping[str, Any]) -> str:
    """The readable report of :func:`summarize`'s figures."""
    jobs, fail, pred, al = s["jobs"], s["failures"], s["predictions"], s["alerts"]
    lines = [f"store {s.get('store', '?')}  alert threshold {s['threshold']:.2f}",
             f"jobs          {jobs['total']} (running {jobs['running']}, ended {jobs['ended']}, "
             f"final state known {jobs['final_state_known']})",
             f"failures      {fail['failed']} of {fail['ended']} ended ({_pct(fail['rate'])})"]
    width = max((len(str(k)) for k in fail["by_state"]), default=0)
    lines += [f"  {str(state).ljust(width)} {v['jobs']:6d} {_pct(v['share']):>6}"
              for state, v in fail["by_state"].items()]
    lines.append(f"predictions   {pred['count']} for {pred['jobs']} jobs; "
                 f"{pred['jobs_crossed']} jobs crossed the threshold")
    if not al["ended_with_predictions"]:
        lines.append("alerts        no ended job with a final state has predictions yet")
    else:
        cov, fa, pr, lead = al["coverage"], al["false_alarms"], al["precision"], al["lead_time_s"]
        lines += [
            f"alerts on ended jobs with predictions ({al['ended_with_predictions']}):",
            f"  coverage    {cov['caught']} of {cov['failed']} failed jobs crossed before they "
            f"ended ({_pct(cov['rate'])})",
            "  lead time   " + ("none" if lead is None else
                                f"median {lead['median'] / 60:.1f} min (p25 {lead['p25'] / 60:.1f}, "
                                f"p75 {lead['p75'] / 60:.1f}, min {lead['min'] / 60:.1f}, "
                                f"max {lead['max'] / 60:.1f})"),
            f"  false alarms {fa['alerted']} of {fa['completed']} completed jobs crossed "
            f"({_pct(fa['rate'])})",
            f"  precision   {pr['failed']} of {pr['alerted']} alerted ended jobs failed "
            f"({_pct(pr['rate'])})"]
    if "plot" in s:
        lines.append(s["plot"])
    return "\n".join(lines)


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def plot_lead_times(leads_s: Sequence[float], path: Path, threshold: float | None = None) -> str:
    """Write the ECDF of the lead times (seconds, shown in minutes) to ``path`` as SVG;
    a line saying what happened (nothing is written without lead times)."""
    from nomade import plot

    if not leads_s:
        return f"plot: no lead times yet; {path} not written"
    title = "Alert lead time before the job ended" + ("" if threshold is None else f" (risk >= {threshold:.2f})")
    plot.lead_time_svg({"failed jobs": [x / 60 for x in leads_s]}, path, title)
    return f"plot: wrote {path}"


def _svg_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.suffix.lower() != ".svg":
        raise argparse.ArgumentTypeError(f"--plot writes an SVG file; name it *.svg, got {text}")
    return path


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a risk in [0, 1], got {text}")
    return value


__all__ = ["format_text", "plot_lead_times", "prediction_facts", "summarize"]
