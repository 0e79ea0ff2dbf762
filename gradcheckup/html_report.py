"""A self-contained HTML report: the verdict, the findings with their fixes, the charts of
``figures.py`` as inline SVG (no matplotlib needed), and the tables of layers, activation
sites, recurrent layers and steps.

One file with inline CSS and no script, fonts or images from elsewhere: it opens offline,
from a CI artifact or an e-mail attachment, as it looked when it was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

from gradcheckup.figures import (
    NEUTRAL_COLOUR,
    PLAIN_COLOUR,
    SERIES_COLOURS,
    SEVERITY_COLOURS,
    Chart,
    charts,
    verdict,
)
from gradcheckup.report import (
    Report,
    Severity,
    display_name,
    format_number,
    layer_flags,
    step_label,
)
from gradcheckup.svg import chart_svg

__all__ = ["html_report", "write_html_report"]

_STEPS_SHOWN = 50

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  max-width: 1000px; padding: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 0 0 4px; }
.verdict { display: inline-block; padding: 3px 10px; border-radius: 4px; color: white;
  font-weight: bold; }
.healthy { background: #2ca02c; } .unhealthy { background: #d62728; }
.meta, .caption, .note { color: #555; font-size: 13px; }
.chart { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 12px;
  margin: 12px 0; }
.legend { list-style: none; padding: 0; margin: 6px 0 0; font-size: 12px; }
.legend li { display: inline-block; margin-right: 16px; }
.swatch { display: inline-block; width: 18px; height: 10px; margin-right: 5px;
  vertical-align: middle; }
.dashed { height: 0; border-top: 2px dashed; } .dotted { height: 0; border-top: 2px dotted; }
table { border-collapse: collapse; width: 100%; font-size: 13px; background: white; }
th, td { border: 1px solid #e2e2e2; padding: 4px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfbfb; }
.error { color: #d62728; font-weight: bold; } .warning { color: #c76a00; font-weight: bold; }
.info { color: #1f77b4; } .flag { color: #d62728; }
code { font-size: 12.5px; }
.fix { color: #444; }
"""


def html_report(report: Report, title: str = "gradient health") -> str:
    """The report as one HTML page (UTF-8 text).

    Args:
        report: what to show.
        title: the page's heading and title, e.g. the model's name.
    """
    sections = [
        _header(report, title),
        _findings(report),
        *(_chart(chart) for chart in charts(report)),
        _layers(report),
        _activations(report),
        _through_time(report),
        _steps(report),
        _notes(report),
        f'<p class="meta">Written by gradcheckup {escape(report.gradcheckup_version)} '
        f"(torch {escape(report.torch_version)}), report schema version "
        f"{report.schema_version}.</p>",
    ]
    body = "\n".join(section for section in sections if section)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>gradcheckup: {escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_html_report(report: Report, path: Path, title: str = "gradient health") -> None:
    """Write ``html_report(report, title)`` to ``path`` (folders are created).

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(report, title), encoding="utf-8")


def _header(report: Report, title: str) -> str:
    errors = sum(finding.severity is Severity.ERROR for finding in report.findings)
    warnings = sum(finding.severity is Severity.WARNING for finding in report.findings)
    status = "healthy" if report.ok else "unhealthy"
    loss = f", loss {format_number(report.loss)}" if report.loss is not None else ""
    return (
        f"<h1>gradcheckup report: {escape(title)}</h1>\n"
        f'<p><span class="verdict {status}">{escape(verdict(report))}</span> '
        f'<span class="meta">{errors} error(s), {warnings} warning(s); '
        f"{len(report.layers)} layers, {len(report.activations)} activation sites, "
        f"{report.passes} pass(es){loss}</span></p>"
    )


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """A table of already escaped cells; the ``numeric`` columns are right-aligned."""
    right = set(numeric)
    head = "".join(f"<th>{header}</th>" for header in headers)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="number">{cell}</td>' if column in right else f"<td>{cell}</td>"
            for column, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _findings(report: Report) -> str:
    if not report.findings:
        return "<h2>Findings</h2>\n<p>No findings: gradients look healthy.</p>"
    rows = [
        (
            f'<span class="{finding.severity.value}">{finding.severity.value}</span>',
            escape(finding.kind.value),
            f"<code>{escape(finding.where)}</code>",
            f'{escape(finding.message)}<br><span class="fix">Fix: {escape(finding.hint)}</span>',
        )
        for finding in report.findings
    ]
    return "<h2>Findings</h2>\n" + _table(("severity", "kind", "where", "what and fix"), rows)


def _chart(chart: Chart) -> str:
    style = f' style="color: {SEVERITY_COLOURS[chart.severity]}"' if chart.severity else ""
    return (
        f'<section class="chart">\n<h3{style}>{escape(chart.title)}</h3>\n'
        f'<p class="caption">{escape(chart.caption)}</p>\n{chart_svg(chart)}\n'
        f'<ul class="legend">{"".join(_legend(chart))}</ul>\n</section>'
    )


def _legend(chart: Chart) -> Iterable[str]:
    """Swatches for the series, the findings marked, the thresholds and the spans."""
    for number, series in enumerate(chart.series):
        colour = SERIES_COLOURS[number % len(SERIES_COLOURS)]
        yield _swatch(colour if chart.kind == "lines" else PLAIN_COLOUR, series.label)
    marks = {mark for series in chart.series for mark in series.marked if mark}
    for severity in sorted(marks, key=lambda severity: -severity.rank):
        yield _swatch(SEVERITY_COLOURS[severity], f"{severity.value} finding here")
    for threshold in chart.thresholds:
        colour = SEVERITY_COLOURS[threshold.severity] if threshold.severity else NEUTRAL_COLOUR
        yield _swatch(colour, threshold.label, "dashed" if threshold.bad_side else "dotted")
    for span in chart.spans:
        yield _swatch("rgba(0, 0, 0, 0.12)", span.label)


def _swatch(colour: str, label: str, line: str = "") -> str:
    paint = f"border-color: {colour}" if line else f"background: {colour}"
    return f'<li><span class="swatch {line}" style="{paint}"></span>{escape(label)}</li>'


def _layers(report: Report) -> str:
    flags = layer_flags(report)
    rows = [
        (
            "-" if layer.depth_index is None else str(layer.depth_index),
            f"<code>{escape(display_name(layer.name))}</code>",
            escape(layer.module_type),
            str(layer.param_count),
            format_number(layer.grad_norm),
            format_number(layer.grad_to_weight),
            format_number(layer.unit_signal),
            format_number(layer.backward_gain),
            f'<span class="flag">{escape(flags[layer.name])}</span>',
        )
        for layer in report.layers
    ]
    return (
        "<h2>Layers, in forward order</h2>\n"
        '<p class="note">grad: ||dL/dW||; grad/w: grad / ||W||; signal/unit: the backward '
        "signal per unit the depth rule compares; gain: ||dL/din|| / ||dL/dout||.</p>\n"
        + _table(
            ("#", "layer", "type", "params", "grad", "grad/w", "signal/unit", "gain", "flags"),
            rows,
            numeric=(0, 3, 4, 5, 6, 7),
        )
    )


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _activations(report: Report) -> str:
    if not report.activations:
        return ""
    rows = [
        (
            f"<code>{escape(site.name)}</code>",
            escape(site.function),
            escape(site.unit_axis or "-"),
            "-" if site.units is None else str(site.units),
            str(site.samples_per_unit),
            _fraction(site.dead_fraction),
            _fraction(site.saturated_fraction),
        )
        for site in report.activations
    ]
    return "<h2>Activation sites</h2>\n" + _table(
        ("site", "function", "unit", "units", "samples/unit", "dead", "saturated"),
        rows,
        numeric=(3, 4, 5, 6),
    )


def _through_time(report: Report) -> str:
    if not report.temporal:
        return ""
    rows = [
        (
            f"<code>{escape(display_name(stats.name))}</code>",
            escape(stats.module_type),
            str(len(stats.step_grad_norms)),
            format_number(stats.first_to_last),
            "-" if stats.memory_horizon is None else str(stats.memory_horizon),
        )
        for stats in report.temporal
    ]
    return "<h2>Recurrent layers</h2>\n" + _table(
        ("layer", "type", "steps", "first/last step", "memory horizon (steps)"),
        rows,
        numeric=(2, 3, 4),
    )


def _steps(report: Report) -> str:
    if not report.steps:
        return ""
    shown = report.steps[-_STEPS_SHOWN:]
    rows = [
        (
            escape(step_label(step)),
            format_number(step.grad_norm),
            format_number(step.grad_norm_at_step),
            escape(", ".join(f"{clip.kind} {clip.bound:g}" for clip in step.clip_calls) or "-"),
            format_number(step.amp_scale),
            escape(
                ", ".join(
                    flag
                    for flag, on in (("skipped", step.skipped), ("non-finite", step.nonfinite))
                    if on
                )
            ),
        )
        for step in shown
    ]
    more = len(report.steps) - len(shown)
    note = (
        f'<p class="note">The last {len(shown)} steps; {more} earlier ones are in the JSON.</p>\n'
        if more
        else ""
    )
    return (
        "<h2>Optimizer steps</h2>\n"
        + note
        + _table(
            ("step", "grad norm", "at step()", "clipping", "amp scale", "flags"),
            rows,
            numeric=(1, 2, 4),
        )
    )


def _notes(report: Report) -> str:
    lines = [f"not measured: {note}" for note in report.unavailable]
    lines += [
        f"probe error (your passes were unaffected): {error}" for error in report.probe_errors
    ]
    if not lines:
        return ""
    return "\n".join(f'<p class="note">{escape(line)}</p>' for line in lines)
