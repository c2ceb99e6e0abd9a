"""Small SVG charts with the standard library only (no matplotlib).

``roc_svg(curves, path)`` draws ROC curves (false positive rate against true positive
rate, both 0-1, with the chance diagonal); ``lead_time_svg(series, path)`` draws the
empirical cumulative distribution (ECDF) of alert lead times, one line per series,
on a log time axis when the times span more than two decades. Each file has a title,
axes with tick labels, axis titles and a legend, and opens in any browser.

Structure (what a reader, or a test, can rely on): every data series is one
``<polyline class="series" data-name="NAME">`` whose ``points`` are the data mapped
through :class:`Frame` (``Frame.px``), in the order given; the legend is a
``<g class="legend">`` with one ``<text>`` per series. Files are written atomically
(temp file, then rename).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

WIDTH, HEIGHT = 640, 420
"""Size of every chart in pixels."""
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 40, 52
"""Margins around the plotting area (the legend sits in the right one)."""
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
"""Line colours, in series order (repeating)."""


@dataclass(frozen=True)
class Frame:
    """The mapping of data coordinates to pixels: ``x_range`` onto the plotting area's
    width (log10 of x when ``log_x``), ``y_range`` onto its height, y growing upwards."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    log_x: bool = False

    def _x(self, x: float) -> float:
        return math.log10(max(x, self.x_range[0])) if self.log_x else x

    def px(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of data point (x, y); values outside the ranges are clamped."""
        x0, x1 = (self._x(v) for v in self.x_range)
        y0, y1 = self.y_range
        fx = min(max((self._x(x) - x0) / ((x1 - x0) or 1.0), 0.0), 1.0)
        fy = min(max((y - y0) / ((y1 - y0) or 1.0), 0.0), 1.0)
        return LEFT + fx * (WIDTH - LEFT - RIGHT), HEIGHT - BOTTOM - fy * (HEIGHT - TOP - BOTTOM)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) in [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _label(v: float) -> str:
    return f"{v:g}"


def _svg_root(title: str) -> ET.Element:
    root = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", width=str(WIDTH), height=str(HEIGHT),
                      viewBox=f"0 0 {WIDTH} {HEIGHT}", style="font-family: sans-serif; font-size: 12px")
    ET.SubElement(root, "title").text = title
    ET.SubElement(root, "rect", width=str(WIDTH), height=str(HEIGHT), fill="white")
    ET.SubElement(root, "text", {"x": str(WIDTH / 2), "y": "22", "text-anchor": "middle",
                                 "font-size": "15", "class": "title"}).text = title
    return root


def _axes(root: ET.Element, frame: Frame, x_ticks: Sequence[float], y_ticks: Sequence[float],
          x_title: str, y_title: str) -> None:
    """Grid lines, tick labels, the box and the axis titles."""
    g = ET.SubElement(root, "g", {"class": "axes", "stroke": "#ccc", "stroke-width": "1"})
    (left, bottom), (right, top) = frame.px(frame.x_range[0], frame.y_range[0]), frame.px(frame.x_range[1],
                                                                                           frame.y_range[1])
    for v in x_ticks:
        x, _ = frame.px(v, frame.y_range[0])
        ET.SubElement(g, "line", x1=f"{x:.2f}", x2=f"{x:.2f}", y1=f"{top:.2f}", y2=f"{bottom:.2f}")
        ET.SubElement(root, "text", {"x": f"{x:.2f}", "y": f"{bottom + 16:.2f}", "text-anchor": "middle",
                                     "class": "xtick"}).text = _label(v)
    for v in y_ticks:
        _, y = frame.px(frame.x_range[0], v)
        ET.SubElement(g, "line", x1=f"{left:.2f}", x2=f"{right:.2f}", y1=f"{y:.2f}", y2=f"{y:.2f}")
        ET.SubElement(root, "text", {"x": f"{left - 6:.2f}", "y": f"{y + 4:.2f}", "text-anchor": "end",
                                     "class": "ytick"}).text = _label(v)
    ET.SubElement(root, "rect", x=f"{left:.2f}", y=f"{top:.2f}", width=f"{right - left:.2f}",
                  height=f"{bottom - top:.2f}", fill="none", stroke="#333")
    ET.SubElement(root, "text", {"x": f"{(left + right) / 2:.2f}", "y": f"{HEIGHT - 12}",
                                 "text-anchor": "middle", "class": "xlabel"}).text = x_title
    ET.SubElement(root, "text", {"x": "16", "y": f"{(top + bottom) / 2:.2f}", "text-anchor": "middle",
                                 "transform": f"rotate(-90 16 {(top + bottom) / 2:.2f})",
                                 "class": "ylabel"}).text = y_title


def _series(root: ET.Element, frame: Frame, data: Mapping[str, tuple[Sequence[float], Sequence[float]]],
            dashed: str | None = None) -> None:
    """One polyline per series, then a legend with one entry per series."""
    legend = ET.SubElement(root, "g", {"class": "legend"})
    for k, (name, (xs, ys)) in enumerate(data.items()):
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r}: {len(xs)} x values but {len(ys)} y values")
        colour = COLOURS[k % len(COLOURS)]
        points = " ".join("{:.2f},{:.2f}".format(*frame.px(x, y)) for x, y in zip(xs, ys, strict=True))
        attrs = {"class": "series", "data-name": name, "points": points, "fill": "none",
                 "stroke": colour, "stroke-width": "2"}
        ET.SubElement(root, "polyline", attrs)
        y = TOP + 8 + 20 * k
        x = WIDTH - RIGHT + 12
        ET.SubElement(legend, "line", x1=str(x), x2=str(x + 22), y1=str(y), y2=str(y), stroke=colour,
                      **{"stroke-width": "2"})
        ET.SubElement(legend, "text", x=str(x + 28), y=str(y + 4)).text = name
    if dashed:
        ET.SubElement(legend, "text", {"x": str(WIDTH - RIGHT + 12), "y": str(TOP + 8 + 20 * len(data) + 4),
                                       "fill": "#777"}).text = dashed


def _write(root: ET.Element, path: str | os.PathLike[str]) -> Path:
    """Write ``root`` as an SVG file atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.indent(root)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)   # a chart to open and share, not a secret (mkstemp makes 0600)
        with os.fdopen(fd, "wb") as fh:
            ET.ElementTree(root).write(fh, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def roc_svg(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike[str],
            title: str = "ROC curves (test split)") -> Path:
    """ROC curves ``{name: (fpr, tpr)}`` (values in [0, 1], in curve order) and the
    chance diagonal, written to ``path`` as SVG; returns the path."""
    frame = Frame((0.0, 1.0), (0.0, 1.0))
    root = _svg_root(title)
    ticks = nice_ticks(0.0, 1.0)
    _axes(root, frame, ticks, ticks, "false positive rate", "true positive rate")
    (x0, y0), (x1, y1) = frame.px(0.0, 0.0), frame.px(1.0, 1.0)
    ET.SubElement(root, "line", {"class": "chance", "x1": f"{x0:.2f}", "y1": f"{y0:.2f}", "x2": f"{x1:.2f}",
                                 "y2": f"{y1:.2f}", "stroke": "#999", "stroke-dasharray": "4 4"})
    _series(root, frame, curves, dashed="- - - chance")
    return _write(root, path)


def ecdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The step points of the empirical CDF of ``values``: (x, share ≤ x), rising
    from 0 at the smallest value to 1 at the largest; ([], []) for no values."""
    v = sorted(float(x) for x in values)
    xs, ys = [], []
    for i, x in enumerate(v):
        xs += [x, x]
        ys += [i / len(v), (i + 1) / len(v)]
    return xs, ys


def lead_time_svg(series: Mapping[str, Sequence[float]], path: str | os.PathLike[str],
                  title: str = "Alert lead time before the job ended", unit: str = "min") -> Path:
    """ECDF of the lead times ``{name: [time, ...]}`` (in ``unit``, > 0; one line per
    non-empty series), on a log axis when they span more than two decades; written to
    ``path`` as SVG. ``ValueError`` when no series has a value."""
    data = {name: [float(v) for v in vals] for name, vals in series.items() if len(vals)}
    if not data:
        raise ValueError("no lead times to plot")
    values = [v for vals in data.values() for v in vals]
    lo, hi = min(values), max(values)
    positive = [v for v in values if v > 0]
    log_x = bool(positive) and max(positive) / min(positive) > 100.0
    if log_x:
        lo = 10.0 ** math.floor(math.log10(min(positive)))
        hi = 10.0 ** math.ceil(math.log10(hi))
        x_ticks = [10.0 ** k for k in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    else:
        lo, hi = min(lo, 0.0), (hi if hi > lo else lo + 1.0)
        x_ticks = nice_ticks(lo, hi)
    frame = Frame((lo, hi), (0.0, 1.0), log_x)
    root = _svg_root(title)
    _axes(root, frame, x_ticks, nice_ticks(0.0, 1.0), f"lead time ({unit}{', log scale' if log_x else ''})",
          "share of alerted failed jobs with lead ≤ x")
    _series(root, frame, {f"{name} (n={len(vals)})": ecdf(vals) for name, vals in data.items()})
    return _write(root, path)
