"""The charts of ``figures.py`` as inline SVG, with no dependency: the HTML report's
pictures, drawn the way ``plotting.py`` draws the PNG (bands shaded on their bad side,
points coloured by their findings, the first-end window and memory horizon shaded).

Legends are left to the page (``html_report.py``), where their text can wrap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape

from gradcheckup.figures import (
    NEUTRAL_COLOUR,
    PLAIN_COLOUR,
    SERIES_COLOURS,
    SEVERITY_COLOURS,
    Chart,
    drawable,
    label_positions,
)
from gradcheckup.report import Severity

__all__ = ["chart_svg"]

_SHADE = 0.08
_FONT = 'font-family="sans-serif" font-size="11"'


@dataclass(frozen=True)
class _Frame:
    """The plot area in pixels and the mapping of values and categories onto it."""

    left: float
    top: float
    width: float
    height: float
    low: float
    high: float
    log_scale: bool
    count: int
    horizontal: bool

    def fraction(self, value: float) -> float:
        """Where ``value`` lies between the value limits, 0 to 1 (clamped)."""
        if self.log_scale:
            span = math.log10(self.high) - math.log10(self.low)
            share = (math.log10(value) - math.log10(self.low)) / span
        else:
            share = (value - self.low) / (self.high - self.low)
        return min(max(share, 0.0), 1.0)

    def value_at(self, value: float) -> float:
        """The pixel coordinate of ``value`` along the value axis."""
        if self.horizontal:
            return self.left + self.fraction(value) * self.width
        return self.top + (1 - self.fraction(value)) * self.height

    def band(self) -> float:
        """Pixels per category."""
        return (self.height if self.horizontal else self.width) / max(self.count, 1)

    def category_at(self, index: float) -> float:
        """The pixel coordinate of the middle of category ``index``."""
        start = self.top if self.horizontal else self.left
        return start + (index + 0.5) * self.band()


def chart_svg(chart: Chart, width: int = 940) -> str:
    """One chart as an ``<svg>`` element (no XML prolog), ``width`` pixels wide.

    Bars and points carry a ``<title>`` with their category and value, shown on hover.
    """
    frame, total_height = _layout(chart, width)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height:.0f}" '
        f'viewBox="0 0 {width} {total_height:.0f}" style="max-width: 100%; height: auto" '
        f'role="img" aria-label="{escape(chart.title)}">',
        f'<rect x="0" y="0" width="{width}" height="{total_height:.0f}" fill="white"/>',
        *_shading(chart, frame),
        *_value_axis(chart, frame),
        *(_lines(chart, frame) if chart.kind == "lines" else _bars(chart, frame)),
        *_threshold_lines(chart, frame),
        *_category_axis(chart, frame),
        f'<rect x="{frame.left:.1f}" y="{frame.top:.1f}" width="{frame.width:.1f}" '
        f'height="{frame.height:.1f}" fill="none" stroke="#333"/>',
        "</svg>",
    ]
    return "\n".join(parts)


def _layout(chart: Chart, width: int) -> tuple[_Frame, float]:
    """The plot area and the SVG's height: room for rotated layer names under bars, a
    row per site for horizontal bars with their names on the left."""
    horizontal = chart.kind == "hbars"
    low, high = chart.value_limits()
    if horizontal:
        longest = max((len(name) for name in chart.categories), default=0)
        left = min(20 + 6.2 * longest, width * 0.45)
        height = max(84.0, 28.0 * len(chart.categories))
        bottom = 40.0
    else:
        left = 64.0
        height = 260.0
        longest = max((len(name) for name in chart.categories), default=0)
        bottom = 30.0 + (min(longest, 40) * 5.2 if chart.kind == "bars" else 0.0)
    frame = _Frame(
        left,
        14.0,
        width - left - 16,
        height,
        low,
        high,
        chart.log_scale,
        len(chart.categories),
        horizontal,
    )
    return frame, frame.top + height + bottom


def _rect(
    frame: _Frame, value_from: float, value_to: float, category_from: float, category_to: float
) -> tuple[float, float, float, float]:
    """x, y, width, height of a rectangle between two values and two category edges."""
    a, b = sorted((frame.value_at(value_from), frame.value_at(value_to)))
    c, d = sorted((category_from, category_to))
    return (a, c, b - a, d - c) if frame.horizontal else (c, a, d - c, b - a)


def _shading(chart: Chart, frame: _Frame) -> Iterator[str]:
    """The bad side of each threshold, then the spans, under everything else."""
    start = frame.top if frame.horizontal else frame.left
    end = start + (frame.height if frame.horizontal else frame.width)
    for threshold in chart.thresholds:
        if threshold.bad_side is None:
            continue
        limit = frame.low if threshold.bad_side == "below" else frame.high
        x, y, w, h = _rect(frame, threshold.value, limit, start, end)
        yield (
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
            f'fill="{_colour(threshold.severity)}" fill-opacity="{_SHADE}"/>'
        )
    for span in chart.spans:
        band = frame.band()
        first = frame.category_at(span.start) - band / 2
        last = frame.category_at(span.end) + band / 2
        x, y, w, h = _rect(frame, frame.low, frame.high, first, last)
        yield (
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="black" '
            f'fill-opacity="{_SHADE}"><title>{escape(span.label)}</title></rect>'
        )


def _line(x1: float, y1: float, x2: float, y2: float, attributes: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {attributes}/>'


def _text(x: float, y: float, text: str, attributes: str = "") -> str:
    """A text element; ``text`` must be escaped already."""
    return f'<text x="{x:.1f}" y="{y:.1f}" {attributes} {_FONT}>{text}</text>'


def _colour(severity: Severity | None) -> str:
    return SEVERITY_COLOURS[severity] if severity else NEUTRAL_COLOUR


def _value_ticks(chart: Chart, frame: _Frame) -> list[tuple[float, str]]:
    """Powers of ten (at most about eight) on a log scale; tenths as percentages else."""
    if not chart.log_scale:
        return [(step / 5, f"{step * 20}%") for step in range(6)]
    first, last = math.ceil(math.log10(frame.low)), math.floor(math.log10(frame.high))
    if last - first < 2:  # a narrow range: 1, 2 and 5 times the powers of ten in it
        candidates = (
            factor * 10.0**power for power in range(first - 1, last + 1) for factor in (1, 2, 5)
        )
        return [(value, f"{value:g}") for value in candidates if frame.low <= value <= frame.high]
    stride = max(1, math.ceil((last - first + 1) / 8))
    return [(10.0**power, f"1e{power}") for power in range(first, last + 1, stride)]


def _value_axis(chart: Chart, frame: _Frame) -> Iterator[str]:
    """Grid lines and tick labels along the value axis, and the axis' label."""
    bottom, right = frame.top + frame.height, frame.left + frame.width
    for value, label in _value_ticks(chart, frame):
        at = frame.value_at(value)
        if frame.horizontal:
            yield _line(at, frame.top, at, bottom, 'stroke="#ddd"')
            yield _text(at, bottom + 14, label, 'text-anchor="middle"')
        else:
            yield _line(frame.left, at, right, at, 'stroke="#ddd"')
            yield _text(frame.left - 6, at + 4, label, 'text-anchor="end"')
    if frame.horizontal:
        middle = frame.left + frame.width / 2
        yield _text(middle, bottom + 32, escape(chart.value_label), 'text-anchor="middle"')


def _point_title(chart: Chart, index: int, value: float | None, series_label: str) -> str:
    shown = "not measured" if value is None else f"{value:.4g}"
    return escape(f"{chart.categories[index]}: {series_label} {shown}")


def _bars(chart: Chart, frame: _Frame) -> Iterator[str]:
    """One bar per category from the value axis' start, coloured by its findings, with
    the fraction printed beside horizontal bars."""
    (series,) = chart.series
    thickness = frame.band() * (0.6 if frame.horizontal else 0.7)
    for index, value in enumerate(series.values):
        middle = frame.category_at(index)
        title = _point_title(chart, index, value, series.label)
        if drawable(value, chart.log_scale):
            x, y, w, h = _rect(
                frame, frame.low, value, middle - thickness / 2, middle + thickness / 2
            )
            mark = series.mark(index)
            colour = SEVERITY_COLOURS[mark] if mark else PLAIN_COLOUR
            yield (
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{colour}"><title>{title}</title></rect>'
            )
        if frame.horizontal:
            text = "-" if value is None else f"{value:.0%}"
            at = frame.value_at(value if drawable(value, False) else frame.low)
            yield _text(at + 4, middle + 4, text)
    yield from _notes(chart, frame)


def _lines(chart: Chart, frame: _Frame) -> Iterator[str]:
    """A polyline per series, broken where a value cannot be drawn; marked points as
    coloured dots."""
    for number, series in enumerate(chart.series):
        colour = SERIES_COLOURS[number % len(SERIES_COLOURS)]
        for run in _runs(series.values, lambda value: drawable(value, chart.log_scale)):
            points = " ".join(
                f"{frame.category_at(index):.1f},{frame.value_at(value):.1f}"
                for index, value in run
            )
            yield f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
        for index, value in enumerate(series.values):
            if not drawable(value, chart.log_scale):
                continue
            mark = series.mark(index)
            fill = SEVERITY_COLOURS[mark] if mark else colour
            title = _point_title(chart, index, value, series.label)
            yield (
                f'<circle cx="{frame.category_at(index):.1f}" cy="{frame.value_at(value):.1f}" '
                f'r="{4.5 if mark else 2.2}" fill="{fill}"><title>{title}</title></circle>'
            )
    yield from _notes(chart, frame)


def _runs(
    values: tuple[float | None, ...], keep: Callable[[float | None], bool]
) -> Iterator[list[tuple[int, float]]]:
    """Consecutive (index, value) pairs whose values ``keep`` accepts."""
    run: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if keep(value):
            run.append((index, value))
        elif run:
            yield run
            run = []
    if run:
        yield run


def _notes(chart: Chart, frame: _Frame) -> Iterator[str]:
    """Each note just above its point of the first series, or at the top edge."""
    for note in chart.notes:
        value = chart.series[0].values[note.index]
        at = frame.value_at(value) if drawable(value, chart.log_scale) else frame.top + 12
        x = frame.category_at(note.index)
        anchor = note.alignment(len(chart.categories))
        yield _text(x, at - 6, escape(note.text), f'text-anchor="{anchor}" font-weight="bold"')


def _threshold_lines(chart: Chart, frame: _Frame) -> Iterator[str]:
    """Dashed lines (dotted for reference lines) across the plot area."""
    for threshold in chart.thresholds:
        at = frame.value_at(threshold.value)
        dash = "6,4" if threshold.bad_side else "2,3"
        attributes = (
            f'stroke="{_colour(threshold.severity)}" stroke-dasharray="{dash}" stroke-width="1.3"'
        )
        if frame.horizontal:
            yield _line(at, frame.top, at, frame.top + frame.height, attributes)
        else:
            yield _line(frame.left, at, frame.left + frame.width, at, attributes)


def _category_axis(chart: Chart, frame: _Frame) -> Iterator[str]:
    """Category names: left of horizontal bars, rotated under vertical bars, every few
    steps under lines."""
    if frame.horizontal:
        for index, name in enumerate(chart.categories):
            y = frame.category_at(index) + 4
            yield _text(frame.left - 6, y, escape(name), 'text-anchor="end"')
        return
    bottom = frame.top + frame.height
    rotated = chart.kind == "bars"
    shown = label_positions(
        len(chart.categories), (note.index for note in chart.notes), 60 if rotated else 20
    )
    for index in shown:
        x = frame.category_at(index)
        name = escape(chart.categories[index])
        if rotated:
            turn = f'text-anchor="end" transform="rotate(-60 {x:.1f} {bottom + 10:.1f})"'
            yield _text(x, bottom + 10, name, turn)
        else:
            yield _text(x, bottom + 16, name, 'text-anchor="middle"')
