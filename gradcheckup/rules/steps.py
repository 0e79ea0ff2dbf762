"""Rules on the watched optimizer steps (``probes/steps.py``): non-finite steps, clipping
on AMP-scaled gradients, missing clipping, diverging step norms without a clip bound and
step norms growing during training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from gradcheckup.config import Config
from gradcheckup.report import (
    Finding,
    FindingKind,
    Severity,
    StepStats,
    StepSummary,
    exceeds_clip_limit,
    step_label,
)
from gradcheckup.rules._finding import finding
from gradcheckup.rules.hints import exploding_hint

DIVERGENCE_HINT = (
    "Lower the learning rate (or warm it up), and clip the gradient norm "
    "(torch.nn.utils.clip_grad_norm_) before optimizer.step(); set Config.max_grad_norm to "
    "require a bound."
)


def _ran(step: StepStats) -> bool:
    """The optimizer ran the step and its norm at ``step()`` was measured."""
    return not step.skipped and step.grad_norm_at_step is not None


def _per_optimizer(
    steps: Sequence[StepStats], keep: Callable[[StepStats], bool]
) -> Iterator[tuple[int, list[StepStats]]]:
    """Each optimizer (by position) with those of its steps that ``keep`` accepts."""
    for optimizer in sorted({step.optimizer for step in steps}):
        yield optimizer, [step for step in steps if step.optimizer == optimizer and keep(step)]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def nonfinite_step_findings(steps: Sequence[StepStats]) -> list[Finding]:
    """NaN/inf judged per step: an error naming the first step (and layer) where non-finite
    gradients reached the optimizer, and info on the steps the AMP GradScaler skipped
    (expected while its scale calibrates). No ``Config`` threshold."""
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
            finding(
                FindingKind.NONFINITE,
                Severity.ERROR,
                first.first_nonfinite_layer or step_label(first),
                f"At {step_label(first)} NaN/inf first appear {place} in backward order; "
                f"{len(bad)} step(s) reached the optimizer with non-finite gradients.",
                value=float(first.step),
            )
        )
    skipped = [step for step in steps if step.skipped]
    if skipped:
        listed = ", ".join(str(step.step) for step in skipped[:10])
        findings.append(
            finding(
                FindingKind.NONFINITE,
                Severity.INFO,
                "amp",
                f"The GradScaler skipped {len(skipped)} step(s) for inf/NaN in the scaled "
                f"gradients (steps {listed}); normal while its scale calibrates, not counted "
                "as explosions of the model.",
                value=float(len(skipped)),
                hint="Many skips in a row mean the model itself overflows: see the layers' norms.",
            )
        )
    return findings


def clipping_before_unscale_findings(steps: Sequence[StepStats]) -> list[Finding]:
    """An error per optimizer whose gradients were clipped before ``scaler.unscale_``
    (``ClipCall.before_unscale``): the bound then applied to scaled gradients. No
    ``Config`` threshold."""
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
            finding(
                FindingKind.CLIPPING_BEFORE_UNSCALE,
                Severity.ERROR,
                step_label(step),
                f"clip_grad_{clip.kind}_ with bound {clip.bound:g} ran on AMP-scaled "
                f"gradients{scale}{measured}, before scaler.unscale_(optimizer): the bound "
                f"applied to gradients that are scale times too large ({count} step(s)).",
                value=clip.bound,
            )
        )
    return findings


def missing_clipping_findings(steps: Sequence[StepStats], config: Config) -> list[Finding]:
    """With ``config.max_grad_norm`` set: an error per optimizer with steps whose global
    norm at ``step()`` exceeded ``config.clip_limit`` (the bound with
    ``config.clip_tolerance``), saying which clipping was observed."""
    bound, limit = config.max_grad_norm, config.clip_limit
    if bound is None or limit is None:
        return []
    findings = []
    for optimizer, own in _per_optimizer(steps, _ran):
        over = [step for step in own if exceeds_clip_limit(step, config)]
        if not over:
            continue
        first, largest = over[0], max(over, key=lambda step: step.grad_norm_at_step or 0.0)
        findings.append(
            finding(
                FindingKind.MISSING_CLIPPING,
                Severity.ERROR,
                step_label(first),
                f"{len(over)} of {len(own)} step(s) reached optimizer {optimizer} with a "
                f"global gradient norm above max_grad_norm={bound:g}: first step "
                f"{first.step} with {first.grad_norm_at_step:.4g}, largest "
                f"{largest.grad_norm_at_step:.4g} at step {largest.step}; "
                f"{_clipping_observed(own, limit)}.",
                value=first.grad_norm_at_step,
                threshold=bound,
            )
        )
    return findings


def _clipping_observed(own: Sequence[StepStats], limit: float) -> str:
    """Which clip_grad_norm_ bounds one optimizer's steps were clipped with, if any."""
    bounds = sorted({clip.bound for step in own for clip in step.clip_calls if clip.kind == "norm"})
    if not bounds:
        return "no clip_grad_norm_ call was observed"
    clipped = sum(any(clip.kind == "norm" for clip in step.clip_calls) for step in own)
    looser = " (looser than required)" if min(bounds) > limit else ""
    return (
        f"clip_grad_norm_ was called with max_norm {', '.join(f'{b:g}' for b in bounds)}"
        f" on {clipped} of {len(own)} step(s){looser}"
    )


def earlier_steps_clipping_findings(summary: StepSummary | None, config: Config) -> list[Finding]:
    """With ``config.max_grad_norm`` set: an error when one of the steps older than the
    history window (``StepSummary.earlier_max_grad_norm_at_step``) exceeded
    ``config.clip_limit``."""
    limit = config.clip_limit
    earlier = summary.earlier_max_grad_norm_at_step if summary else None
    if summary is None or limit is None or earlier is None or earlier <= limit:
        return []
    return [
        finding(
            FindingKind.MISSING_CLIPPING,
            Severity.ERROR,
            "earlier steps",
            f"Among the {summary.earlier_steps} steps older than the history window, one "
            f"reached the optimizer with norm {earlier:.4g} > "
            f"max_grad_norm={config.max_grad_norm:g}.",
            value=earlier,
            threshold=config.max_grad_norm,
        )
    ]


def divergence_findings(
    steps: Sequence[StepStats], summary: StepSummary | None, config: Config
) -> list[Finding]:
    """Without ``config.max_grad_norm`` and without any observed clipping: an error (kind
    ``exploding``) per optimizer whose global norm at ``step()`` jumped above
    ``config.divergence_factor`` times the largest norm of all its earlier steps.

    Ordinary training starts with its largest norms and falls, or rises slowly (AdamW);
    a jump over every earlier step is the loss diverging. Steps older than the history
    window count through ``StepSummary.earlier_max_grad_norm_at_step`` (kept over all
    optimizers together).
    """
    if config.max_grad_norm is not None:
        return []
    ran = [step for step in steps if _ran(step)]
    if any(step.clip_calls for step in ran) or (summary and summary.earlier_clipped_steps):
        return []
    earlier = summary.earlier_max_grad_norm_at_step if summary else None
    findings = []
    for optimizer, own in _per_optimizer(ran, _finite_norm_at_step):
        largest = earlier if earlier is not None and math.isfinite(earlier) else None
        jumps: list[tuple[StepStats, float, float]] = []
        for step in own:
            norm = step.grad_norm_at_step or 0.0
            if largest and norm > config.divergence_factor * largest:
                jumps.append((step, norm / largest, largest))
            largest = max(largest or 0.0, norm)
        if jumps:
            findings.append(_divergence_finding(optimizer, jumps, config))
    return findings


def _finite_norm_at_step(step: StepStats) -> bool:
    return step.grad_norm_at_step is not None and math.isfinite(step.grad_norm_at_step)


def _divergence_finding(
    optimizer: int, jumps: Sequence[tuple[StepStats, float, float]], config: Config
) -> Finding:
    """The error for one optimizer's jumps: (step, factor over the earlier maximum, it)."""
    first, factor, before = jumps[0]
    return finding(
        FindingKind.EXPLODING,
        Severity.ERROR,
        step_label(first),
        f"The global gradient norm of optimizer {optimizer} jumped to "
        f"{first.grad_norm_at_step:.4g} at step {first.step}, {factor:.3g}x the largest of all "
        f"earlier steps ({before:.4g}); {len(jumps)} step(s) jumped over "
        f"{config.divergence_factor:g}x the earlier maximum, and no gradient clipping was "
        "observed: training is diverging.",
        value=factor,
        threshold=config.divergence_factor,
        hint=DIVERGENCE_HINT,
    )


def _norm_measured_before_clipping(step: StepStats) -> bool:
    """A step that ran with a finite, non-zero norm before clipping."""
    return (
        not step.skipped
        and step.grad_norm is not None
        and math.isfinite(step.grad_norm)
        and step.grad_norm > 0
    )


def step_growth_findings(steps: Sequence[StepStats], config: Config) -> list[Finding]:
    """An error (kind ``exploding``) per optimizer whose median step norm (before clipping)
    over the last quarter of at least 8 finite, non-zero steps exceeds the first
    quarter's by more than ``config.step_growth_ratio``."""
    findings = []
    for optimizer, own in _per_optimizer(steps, _norm_measured_before_clipping):
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
            finding(
                FindingKind.EXPLODING,
                Severity.ERROR,
                step_label(start),
                f"The global gradient norm of optimizer {optimizer} grew {growth:.3g}x during "
                f"training (median {early:.3g} over the first quarter of the steps, {late:.3g} "
                f"over the last); it first exceeded 10x the start at step {start.step}.",
                value=growth,
                threshold=config.step_growth_ratio,
                hint=exploding_hint(),
            )
        )
    return findings
