"""A PNG of what a report's findings are about (needs the ``plot`` extra: matplotlib).

One panel per chart of ``figures.charts``: the backward signal through depth with the
vanishing and exploding bands, the gradient through time of each recurrent layer, the
step norms against ``max_grad_norm``, the dead and saturated fractions per site. The
HTML report (``html_report.py``) draws the same charts as inline SVG.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcheckup.figures import (
    NEUTRAL_COLOUR,
    PLAIN_COLOUR,
    SERIES_COLOURS,
    SEVERITY_COLOURS,
    Chart,
    Threshold,
    charts,
    drawable,
    label_positions,
    verdict,
)
from gradcheckup.report import Report, Severity

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["gradient_flow_figure", "plot_gradient_flow"]

_SHADE = 0.07
_ALIGNMENTS = {"start": "left", "middle": "center", "end": "right"}
_WIDTH_PER_CATEGORY = 0.22
_LEGEND_WIDTH = 2.6


def plot_gradient_flow(report: Report, path: Path, title: str = "gradient flow") -> None:
    """Write a PNG with one panel per chart the report has data for.

    Args:
        report: the report to draw (its statistics, findings and Config thresholds).
        path: where to write the PNG (folders are created).
        title: the figure's title; the verdict is appended.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'gradcheckup[plot]'``).
    """
    figure = gradient_flow_figure(report, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def gradient_flow_figure(report: Report, title: str = "gradient flow") -> Figure:
    """The figure ``plot_gradient_flow`` saves, for loggers that take a matplotlib Figure
    (TensorBoard's ``add_figure``, ``wandb.Image``).

    The figure is not registered with pyplot, so drawing many of them during training
    leaks nothing and needs no GUI backend.

    Args:
        report: the report to draw (its statistics, findings and Config thresholds).
        title: the figure's title; the verdict is appended.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'gradcheckup[plot]'``).
    """
    from matplotlib.figure import Figure

    panels = charts(report)
    widest = max((len(chart.categories) for chart in panels if chart.kind == "bars"), default=0)
    width = min(20.0, max(11.0, 2.5 + _LEGEND_WIDTH + _WIDTH_PER_CATEGORY * widest))
    heights = [_panel_height(chart) for chart in panels] or [1.5]
    figure = Figure(figsize=(width, sum(heights) + 0.7))
    axes = figure.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for axis, chart in zip(axes[:, 0], panels, strict=False):
        _draw(axis, chart, width)
    if not panels:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "Nothing was measured that could be drawn.", ha="center")
    figure.suptitle(
        f"{title} — {verdict(report)}",
        color=NEUTRAL_COLOUR if report.ok else SEVERITY_COLOURS[Severity.ERROR],
        fontweight="bold",
    )
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.1 / (sum(heights) + 0.7)))  # the title's gap
    return figure


def _panel_height(chart: Chart) -> float:
    """Inches: room for rotated layer names under bars (less for a depth profile too
    short to judge), a row per site for hbars."""
    if chart.kind == "hbars":
        return max(2.4, 0.32 * len(chart.categories) + 1.4)
    if chart.kind == "bars":
        return 4.6 if chart.thresholds else 3.0
    return 3.6


def _draw(axis: Axes, chart: Chart, width: float) -> None:
    """One panel: the heading, the data, the thresholds, spans and notes, the legend."""
    _heading(axis, chart, width)
    horizontal = chart.kind == "hbars"
    low, high = chart.value_limits()
    if chart.log_scale:
        (axis.set_xscale if horizontal else axis.set_yscale)("log")
    (axis.set_xlim if horizontal else axis.set_ylim)(low, high)
    if chart.kind == "lines":
        _lines(axis, chart)
    else:
        _bars(axis, chart, horizontal)
    for threshold in chart.thresholds:
        _threshold(axis, threshold, (low, high), horizontal)
    for span in chart.spans:
        (axis.axhspan if horizontal else axis.axvspan)(
            span.start - 0.5, span.end + 0.5, color="black", alpha=_SHADE, lw=0, zorder=0
        )
    _legend(axis, chart)
    (axis.set_xlabel if horizontal else axis.set_ylabel)(chart.value_label, fontsize=8)
    axis.tick_params(labelsize=7)


def _heading(axis: Axes, chart: Chart, width: float) -> None:
    """The title (coloured by the worst finding the panel is about) and the caption."""
    caption = textwrap.fill(chart.caption, width=int((width - _LEGEND_WIDTH) * 15))
    axis.set_title(
        chart.title,
        loc="left",
        fontsize=10,
        fontweight="bold",
        color=_colour(chart.severity, "black"),
        pad=8 + 10 * (caption.count("\n") + 1),
    )
    axis.annotate(
        caption,
        (0, 1),
        xycoords="axes fraction",
        xytext=(0, 5),
        textcoords="offset points",
        va="bottom",
        fontsize=7.5,
        color=NEUTRAL_COLOUR,
    )


def _colour(severity: Severity | None, otherwise: str) -> str:
    return SEVERITY_COLOURS[severity] if severity else otherwise


def _legend(axis: Axes, chart: Chart) -> None:
    """Series, finding marks, thresholds and spans, beside the panel: inside, lines a
    fraction of a decade apart would print their labels over each other."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lines = chart.kind == "lines"
    handles: list[Any] = [
        Line2D([], [], color=SERIES_COLOURS[number % 2], marker=".", label=series.label)
        if lines
        else Patch(color=PLAIN_COLOUR, label=series.label)
        for number, series in enumerate(chart.series)
    ]
    handles += [
        Line2D(
            [],
            [],
            ls="",
            marker="o" if lines else "s",
            color=SEVERITY_COLOURS[severity],
            label=f"{severity.value} finding here",
        )
        for severity in sorted(_marks(chart), key=lambda severity: -severity.rank)
    ]
    handles += [
        Line2D(
            [],
            [],
            color=_colour(threshold.severity, NEUTRAL_COLOUR),
            ls="--" if threshold.bad_side else ":",
            label=threshold.label,
        )
        for threshold in chart.thresholds
    ]
    handles += [Patch(color="black", alpha=_SHADE, label=span.label) for span in chart.spans]
    axis.legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )


def _marks(chart: Chart) -> set[Severity]:
    return {mark for series in chart.series for mark in series.marked if mark is not None}


def _bars(axis: Axes, chart: Chart, horizontal: bool) -> None:
    """Bars (vertical for layers, horizontal for sites), coloured by their findings."""
    (series,) = chart.series
    positions = list(range(len(chart.categories)))
    heights = [value if drawable(value, chart.log_scale) else math.nan for value in series.values]
    colours = [
        SEVERITY_COLOURS[series.mark(index)] if series.mark(index) else PLAIN_COLOUR
        for index in positions
    ]
    if horizontal:
        axis.barh(positions, heights, color=colours, height=0.6)
        axis.set_yticks(positions, chart.categories, fontsize=7)
        axis.invert_yaxis()  # model order from the top
        for index, value in enumerate(series.values):
            axis.annotate(
                "-" if value is None else f"{value:.0%}",
                (min(value or 0.0, 0.9) + 0.01, index),
                va="center",
                fontsize=7,
            )
        return
    axis.bar(positions, heights, color=colours, width=0.7)
    shown = label_positions(len(positions), (note.index for note in chart.notes))
    axis.set_xticks(
        shown, [chart.categories[i] for i in shown], rotation=60, ha="right", fontsize=7
    )
    axis.set_xlim(-0.7, len(positions) - 0.3)
    _notes(axis, chart)


def _notes(axis: Axes, chart: Chart) -> None:
    """Each note above its point of the first series, or at the top where the point
    cannot be drawn (a non-finite step)."""
    top = chart.value_limits()[1]
    for note in chart.notes:
        value = chart.series[0].values[note.index]
        at = value if drawable(value, chart.log_scale) else top
        axis.annotate(
            note.text,
            (note.index, at),
            xytext=(0, 4 if at is value else -4),
            textcoords="offset points",
            ha=_ALIGNMENTS[note.alignment(len(chart.categories))],
            va="bottom" if at is value else "top",
            fontsize=7,
            fontweight="bold",
        )


def _lines(axis: Axes, chart: Chart) -> None:
    """One line per series over the ordered categories; marked points as dots."""
    positions = list(range(len(chart.categories)))
    for number, series in enumerate(chart.series):
        values = [
            value if drawable(value, chart.log_scale) else math.nan for value in series.values
        ]
        axis.plot(
            positions,
            values,
            marker="." if len(values) <= 80 else None,
            lw=1.4,
            color=SERIES_COLOURS[number % 2],
        )
        for index, value in enumerate(values):
            mark = series.mark(index)
            if mark and not math.isnan(value):
                axis.plot(index, value, "o", ms=7, color=SEVERITY_COLOURS[mark], zorder=3)
    shown = label_positions(len(positions), most=20)
    axis.set_xticks(shown, [chart.categories[i] for i in shown])
    axis.set_xlim(-0.5, max(len(positions) - 0.5, 0.5))
    _notes(axis, chart)


def _threshold(
    axis: Axes, threshold: Threshold, limits: tuple[float, float], horizontal: bool
) -> None:
    """A dashed line (dotted for a reference line), its bad side lightly shaded."""
    colour = _colour(threshold.severity, NEUTRAL_COLOUR)
    line: Any = axis.axvline if horizontal else axis.axhline
    line(threshold.value, color=colour, ls="--" if threshold.bad_side else ":", lw=1)
    if threshold.bad_side is not None:
        low, high = limits
        start, end = (
            (low, threshold.value) if threshold.bad_side == "below" else (threshold.value, high)
        )
        (axis.axvspan if horizontal else axis.axhspan)(
            start, end, color=colour, alpha=_SHADE, lw=0, zorder=0
        )
