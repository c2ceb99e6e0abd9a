"""The training report as text, and the progress lines on stderr."""

from __future__ import annotations

import sys
from typing import Any

from nomade.ml.train.prepare import SPLITS, THRESHOLD, Reporter


def format_report(report: dict[str, Any]) -> str:
    """The summary table: per model and the ensemble, AUC-ROC, AUC-PR, precision,
    recall, F1 on validation and test."""
    head = ("model", "split", "AUC-ROC", "AUC-PR", "precision", "recall", "F1", "n")
    rows = []
    entries = [(k, v) for k, v in report["models"].items()] + [("ensemble", report["ensemble"])]
    for name, entry in entries:
        for s in SPLITS[1:]:
            m = entry.get(s, {})
            rows.append((name, s, *(_num(m.get(c)) for c in ("auc_roc", "auc_pr", "precision", "recall", "f1")),
                         str(m.get("n", 0))))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    w = report["weights"]
    tail = [f"ensemble weights: gnn {w['gnn']:.2f}  lstm {w['lstm']:.2f}  autoencoder {w['autoencoder']:.2f}"
            + f"  ({report['weights_source']}: {report['weights_reason']})"
            + f"; ensemble of {', '.join(report['ensemble_parts'])}",
            f"{report['data'].get('never_ran', 0)} jobs that never ran left out; "
            f"threshold {THRESHOLD}; models written to {report['models_dir']}; "
            f"took {report['timings']['total_s']:.1f} s (graph {report['timings']['graph_s']:.1f} s)"]
    return "\n".join([line(head), line("-" * x for x in widths), *map(line, rows), "", *tail])


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def stderr_reporter() -> Reporter:
    """Progress on stderr: one line per model, redrawn in place each epoch."""
    state = {"model": None}

    def report(model: str, epoch: int, epochs: int, score: float) -> None:
        if state["model"] not in (None, model):
            sys.stderr.write("\n")
        state["model"] = model
        filled = int(20 * epoch / epochs)
        sys.stderr.write(f"\r{model:<12} [{'#' * filled}{'.' * (20 - filled)}] epoch {epoch:>3}/{epochs}"
                         f"  validation {score:.3f}")
        sys.stderr.flush()
    return report


