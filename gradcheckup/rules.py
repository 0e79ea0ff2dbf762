"""From stats to findings: pure functions of (stats, Config), easy to test one by one."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheckup.config import Config
from gradcheckup.hints import HINTS, exploding_hint, through_time_hint, vanishing_hint
from gradcheckup.report import (
    ActivationStats,
    Finding,
    FindingKind,
    LayerStats,
    Severity,
    StepStats,
    StepSummary,
    TemporalStats,
    display_name,
)

_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def diagnose(
    layers: Sequence[LayerStats],
    activations: Sequence[ActivationStats],
    config: Config,
    loss: float | None = None,
    temporal: Sequence[TemporalStats] = (),
    steps: Sequence[StepStats] = (),
    step_summary: StepSummary | None = None,
) -> list[Finding]:
    """All findings for one report, errors first."""
    # With optimizer steps watched, NaN/inf is judged per step, so that steps the AMP
    # scaler skipped (expected while its scale calibrates) are not errors.
    judged_per_step = any(step.nonfinite or step.skipped for step in steps)
    findings = [
        *depth_findings(layers, activations, config),
        *through_time_findings(temporal, config),
        *(nonfinite_step_findings(steps) if judged_per_step else nonfinite_findings(layers, loss)),
        *clipping_before_unscale_findings(steps),
        *missing_clipping_findings(steps, step_summary, config),
        *step_growth_findings(steps, config),
        *collapse_findings(layers),
        *dead_relu_findings(activations, config),
        *saturation_findings(activations, config),
        *no_gradient_findings(layers),
    ]
    return sorted(findings, key=lambda finding: _SEVERITY_ORDER[finding.severity])


def depth_profile(layers: Sequence[LayerStats]) -> list[LayerStats]:
    """Layers with a measured, finite, non-zero backward signal, in forward order.

    Exact zeros are left out: a zero-initialised head or residual branch blocks the
    gradient by design at initialisation, which is not a trend through depth.
    """
    ordered = sorted(
        (layer for layer in layers if layer.depth_index is not None),
        key=lambda layer: layer.depth_index or 0,
    )
    return [
        layer
        for layer in ordered
        if layer.output_grad_norm is not None
        and math.isfinite(layer.output_grad_norm)
        and layer.output_grad_norm > 0
    ]


def _signal(layer: LayerStats) -> float:
    if layer.output_grad_norm is not None:
        return layer.output_grad_norm
    return layer.bias_grad_norm or 0.0


def bias_profile(layers: Sequence[LayerStats]) -> list[LayerStats]:
    """Where no backward signal could be hooked: layers with a bias gradient, in
    definition order (their dL/d bias is the batch-summed backward signal)."""
    if any(layer.output_grad_norm is not None for layer in layers):
        return []
    return [
        layer
        for layer in sorted(
            layers, key=lambda layer: (layer.depth_index is None, layer.depth_index or 0)
        )
        if layer.bias_grad_norm is not None
        and math.isfinite(layer.bias_grad_norm)
        and layer.bias_grad_norm > 0
    ]


def depth_ratio(
    layers: Sequence[LayerStats], config: Config
) -> tuple[float, LayerStats, LayerStats, list[LayerStats]] | None:
    """Backward signal at the first layers over the signal at the last layers.

    Each end is the largest signal among the first (last) ``depth_window`` of the
    layers, so layers that legitimately get tiny gradients do not decide the result.
    Returns (ratio, first-end layer, last-end layer, profile), or None when fewer than
    ``min_depth`` layers have a signal.
    """
    profile = depth_profile(layers) or bias_profile(layers)
    if len(profile) < config.min_depth:
        return None
    window = max(1, int(len(profile) * config.depth_window))
    first_end = max(profile[:window], key=_signal)
    last_end = max(profile[-window:], key=_signal)
    ratio = _signal(first_end) / (_signal(last_end) or 1.0)
    return ratio, first_end, last_end, profile


def depth_findings(
    layers: Sequence[LayerStats], activations: Sequence[ActivationStats], config: Config
) -> list[Finding]:
    measured = depth_ratio(layers, config)
    if measured is None:
        return []
    ratio, first_end, last_end, profile = measured
    ends = (
        f"first layers (largest at {display_name(first_end.name)!r}: "
        f"{_signal(first_end):.3g}) vs last layers (largest at "
        f"{display_name(last_end.name)!r}: {_signal(last_end):.3g}), "
        f"over {len(profile)} layers"
    )
    if profile[0].output_grad_norm is None:
        ends += "; judged on bias gradients, as the backward signal could not be hooked"
    # Name the first layer that has a signal at all: when the gradient underflows to
    # exactly 0 before the input, that layer is where the user should look.
    with_signal = (
        sorted(
            (
                layer
                for layer in layers
                if layer.depth_index is not None and layer.output_grad_norm is not None
            ),
            key=lambda layer: layer.depth_index or 0,
        )
        or profile
    )
    where = display_name(with_signal[0].name)
    zeros = sum(1 for layer in with_signal if layer.output_grad_norm == 0)
    if zeros:
        ends += f"; {zeros} layer(s) got exactly zero"
    vanishing = severity_band(
        ratio, config.vanishing_ratio, config.vanishing_warn_ratio, worse_when="lower"
    )
    if vanishing is not None:
        severity, threshold = vanishing
        kind, hint = FindingKind.VANISHING, vanishing_hint(site.function for site in activations)
        shape = f"shrinks {1 / ratio:.3g}x from the last layers to the first"
        shape += f": ratio {ratio:.3g} < {threshold:g}"
    else:
        exploding = severity_band(
            ratio, config.exploding_ratio, config.exploding_warn_ratio, worse_when="higher"
        )
        if exploding is None:
            return []
        severity, threshold = exploding
        kind, hint = FindingKind.EXPLODING, exploding_hint()
        shape = f"grows {ratio:.3g}x from the last layers to the first"
        shape += f": ratio {ratio:.3g} > {threshold:g}"
    return [
        Finding(
            kind=kind,
            severity=severity,
            where=where,
            value=ratio,
            threshold=threshold,
            message=f"The backward signal {shape} ({ends}).",
            hint=hint,
        )
    ]


def severity_band(
    value: float, error_at: float, warn_at: float, worse_when: str
) -> tuple[Severity, float] | None:
    """Error or warning (and the threshold crossed) for a value, or None.

    The error threshold is checked first, so an error threshold set milder than the
    warning one still gives an error.
    """

    def crosses(threshold: float) -> bool:
        return value < threshold if worse_when == "lower" else value >= threshold

    if crosses(error_at):
        return Severity.ERROR, error_at
    if crosses(warn_at):
        return Severity.WARNING, warn_at
    return None


def nonfinite_findings(layers: Sequence[LayerStats], loss: float | None) -> list[Finding]:
    affected = [layer for layer in layers if layer.nonfinite_rank is not None]
    if loss is not None and not math.isfinite(loss):
        return [
            Finding(
                kind=FindingKind.NONFINITE,
                severity=Severity.ERROR,
                where="loss",
                value=loss,
                threshold=None,
                message=(
                    f"The loss itself is {loss}, so the problem is in the forward pass or the "
                    f"loss function ({len(affected)} layers got non-finite gradients)."
                ),
                hint=HINTS[FindingKind.NONFINITE],
            )
        ]
    if not affected:
        return []
    origin = min(affected, key=lambda layer: layer.nonfinite_rank or 0)
    if origin.nonfinite_count:
        amount = f"{origin.nonfinite_count} NaN/inf gradient entries"
        value = float(origin.nonfinite_count)
    else:
        amount = f"NaN/inf gradients in {origin.nonfinite_passes} pass(es)"
        value = float(origin.nonfinite_passes)
    return [
        Finding(
            kind=FindingKind.NONFINITE,
            severity=Severity.ERROR,
            where=display_name(origin.name),
            value=value,
            threshold=0.0,
            message=(
                f"Non-finite gradients first appear at {display_name(origin.name)!r} in backward "
                f"order ({amount}); {len(affected)} layer(s) affected in all."
            ),
            hint=HINTS[FindingKind.NONFINITE],
        )
    ]


def _graded(
    value: float, error_at: float, warn_at: float, samples: int, config: Config
) -> tuple[Severity, float, str] | None:
    band = severity_band(value, error_at, warn_at, worse_when="higher")
    if band is None:
        return None
    severity, threshold = band
    if samples < config.min_samples_per_unit:
        note = (
            f" Only {samples} observations per unit (< min_samples_per_unit="
            f"{config.min_samples_per_unit}): too few to be sure, so this is only info."
        )
        return Severity.INFO, threshold, note
    return severity, threshold, ""


def dead_relu_findings(activations: Sequence[ActivationStats], config: Config) -> list[Finding]:
    findings = []
    for site in activations:
        if site.dead_fraction is None:
            continue
        graded = _graded(
            site.dead_fraction,
            config.dead_relu_fraction,
            config.dead_relu_warn_fraction,
            site.samples_per_unit,
            config,
        )
        if graded is None:
            continue
        severity, threshold, note = graded
        dead_units = round(site.dead_fraction * (site.units or 0))
        findings.append(
            Finding(
                kind=FindingKind.DEAD_RELU,
                severity=severity,
                where=site.name,
                value=site.dead_fraction,
                threshold=threshold,
                message=(
                    f"{site.dead_fraction:.0%} of its units ({dead_units} of {site.units} "
                    f"{site.unit_axis}) were never positive over {site.samples_per_unit} "
                    f"observations each (threshold {threshold:.0%}).{note}"
                ),
                hint=HINTS[FindingKind.DEAD_RELU],
            )
        )
    return findings


def saturation_findings(activations: Sequence[ActivationStats], config: Config) -> list[Finding]:
    findings = []
    for site in activations:
        if site.saturated_fraction is None:
            continue
        graded = _graded(
            site.saturated_fraction,
            config.saturation_fraction,
            config.saturation_warn_fraction,
            site.samples_per_unit,
            config,
        )
        if graded is None:
            continue
        severity, threshold, note = graded
        findings.append(
            Finding(
                kind=FindingKind.SATURATION,
                severity=severity,
                where=site.name,
                value=site.saturated_fraction,
                threshold=threshold,
                message=(
                    f"{site.saturated_fraction:.0%} of its {site.function} outputs are within "
                    f"{config.saturation_margin:.0%} of the range's ends, where the derivative "
                    f"is nearly 0 (threshold {threshold:.0%}).{note}"
                ),
                hint=HINTS[FindingKind.SATURATION],
            )
        )
    return findings


def no_gradient_findings(layers: Sequence[LayerStats]) -> list[Finding]:
    if not any(layer.passes for layer in layers):
        return [
            Finding(
                kind=FindingKind.NO_GRADIENT,
                severity=Severity.INFO,
                where="(model)",
                value=None,
                threshold=None,
                message="No backward pass reached the model's parameters while it was watched.",
                hint="Call loss.backward() inside the `with gcu.watch(model)` block.",
            )
        ]
    findings = []
    for layer in layers:
        if not layer.params_without_grad:
            continue
        names = ", ".join(layer.params_without_grad)
        findings.append(
            Finding(
                kind=FindingKind.NO_GRADIENT,
                severity=Severity.WARNING,
                where=display_name(layer.name),
                value=float(len(layer.params_without_grad)),
                threshold=None,
                message=f"Trainable parameter(s) {names} received no gradient in any pass.",
                hint=HINTS[FindingKind.NO_GRADIENT],
            )
        )
    return findings


def through_time_findings(temporal: Sequence[TemporalStats], config: Config) -> list[Finding]:
    """Vanishing/exploding gradient through time, from each recurrent module's profile.

    Vanishing is an error for plain RNNs and a warning for LSTM/GRU: their gates can learn
    to carry the gradient (the forget gate opens), a plain tanh RNN's cannot.
    """
    findings = []
    for stats in temporal:
        ratio = stats.first_to_last
        steps = len(stats.step_grad_norms)
        if ratio is None or steps < 2 or not math.isfinite(ratio):
            continue
        shape = (
            f"over {steps} steps (memory horizon: {stats.memory_horizon} step(s) back stay above "
            f"{config.memory_horizon_fraction:g} of the last step's gradient)"
        )
        if ratio < config.temporal_vanishing_ratio:
            findings.append(
                Finding(
                    kind=FindingKind.VANISHING_THROUGH_TIME,
                    severity=Severity.WARNING if stats.gated else Severity.ERROR,
                    where=display_name(stats.name),
                    value=ratio,
                    threshold=config.temporal_vanishing_ratio,
                    message=(
                        f"The gradient reaching the first step's input is {ratio:.3g} of the last "
                        f"step's (< {config.temporal_vanishing_ratio:g}) {shape}: early steps "
                        "barely influence learning."
                    ),
                    hint=through_time_hint(vanishing=True, gated=stats.gated),
                )
            )
        elif ratio > config.temporal_exploding_ratio:
            findings.append(
                Finding(
                    kind=FindingKind.EXPLODING_THROUGH_TIME,
                    severity=Severity.ERROR,
                    where=display_name(stats.name),
                    value=ratio,
                    threshold=config.temporal_exploding_ratio,
                    message=(
                        f"The gradient reaching the first step's input is {ratio:.3g}x the last "
                        f"step's (> {config.temporal_exploding_ratio:g}) {shape}."
                    ),
                    hint=through_time_hint(vanishing=False, gated=stats.gated),
                )
            )
    return findings


def _step_label(step: StepStats) -> str:
    return f"optimizer {step.optimizer}, step {step.step}"


def nonfinite_step_findings(steps: Sequence[StepStats]) -> list[Finding]:
    findings = []
    bad = [step for step in steps if step.nonfinite and not step.skipped]
    if bad:
        first = bad[0]
        place = (
            f"at {first.first_nonfinite_layer!r}"
            if first.first_nonfinite_layer
            else "in a gradient"
        )
        findings.append(
            Finding(
                kind=FindingKind.NONFINITE,
                severity=Severity.ERROR,
                where=first.first_nonfinite_layer or _step_label(first),
                value=float(first.step),
                threshold=None,
                message=(
                    f"At {_step_label(first)} NaN/inf first appear {place} in backward order; "
                    f"{len(bad)} step(s) reached the optimizer with non-finite gradients."
                ),
                hint=HINTS[FindingKind.NONFINITE],
            )
        )
    skipped = [step for step in steps if step.skipped]
    if skipped:
        listed = ", ".join(str(step.step) for step in skipped[:10])
        findings.append(
            Finding(
                kind=FindingKind.NONFINITE,
                severity=Severity.INFO,
                where="amp",
                value=float(len(skipped)),
                threshold=None,
                message=(
                    f"The GradScaler skipped {len(skipped)} step(s) for inf/NaN in the scaled "
                    f"gradients (steps {listed}); normal while its scale calibrates, not counted "
                    "as explosions of the model."
                ),
                hint="Many skips in a row mean the model itself overflows: see the layers' norms.",
            )
        )
    return findings


def clipping_before_unscale_findings(steps: Sequence[StepStats]) -> list[Finding]:
    findings = []
    flagged: set[int] = set()
    for step in steps:
        clip = next((clip for clip in step.clip_calls if clip.before_unscale), None)
        if clip is None or step.optimizer in flagged:
            continue
        flagged.add(step.optimizer)
        count = sum(
            any(c.before_unscale for c in other.clip_calls)
            for other in steps
            if other.optimizer == step.optimizer
        )
        scale = f" (scale {step.amp_scale:g})" if step.amp_scale else ""
        measured = f", measuring {clip.returned_norm:.3g}" if clip.returned_norm is not None else ""
        findings.append(
            Finding(
                kind=FindingKind.CLIPPING_BEFORE_UNSCALE,
                severity=Severity.ERROR,
                where=_step_label(step),
                value=clip.bound,
                threshold=None,
                message=(
                    f"clip_grad_{clip.kind}_ with bound {clip.bound:g} ran on AMP-scaled "
                    f"gradients{scale}{measured}, before scaler.unscale_(optimizer): the bound "
                    f"applied to gradients that are scale times too large ({count} step(s))."
                ),
                hint=HINTS[FindingKind.CLIPPING_BEFORE_UNSCALE],
            )
        )
    return findings


def missing_clipping_findings(
    steps: Sequence[StepStats], summary: StepSummary | None, config: Config
) -> list[Finding]:
    bound = config.max_grad_norm
    ran = [step for step in steps if not step.skipped and step.grad_norm_at_step is not None]
    if bound is None:
        return _explosive_without_clipping(ran, summary, config)
    limit = bound * (1 + config.clip_tolerance)
    findings = []
    for optimizer in sorted({step.optimizer for step in ran}):
        own = [step for step in ran if step.optimizer == optimizer]
        over = [step for step in own if (step.grad_norm_at_step or 0.0) > limit]
        if not over:
            continue
        first, largest = over[0], max(over, key=lambda step: step.grad_norm_at_step or 0.0)
        bounds = sorted(
            {clip.bound for step in own for clip in step.clip_calls if clip.kind == "norm"}
        )
        if bounds:
            clipped = sum(any(clip.kind == "norm" for clip in step.clip_calls) for step in own)
            clipping = (
                f"clip_grad_norm_ was called with max_norm {', '.join(f'{b:g}' for b in bounds)}"
                f" on {clipped} of {len(own)} step(s)"
            )
            clipping += " (looser than required)" if min(bounds) > limit else ""
        else:
            clipping = "no clip_grad_norm_ call was observed"
        findings.append(
            Finding(
                kind=FindingKind.MISSING_CLIPPING,
                severity=Severity.ERROR,
                where=_step_label(first),
                value=first.grad_norm_at_step,
                threshold=bound,
                message=(
                    f"{len(over)} of {len(own)} step(s) reached optimizer {optimizer} with a "
                    f"global gradient norm above max_grad_norm={bound:g}: first step "
                    f"{first.step} with {first.grad_norm_at_step:.4g}, largest "
                    f"{largest.grad_norm_at_step:.4g} at step {largest.step}; {clipping}."
                ),
                hint=HINTS[FindingKind.MISSING_CLIPPING],
            )
        )
    earlier = summary.earlier_max_grad_norm_at_step if summary else None
    if earlier is not None and earlier > limit:
        findings.append(
            Finding(
                kind=FindingKind.MISSING_CLIPPING,
                severity=Severity.ERROR,
                where="earlier steps",
                value=earlier,
                threshold=bound,
                message=(
                    f"Among the {summary.earlier_steps if summary else 0} steps older than the "
                    f"history window, one reached the optimizer with norm {earlier:.4g} > "
                    f"max_grad_norm={bound:g}."
                ),
                hint=HINTS[FindingKind.MISSING_CLIPPING],
            )
        )
    return findings


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _explosive_without_clipping(
    ran: Sequence[StepStats], summary: StepSummary | None, config: Config
) -> list[Finding]:
    if any(step.clip_calls for step in ran) or (summary and summary.earlier_clipped_steps):
        return []
    norms = [step.grad_norm_at_step for step in ran if step.grad_norm_at_step is not None]
    finite = [norm for norm in norms if math.isfinite(norm)]
    if len(finite) < 3:
        return []
    median = _median(finite)
    spikes = [
        step
        for step in ran
        if step.grad_norm_at_step is not None
        and math.isfinite(step.grad_norm_at_step)
        and step.grad_norm_at_step > config.explosive_step_factor * median
    ]
    if not spikes:
        return []
    first = spikes[0]
    return [
        Finding(
            kind=FindingKind.MISSING_CLIPPING,
            severity=Severity.WARNING,
            where=_step_label(first),
            value=first.grad_norm_at_step,
            threshold=config.explosive_step_factor * median,
            message=(
                f"{len(spikes)} step(s) had a gradient norm over {config.explosive_step_factor:g}x "
                f"the median ({median:.3g}), first step {first.step} with "
                f"{first.grad_norm_at_step:.4g}, and no gradient clipping was observed. Set "
                "Config.max_grad_norm to require a bound."
            ),
            hint=HINTS[FindingKind.MISSING_CLIPPING],
        )
    ]


def step_growth_findings(steps: Sequence[StepStats], config: Config) -> list[Finding]:
    findings = []
    for optimizer in sorted({step.optimizer for step in steps}):
        own = [
            step
            for step in steps
            if step.optimizer == optimizer
            and not step.skipped
            and step.grad_norm is not None
            and math.isfinite(step.grad_norm)
            and step.grad_norm > 0
        ]
        if len(own) < 8:
            continue
        quarter = len(own) // 4
        early = _median([step.grad_norm or 0.0 for step in own[:quarter]])
        late = _median([step.grad_norm or 0.0 for step in own[-quarter:]])
        growth = late / early
        if growth <= config.step_growth_ratio:
            continue
        start = next(step for step in own if (step.grad_norm or 0.0) > 10 * early)
        findings.append(
            Finding(
                kind=FindingKind.EXPLODING,
                severity=Severity.ERROR,
                where=_step_label(start),
                value=growth,
                threshold=config.step_growth_ratio,
                message=(
                    f"The global gradient norm of optimizer {optimizer} grew {growth:.3g}x during "
                    f"training (median {early:.3g} over the first quarter of the steps, {late:.3g} "
                    f"over the last); it first exceeded 10x the start at step {start.step}."
                ),
                hint=exploding_hint(),
            )
        )
    return findings


def collapse_findings(layers: Sequence[LayerStats]) -> list[Finding]:
    return [
        Finding(
            kind=FindingKind.VANISHING,
            severity=Severity.ERROR,
            where=display_name(layer.name),
            value=float(layer.zero_since_step),
            threshold=None,
            message=(
                f"Its gradient was non-zero, then exactly zero on every step from step "
                f"{layer.zero_since_step} on: the layer stopped learning during training."
            ),
            hint=HINTS[FindingKind.DEAD_RELU],
        )
        for layer in layers
        if layer.zero_since_step is not None
    ]
