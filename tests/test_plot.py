"""SVG charts: parsed back with xml.etree, the polylines are the data through the frame."""

from __future__ import annotations

import math
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from nomade import plot

NS = {"s": "http://www.w3.org/2000/svg"}


def _points(line: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]


def _parse(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == f"0 0 {plot.WIDTH} {plot.HEIGHT}"
    return root


def test_frame_maps_corners_and_clamps() -> None:
    f = plot.Frame((0.0, 1.0), (0.0, 1.0))
    assert f.px(0, 0) == (plot.LEFT, plot.HEIGHT - plot.BOTTOM)          # bottom left
    assert f.px(1, 1) == (plot.WIDTH - plot.RIGHT, plot.TOP)             # top right: y grows upwards
    assert f.px(2, -1) == f.px(1, 0)
    log = plot.Frame((1.0, 1000.0), (0.0, 1.0), log_x=True)
    x10, x100 = log.px(10, 0)[0], log.px(100, 0)[0]
    assert x10 - log.px(1, 0)[0] == pytest.approx(x100 - x10)           # equal decades
    assert log.px(0, 0) == log.px(1, 0)                                 # <= 0 sits at the axis start


def test_nice_ticks() -> None:
    assert plot.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plot.nice_ticks(0, 37) == [0, 10, 20, 30]
    assert plot.nice_ticks(3, 26, 5) == [5, 10, 15, 20, 25]
    assert plot.nice_ticks(2, 2) == [2]


def test_roc_svg_polylines_are_the_curves(tmp_path: Path) -> None:
    curves = {"GNN": ([0.0, 0.1, 0.5, 1.0], [0.0, 0.6, 0.9, 1.0]),
              "logistic <regression> & co": ([0.0, 0.25, 1.0], [0.0, 0.5, 1.0])}
    path = plot.roc_svg(curves, tmp_path / "sub" / "roc.svg", title="ROC, test")
    root = _parse(path)
    assert root.find("s:title", NS).text == "ROC, test"
    lines = root.findall("s:polyline[@class='series']", NS)
    assert [ln.get("data-name") for ln in lines] == list(curves)
    frame = plot.Frame((0.0, 1.0), (0.0, 1.0))
    for line, (fpr, tpr) in zip(lines, curves.values(), strict=True):
        got = _points(line)
        assert len(got) == len(fpr)
        for (x, y), fx, fy in zip(got, fpr, tpr, strict=True):
            ex, ey = frame.px(fx, fy)
            assert x == pytest.approx(ex, abs=0.006) and y == pytest.approx(ey, abs=0.006)
    legend = [t.text for t in root.findall("s:g[@class='legend']/s:text", NS)]
    assert legend[:2] == list(curves) and "chance" in legend[2]
    assert root.find("s:line[@class='chance']", NS) is not None
    assert [t.text for t in root.findall("s:text[@class='xtick']", NS)] == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert root.find("s:text[@class='xlabel']", NS).text == "false positive rate"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["roc.svg"]   # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_ecdf_by_hand() -> None:
    assert plot.ecdf([3, 1, 2]) == ([1, 1, 2, 2, 3, 3], [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert plot.ecdf([]) == ([], [])


def test_lead_time_svg_linear_and_log(tmp_path: Path) -> None:
    root = _parse(plot.lead_time_svg({"all": [3.0, 1.0, 2.0], "empty": []}, tmp_path / "a.svg"))
    (line,) = root.findall("s:polyline[@class='series']", NS)       # empty series are left out
    assert line.get("data-name") == "all (n=3)"
    frame = plot.Frame((0.0, 3.0), (0.0, 1.0))
    xs, ys = plot.ecdf([1.0, 2.0, 3.0])
    assert _points(line) == [pytest.approx(frame.px(x, y), abs=0.006) for x, y in zip(xs, ys, strict=True)]

    root = _parse(plot.lead_time_svg({"all": [0.5, 40.0, 2000.0], "TIMEOUT": [40.0]}, tmp_path / "b.svg"))
    ticks = [float(t.text) for t in root.findall("s:text[@class='xtick']", NS)]
    assert ticks == [0.1, 1, 10, 100, 1000, 10000]                  # decades around 0.5..2000
    assert "log scale" in root.find("s:text[@class='xlabel']", NS).text
    first, second = root.findall("s:polyline[@class='series']", NS)
    frame = plot.Frame((0.1, 10000.0), (0.0, 1.0), log_x=True)
    assert _points(second) == [pytest.approx(frame.px(40.0, 0.0), abs=0.006),
                               pytest.approx(frame.px(40.0, 1.0), abs=0.006)]
    xs = [x for x, _ in _points(first)]
    assert xs == sorted(xs) and not any(math.isnan(x) for x in xs)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no lead times"):
        plot.lead_time_svg({"all": []}, tmp_path / "x.svg")
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        plot.roc_svg({"bad": ([0.0, 1.0], [0.0])}, tmp_path / "y.svg")
    assert not list(tmp_path.iterdir())
