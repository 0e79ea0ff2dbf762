"""What the pictures of a report show, as plain data: one chart per question the findings
answer, with the ``Config`` thresholds the numbers were judged against.

- through depth: the backward signal per layer, the first-end window and the vanishing
  and exploding bands relative to the logits end (``rules/depth.py``);
- through time: the input gradient per step of each recurrent layer, relative to the
  last step, with its memory horizon (``rules/time.py``);
- training steps: the global gradient norm per optimizer step against ``max_grad_norm``
  (``rules/steps.py``);
- units: the dead or saturated fraction per activation site (``rules/units.py``).

A chart is there only when the report has its data. The PNG (``plotting.py``, matplotlib)
and the HTML report (``svg.py``, no dependency) draw the same charts. Nothing here
judges: points are coloured by the findings about them, threshold lines come from the
``Config`` (warning and error bands where it has both), step bounds from the one
definition in ``report.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeGuard

from gradcheckup.config import Config
from gradcheckup.report import (
    Finding,
    FindingKind,
    LayerStats,
    Report,
    Severity,
    StepStats,
    TemporalStats,
    backward_signal,
    bias_profile,
    depth_ends,
    depth_finding_severities,
    depth_profile,
    display_name,
    exceeds_clip_limit,
    first_end_window,
    format_number,
    sites_worth_showing,
    step_label,
)

__all__ = [
    "NEUTRAL_COLOUR",
    "PLAIN_COLOUR",
    "SERIES_COLOURS",
    "SEVERITY_COLOURS",
    "Chart",
    "Note",
    "Series",
    "Span",
    "Threshold",
    "charts",
    "label_positions",
    "verdict",
]

ChartKind = Literal["bars", "lines", "hbars"]

SEVERITY_COLOURS = {
    Severity.ERROR: "#d62728",
    Severity.WARNING: "#ff7f0e",
    Severity.INFO: "#7f7f7f",
}
"""Colours of findings and of the thresholds of their severity, in every picture."""
PLAIN_COLOUR = "#4c72b0"
"""Colour of a bar or point no finding is about."""
SERIES_COLOURS = (PLAIN_COLOUR, "#55a868")
"""Colours of the first and second line of a chart."""
NEUTRAL_COLOUR = "#555555"
"""Colour of captions, reference lines and thresholds no finding used."""


@dataclass(frozen=True)
class Threshold:
    """A line at a value a rule compares with.

    Attributes:
        value: where the line is, in the chart's units.
        label: what crossing it means, e.g. ``"vanishing error: < 0.003 x logits end"``.
        severity: the severity a finding on its bad side gets (from the ``Config`` field
            it comes from, or from the finding itself); None for a line no finding used.
        bad_side: ``"below"`` or ``"above"``: the side that is shaded; None for a
            reference line.
    """

    value: float
    label: str
    severity: Severity | None
    bad_side: Literal["below", "above"] | None


@dataclass(frozen=True)
class Series:
    """One row of numbers: a value per category (None where not measured).

    Attributes:
        label: what the numbers are.
        values: one per category of the chart.
        marked: one per category: the worst severity of the findings about that point, or
            None (empty: nothing marked).
    """

    label: str
    values: tuple[float | None, ...]
    marked: tuple[Severity | None, ...] = ()

    def mark(self, index: int) -> Severity | None:
        """The severity of the findings about point ``index``, or None."""
        return self.marked[index] if index < len(self.marked) else None


@dataclass(frozen=True)
class Span:
    """A shaded range of categories, ``start`` to ``end`` inclusive, with a label."""

    start: int
    end: int
    label: str


@dataclass(frozen=True)
class Note:
    """A short text at one category, e.g. ``"logits end"``."""

    index: int
    text: str

    def alignment(self, count: int) -> Literal["start", "middle", "end"]:
        """Where the text sits against its point among ``count`` categories: starting
        there at the first, ending there at the last (centred, it would run over the
        frame), centred otherwise."""
        if self.index == 0 and count > 1:
            return "start"
        return "end" if self.index == count - 1 and count > 1 else "middle"


@dataclass(frozen=True)
class Chart:
    """One panel: categories along one axis, values along the other.

    Attributes:
        title: what the panel shows.
        caption: how to read it, in one or two sentences.
        kind: ``"bars"`` (one series, vertical), ``"lines"`` (one or more series over
            ordered categories) or ``"hbars"`` (one series, horizontal, fractions).
        categories: the names along the category axis, in order.
        series: the values.
        value_label: the value axis' label.
        log_scale: values on a log scale (fractions are linear from 0 to 1).
        thresholds: lines at the values the rules compare with.
        spans: shaded category ranges.
        notes: texts at single categories.
        severity: the worst severity among the findings the panel is about, or None.
    """

    title: str
    caption: str
    kind: ChartKind
    categories: tuple[str, ...]
    series: tuple[Series, ...]
    value_label: str
    log_scale: bool = True
    thresholds: tuple[Threshold, ...] = ()
    spans: tuple[Span, ...] = ()
    notes: tuple[Note, ...] = ()
    severity: Severity | None = None

    def value_limits(self) -> tuple[float, float]:
        """The value axis' range: every drawable value and threshold, with a margin
        (log scale: a factor 3 either way; fractions: 0 to 1)."""
        if not self.log_scale:
            return 0.0, 1.0
        shown = [
            value
            for value in (
                *(value for series in self.series for value in series.values),
                *(threshold.value for threshold in self.thresholds),
            )
            if drawable(value, self.log_scale)
        ]
        if not shown:
            return 0.1, 10.0
        return min(shown) / 3, max(shown) * 3


def drawable(value: float | None, log_scale: bool) -> TypeGuard[float]:
    """A value a chart can place: finite, and positive on a log scale."""
    return value is not None and math.isfinite(value) and (value > 0 or not log_scale)


def label_positions(count: int, always: Iterable[int] = (), most: int = 60) -> list[int]:
    """Which of ``count`` category labels to print: all up to ``most``, else every k-th
    plus the ``always`` ones (the notes' categories)."""
    stride = max(1, math.ceil(count / most))
    return sorted({*range(0, count, stride), *(i for i in always if 0 <= i < count)})


def verdict(report: Report) -> str:
    """``"healthy"``, or ``"UNHEALTHY: "`` and the kinds of the error findings."""
    if report.ok:
        return "healthy"
    kinds = sorted({f.kind.value for f in report.findings if f.severity is Severity.ERROR})
    return "UNHEALTHY: " + ", ".join(kinds)


def charts(report: Report) -> list[Chart]:
    """The panels ``report`` has data for: depth, time (one per recurrent layer), steps
    (one per optimizer), units; those about error findings first, then warnings, so the
    first picture shows the problem."""
    panels = [
        _depth_chart(report),
        *(_time_chart(report, stats) for stats in report.temporal),
        *(_step_chart(report, optimizer) for optimizer in _optimizers(report.steps)),
        _unit_chart(report),
    ]
    present = [panel for panel in panels if panel is not None]
    return sorted(present, key=lambda panel: -panel.severity.rank if panel.severity else 1)


def _worst(severities: Iterable[Severity | None]) -> Severity | None:
    present = [severity for severity in severities if severity is not None]
    return max(present, key=lambda severity: severity.rank) if present else None


def _severity_at(
    findings: Sequence[Finding], where: str, kinds: set[FindingKind]
) -> Severity | None:
    return _worst(f.severity for f in findings if f.where == where and f.kind in kinds)


def _depth_chart(report: Report) -> Chart | None:
    """The backward signal per layer in forward order (the bias gradient where it could
    not be hooked, as the depth rule falls back), with the bands the rule compares the
    first end with."""
    profile = depth_profile(report.layers) or bias_profile(report.layers)
    if not profile:
        return None
    config = report.config
    names = tuple(display_name(layer.name) for layer in profile)
    severities = depth_finding_severities(report, profile)
    first_end, last_end = depth_ends(profile, config.depth_window)
    on_bias = profile[0].unit_signal is None
    signal = Series(
        "dL/d bias (batch-summed backward signal)" if on_bias else "backward signal per unit",
        tuple(backward_signal(layer) for layer in profile),
        tuple(severities.get(name) for name in names),
    )
    notes = (
        Note(profile.index(first_end), "first end"),
        Note(profile.index(last_end), "logits end"),
    )
    thresholds, spans, caption = _depth_judgement(profile, last_end, config, on_bias)
    return Chart(
        title="Gradient flow through depth",
        caption=caption,
        kind="bars",
        categories=names,
        series=(signal,),
        value_label=signal.label,
        thresholds=thresholds,
        spans=spans,
        notes=notes,
        severity=_worst(severities.values()),
    )


def _depth_judgement(
    profile: Sequence[LayerStats], last_end: LayerStats, config: Config, on_bias: bool
) -> tuple[tuple[Threshold, ...], tuple[Span, ...], str]:
    """The depth rule's bands (relative to the logits end), its first-end window and the
    caption; no bands for a profile shorter than ``min_depth``, which is not judged."""
    if len(profile) < config.min_depth:
        return (
            (),
            (),
            f"Fewer than min_depth={config.min_depth} layers have a backward signal: "
            "not judged through depth.",
        )
    thresholds = _relative_thresholds(
        backward_signal(last_end),
        "logits end",
        (
            ("vanishing error", config.vanishing_ratio, Severity.ERROR, "below"),
            ("vanishing warning", config.vanishing_warn_ratio, Severity.WARNING, "below"),
            ("exploding warning", config.exploding_warn_ratio, Severity.WARNING, "above"),
            ("exploding error", config.exploding_ratio, Severity.ERROR, "above"),
        ),
    )
    window = first_end_window(len(profile), config.depth_window)
    measured = (
        "dL/d bias, where the backward signal could not be hooked"
        if on_bias
        else "dL/d output summed over positions per unit"
    )
    caption = (
        f"{measured}, per layer in forward order. The largest value in the first-end "
        "window is compared with the logits end: in a shaded band it is a finding."
    )
    return thresholds, (Span(0, window - 1, "first-end window"),), caption


_Band = tuple[str, float, Severity | None, Literal["below", "above"] | None]


def _relative_thresholds(
    reference: float, reference_name: str, bands: Iterable[_Band]
) -> tuple[Threshold, ...]:
    """Lines at ``ratio * reference`` for each ``(name, ratio, severity, bad side)``,
    labelled like ``"vanishing error: < 0.003 x logits end"``."""
    if not (math.isfinite(reference) and reference > 0):
        return ()
    signs = {"below": "< ", "above": "> ", None: ""}
    return tuple(
        Threshold(
            reference * ratio,
            f"{name}: {signs[side]}{ratio:g} x {reference_name}",
            severity,
            side,
        )
        for name, ratio, severity, side in bands
    )


def _time_chart(report: Report, stats: TemporalStats) -> Chart | None:
    """The input gradient per step of one recurrent layer, with the lines the
    through-time rule compares the first step with (relative to the last step) and the
    memory horizon. The vanishing line takes the severity of a finding about the layer:
    the rule's severity depends on the cell (gated or not), which is not redrawn here."""
    norms = stats.step_grad_norms
    if not norms:
        return None
    config = report.config
    name = display_name(stats.name)
    findings = report.findings
    vanishing = _severity_at(findings, name, {FindingKind.VANISHING_THROUGH_TIME})
    exploding = _severity_at(findings, name, {FindingKind.EXPLODING_THROUGH_TIME})
    severity = _worst((vanishing, exploding))
    thresholds = _relative_thresholds(
        norms[-1],
        "last step",
        (
            ("vanishing through time", config.temporal_vanishing_ratio, vanishing, "below"),
            ("exploding through time", config.temporal_exploding_ratio, Severity.ERROR, "above"),
            ("memory horizon", config.memory_horizon_fraction, None, None),
        ),
    )
    spans = ()
    if stats.memory_horizon is not None:
        start = max(0, len(norms) - 1 - stats.memory_horizon)
        spans = (Span(start, len(norms) - 1, f"memory horizon: {stats.memory_horizon} step(s)"),)
    kind = "gated, " if stats.gated else ""
    return Chart(
        title=f"Gradient through time: {name} ({stats.module_type}, {len(norms)} steps)",
        caption=(
            f"||dL/d input at step t||, first step on the left ({kind}time axis "
            f"{stats.time_axis}). The first step over the last is "
            f"{format_number(stats.first_to_last)}; below the vanishing line early steps "
            "barely influence learning."
        ),
        kind="lines",
        categories=tuple(str(step) for step in range(len(norms))),
        series=(
            Series(
                "||dL/d input at step t||",
                tuple(norms),
                (severity,) + (None,) * (len(norms) - 1),
            ),
        ),
        value_label="input gradient norm",
        thresholds=thresholds,
        spans=spans,
        notes=(Note(0, "first step"),),
        severity=severity,
    )


def _optimizers(steps: Sequence[StepStats]) -> list[int]:
    return sorted({step.optimizer for step in steps})


def _step_chart(report: Report, optimizer: int) -> Chart:
    """The global gradient norm per step of one optimizer against ``max_grad_norm``.

    A step is marked with the findings that name it, and a step over the clip limit
    (``exceeds_clip_limit``) with the missing-clipping finding about the optimizer.
    """
    config = report.config
    own = [step for step in report.steps if step.optimizer == optimizer]
    labels = [step_label(step) for step in own]
    findings = report.findings
    missing = _worst(
        f.severity for f in findings if f.kind is FindingKind.MISSING_CLIPPING and f.where in labels
    )
    marked = tuple(
        _worst(
            (
                _worst(f.severity for f in findings if f.where == label),
                missing if exceeds_clip_limit(step, config) else None,
            )
        )
        for step, label in zip(own, labels, strict=True)
    )
    clipped = any(step.clip_calls for step in own)
    series = [
        Series(
            "before clipping" if clipped else "global gradient norm",
            tuple(step.grad_norm for step in own),
            marked,
        )
    ]
    if clipped:
        series.append(Series("at optimizer.step()", tuple(step.grad_norm_at_step for step in own)))
    thresholds: tuple[Threshold, ...] = ()
    if config.max_grad_norm is not None:
        thresholds = (
            Threshold(
                config.max_grad_norm, f"max_grad_norm {config.max_grad_norm:g}", missing, "above"
            ),
        )
    return Chart(
        title=f"Optimizer {optimizer}: gradient norm per step",
        caption=_step_caption(report, own, clipped),
        kind="lines",
        categories=tuple(str(step.step) for step in own),
        series=tuple(series),
        value_label="global gradient norm",
        thresholds=thresholds,
        notes=tuple(_step_notes(own)),
        severity=_worst(marked),
    )


def _step_caption(report: Report, own: Sequence[StepStats], clipped: bool) -> str:
    bound = report.config.max_grad_norm
    parts = [
        f"{sum(bool(step.clip_calls) for step in own)} of {len(own)} steps clipped",
        "max_grad_norm not set: no bound required"
        if bound is None
        else f"steps above max_grad_norm={bound:g} break the bound",
    ]
    earlier = report.step_summary.earlier_steps if report.step_summary else 0
    if earlier:
        parts.append(f"{earlier} earlier step(s) not shown")
    return "; ".join(parts) + "."


_STEP_NOTES = 8


def _step_notes(own: Sequence[StepStats]) -> Iterable[Note]:
    notes = [
        Note(index, "skipped" if step.skipped else "non-finite")
        for index, step in enumerate(own)
        if step.skipped or step.nonfinite
    ]
    return notes[:_STEP_NOTES]


_UNIT_FINDINGS = {FindingKind.DEAD_RELU, FindingKind.SATURATION}


def _unit_chart(report: Report) -> Chart | None:
    """The judged fraction per activation site (units never active for the ReLU family,
    outputs at the flat ends for sigmoid, tanh and the hard ones), the worst sites when
    there are many, with the warning and error fractions of the families shown."""
    sites = [
        site
        for site in sites_worth_showing(report)
        if site.dead_fraction is not None or site.saturated_fraction is not None
    ]
    if not sites:
        return None
    config = report.config
    dead = [site.dead_fraction is not None for site in sites]
    bands: list[tuple[str, float, Severity]] = []
    if any(dead):
        bands += [
            ("dead", config.dead_relu_warn_fraction, Severity.WARNING),
            ("dead", config.dead_relu_fraction, Severity.ERROR),
        ]
    if not all(dead):
        bands += [
            ("saturated", config.saturation_warn_fraction, Severity.WARNING),
            ("saturated", config.saturation_fraction, Severity.ERROR),
        ]
    marked = tuple(_severity_at(report.findings, site.name, _UNIT_FINDINGS) for site in sites)
    hidden = len(report.activations) - len(sites)
    return Chart(
        title="Dead and saturated units per activation site",
        caption=(
            "Dead: fraction of a ReLU-family site's units never active over all samples; "
            "saturated: fraction of a sigmoid/tanh site's outputs at the flat ends. At or "
            "right of a line of its kind is a finding."
            + (f" {hidden} more site(s) with lower fractions not shown." if hidden else "")
        ),
        kind="hbars",
        categories=tuple(
            f"{site.name} ({site.function}, {'dead' if is_dead else 'saturated'})"
            for site, is_dead in zip(sites, dead, strict=True)
        ),
        series=(
            Series(
                "fraction dead / saturated",
                tuple(
                    site.dead_fraction if is_dead else site.saturated_fraction
                    for site, is_dead in zip(sites, dead, strict=True)
                ),
                marked,
            ),
        ),
        value_label="fraction dead / saturated",
        log_scale=False,
        thresholds=_fraction_thresholds(bands),
        severity=_worst(marked),
    )


def _fraction_thresholds(bands: Iterable[tuple[str, float, Severity]]) -> tuple[Threshold, ...]:
    """One line per (fraction, severity); kinds that share one are named together."""
    kinds: dict[tuple[float, Severity], list[str]] = {}
    for kind, fraction, severity in bands:
        kinds.setdefault((fraction, severity), []).append(kind)
    return tuple(
        Threshold(
            fraction, f"{' and '.join(names)} {severity.value}: >= {fraction:g}", severity, "above"
        )
        for (fraction, severity), names in kinds.items()
    )
