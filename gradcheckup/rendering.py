"""Rich rendering of a Report: layer table, gradient-flow chart, activations, findings.

Colour follows rich's rules (off with NO_COLOR, or when stdout is not a terminal), and
every piece of information is also in the text, so CI logs lose nothing. The renderer
shows what the rules concluded and judges nothing itself: colours and flags come from
``report.findings`` or from the one definition in ``report.py`` (``exceeds_clip_limit``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from rich import box
from rich.console import Console, Group, RenderableType, group
from rich.table import Table
from rich.text import Text

from gradcheckup.report import (
    LayerStats,
    Report,
    Severity,
    backward_signal,
    depth_ends,
    depth_finding_severities,
    depth_profile,
    display_name,
    exceeds_clip_limit,
    format_number,
    layer_flags,
    layers_worth_showing,
    sites_worth_showing,
)

__all__ = ["flow_chart", "render"]

_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_BAR_STYLE = {Severity.ERROR: "red", Severity.WARNING: "yellow"}
_DECADES_SHOWN = 12


_FINDINGS_SHOWN = 50
"""Findings printed in the terminal (errors first); the JSON report has all of them."""


def _layer_table(report: Report) -> Table:
    flags = layer_flags(report)
    table = Table(
        title="Layers, in forward order",
        caption="grad: ||dL/dW||   grad/w: grad / ||W||   dL/dout: backward signal reaching "
        "the layer   gain: ||dL/din|| / ||dL/dout||",
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column, justify, wraps in [
        ("#", "right", False),
        ("layer", "left", True),
        ("type", "left", False),
        ("grad", "right", False),
        ("grad/w", "right", False),
        ("dL/dout", "right", False),
        ("gain", "right", False),
        ("flags", "left", True),
    ]:
        table.add_column(
            column,
            justify=justify,
            overflow="fold",
            no_wrap=not wraps,
            min_width=10 if wraps else None,
        )
    shown = layers_worth_showing(report)
    if len(shown) < len(report.layers):
        table.title = (
            f"Layers, in forward order: {len(shown)} of {len(report.layers)} shown (those with "
            "findings, the ends, the extremes; every layer is in the JSON report)"
        )
    for layer in shown:
        table.add_row(
            "-" if layer.depth_index is None else str(layer.depth_index),
            display_name(layer.name),
            layer.module_type,
            format_number(layer.grad_norm),
            format_number(layer.grad_to_weight),
            format_number(layer.output_grad_norm),
            format_number(layer.backward_gain),
            Text(flags[layer.name], style="red" if flags[layer.name] else ""),
        )
    return table


def flow_chart(report: Report, console: Console) -> Group | None:
    """The backward signal per layer as log-scale bars, in forward order; None without one.

    The signal is dL/d(output) summed over positions per unit (``report.backward_signal``), as the
    depth judgement compares it; the two layers that stand for the ends it compares are
    marked. Bars are red or yellow only for the layers a vanishing/exploding finding is
    about (see ``_bar_styles``), never by a comparison of the renderer's own.
    """
    measured = depth_profile(report.layers)
    if not measured:
        return None
    # The ends are judged on every layer; the bars are a readable selection of them.
    first_end, last_end = depth_ends(measured, report.config.depth_window)
    profile = layers_worth_showing(report, measured)
    if len(profile) < len(measured):
        ends = {first_end.name, last_end.name}
        kept = {layer.name for layer in profile} | ends
        profile = [layer for layer in measured if layer.name in kept]
    values = [backward_signal(layer) for layer in profile]
    top = math.log10(max(values))
    bottom = max(math.log10(min(values)), top - _DECADES_SHOWN)
    span = max(top - bottom, 1e-12)
    names = [display_name(layer.name) for layer in profile]
    name_width = min(max(len(name) for name in names), 32)
    bar_width = max(10, min(50, console.width - name_width - 30))
    block = "█" if (console.encoding or "").lower().startswith("utf") else "#"
    styles = _bar_styles(report, profile)
    marks = {first_end.name: " (first end)", last_end.name: " (logits end)"}
    lines = [
        Text(
            "Gradient flow: backward signal per unit (dL/d output summed over positions), "
            f"forward order (log scale from {format_number(10**bottom)} to "
            f"{format_number(10**top)}); the depth ratio compares the marked ends",
            style="bold",
        )
    ]
    for layer, name, value in zip(profile, names, values, strict=True):
        length = max(1, round((math.log10(value) - bottom) / span * bar_width))
        line = Text(f"{name[-name_width:]:>{name_width}} ")
        line.append(block * length, style=styles.get(name, ""))
        line.append(f" {format_number(value)}{marks.get(layer.name, '')}")
        lines.append(line)
    return Group(*lines)


def _bar_styles(report: Report, profile: list[LayerStats]) -> dict[str, str]:
    """Bar style per layer name, from the vanishing/exploding findings only
    (``depth_finding_severities``): red for an error, yellow for a warning."""
    return {
        name: _BAR_STYLE.get(severity, "")
        for name, severity in depth_finding_severities(report, profile).items()
    }


def _activation_table(report: Report) -> Table | None:
    if not report.activations:
        return None
    table = Table(
        title="Activations (dead: units never active; saturated: outputs at flat ends)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column, justify, wraps in [
        ("site", "left", True),
        ("function", "left", False),
        ("unit", "left", False),
        ("units", "right", False),
        ("samples/unit", "right", False),
        ("dead", "right", False),
        ("saturated", "right", False),
    ]:
        table.add_column(column, justify=justify, overflow="fold", no_wrap=not wraps)
    shown = sites_worth_showing(report)
    if len(shown) < len(report.activations):
        table.caption = (
            f"{len(report.activations) - len(shown)} more site(s) with the lowest dead/saturated "
            "fractions not shown (all are in the JSON)"
        )
        table.caption_justify = "left"
    for site in shown:
        table.add_row(
            site.name,
            site.function,
            (site.unit_axis or "-").split(" ")[0],
            "-" if site.units is None else str(site.units),
            str(site.samples_per_unit),
            "-" if site.dead_fraction is None else f"{site.dead_fraction:.1%}",
            "-" if site.saturated_fraction is None else f"{site.saturated_fraction:.1%}",
        )
    return table


_SPARK = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 60


def _sparkline(values: list[float], ascii_only: bool = False) -> str:
    """Log-scale sparkline, one character per step (averaged down to 60 characters)."""
    if not values:
        return ""
    if len(values) > _SPARK_WIDTH:
        chunk = len(values) / _SPARK_WIDTH
        values = [
            max(values[int(i * chunk) : max(int((i + 1) * chunk), int(i * chunk) + 1)])
            for i in range(_SPARK_WIDTH)
        ]
    logs = [math.log10(v) if v > 0 and math.isfinite(v) else None for v in values]
    finite = [v for v in logs if v is not None]
    if not finite:
        return "?" * len(values)
    top, bottom = max(finite), min(finite)
    levels = "_.-=#" if ascii_only else _SPARK
    span = max(top - bottom, 1e-12)
    return "".join(
        " " if v is None else levels[round((v - bottom) / span * (len(levels) - 1))] for v in logs
    )


def _temporal(report: Report, console: Console) -> Group | None:
    if not report.temporal:
        return None
    ascii_only = not (console.encoding or "").lower().startswith("utf")
    lines = [
        Text(
            "Gradient through time: ||dL/d input at step t||, first step on the left (log scale)",
            style="bold",
        )
    ]
    for stats in report.temporal:
        steps = len(stats.step_grad_norms)
        line = Text(f"  {display_name(stats.name)} ({stats.module_type}, {steps} steps) ")
        line.append(_sparkline(stats.step_grad_norms, ascii_only), style="cyan")
        line.append(
            f"  first/last {format_number(stats.first_to_last)}, memory horizon "
            f"{'-' if stats.memory_horizon is None else stats.memory_horizon} step(s)"
        )
        lines.append(line)
    return Group(*lines)


_STEPS_SHOWN = 8


def _steps(report: Report, console: Console) -> Group | None:
    if not report.steps:
        return None
    ascii_only = not (console.encoding or "").lower().startswith("utf")
    summary = report.step_summary
    total = summary.total_steps if summary else len(report.steps)
    clipped = sum(bool(step.clip_calls) for step in report.steps)
    skipped = sum(step.skipped for step in report.steps)
    bound = report.config.max_grad_norm
    header = Text(
        f"Optimizer steps: {total} ({clipped} of the last {len(report.steps)} clipped, "
        f"{skipped} skipped by AMP; max_grad_norm {'not set' if bound is None else f'{bound:g}'})",
        style="bold",
    )
    lines: list[Text | Table] = [header]
    for optimizer in sorted({step.optimizer for step in report.steps}):
        norms = [step.grad_norm or 0.0 for step in report.steps if step.optimizer == optimizer]
        line = Text(f"  optimizer {optimizer} grad norm before clipping, per step: ")
        line.append(_sparkline(norms, ascii_only), style="cyan")
        lines.append(line)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for column in ("optimizer", "step", "grad norm", "at step()", "clipping", "amp scale", "flags"):
        table.add_column(column, justify="left" if column in ("clipping", "flags") else "right")
    for step in report.steps[-_STEPS_SHOWN:]:
        clipping = ", ".join(
            f"{clip.kind} {clip.bound:g}" + (" (scaled!)" if clip.before_unscale else "")
            for clip in step.clip_calls
        )
        flags = [
            flag for flag, on in (("skipped", step.skipped), ("non-finite", step.nonfinite)) if on
        ]
        if exceeds_clip_limit(step, report.config):
            flags.append("over max_grad_norm")
        table.add_row(
            str(step.optimizer),
            str(step.step),
            format_number(step.grad_norm),
            format_number(step.grad_norm_at_step),
            clipping or "-",
            format_number(step.amp_scale),
            Text(", ".join(flags), style="red" if flags else ""),
        )
    lines.append(table)
    return Group(*lines)


def _findings(report: Report) -> Group:
    if not report.findings:
        return Group(Text("No findings: gradients look healthy.", style="green"))
    lines = [Text("Findings", style="bold")]
    for finding in report.findings[:_FINDINGS_SHOWN]:
        line = Text("  ")
        line.append(f"{finding.severity.value.upper():7}", style=_SEVERITY_STYLE[finding.severity])
        line.append(f" {finding.kind.value} at {finding.where}: ", style="bold")
        line.append(finding.message)
        lines.append(line)
        lines.append(Text(f"          fix: {finding.hint}", style="dim"))
    hidden = len(report.findings) - _FINDINGS_SHOWN
    if hidden > 0:
        lines.append(Text(f"  ... and {hidden} more finding(s): see the JSON report", style="bold"))
    return Group(*lines)


def _headline(report: Report) -> Text:
    errors = sum(finding.severity is Severity.ERROR for finding in report.findings)
    warnings = sum(finding.severity is Severity.WARNING for finding in report.findings)
    verdict = Text(
        "HEALTHY" if report.ok else "UNHEALTHY", style="bold green" if report.ok else "bold red"
    )
    headline = Text("gradcheckup: ")
    headline.append(verdict)
    headline.append(
        f"  ({errors} error(s), {warnings} warning(s); {len(report.layers)} layers, "
        f"{len(report.activations)} activation sites, {report.passes} pass(es)"
        + (f" on {report.ranks} ranks" if report.ranks > 1 else "")
        + (f", loss {format_number(report.loss)}" if report.loss is not None else "")
        + ")"
    )
    return headline


def render(report: Report, console: Console | None = None) -> None:
    """Print ``report`` with rich.

    Args:
        report: what to print.
        console: a ``rich.console.Console`` to print to (e.g. one recording to a string,
            or with a fixed width); a default console on stdout otherwise.
    """
    console = console or Console()
    console.print(_sections(report, console))


@group()
def _sections(report: Report, console: Console) -> Iterator[RenderableType]:
    """Every section in order; optional ones that have nothing to show are left out."""
    yield _headline(report)
    yield _layer_table(report)
    optional = (
        flow_chart(report, console),
        _activation_table(report),
        _temporal(report, console),
        _steps(report, console),
    )
    yield from (section for section in optional if section is not None)
    yield _findings(report)
    for note in report.unavailable:
        yield Text(f"not measured: {note}", style="dim")
    for error in report.probe_errors:
        yield Text(f"probe error (your passes were unaffected): {error}", style="yellow")
