"""From stats to findings: pure functions of (stats, Config), easy to test one by one.

The modules mirror the probes whose numbers they judge: ``depth`` (layers and their
parameters), ``units`` (activation sites), ``time`` (recurrent modules), ``steps``
(optimizer steps); ``hints`` holds the fixes they attach. ``diagnose`` runs them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradcheckup.config import Config
from gradcheckup.report import (
    ActivationStats,
    Finding,
    LayerStats,
    StepStats,
    StepSummary,
    TemporalStats,
)
from gradcheckup.rules._finding import finding, severity_band
from gradcheckup.rules.coverage import coverage_findings
from gradcheckup.rules.depth import (
    all_zero_findings,
    collapse_findings,
    depth_findings,
    depth_ratio,
    no_gradient_findings,
    nonfinite_findings,
)
from gradcheckup.rules.facts import NonfiniteInput, PassFacts
from gradcheckup.rules.steps import (
    clipping_before_unscale_findings,
    divergence_findings,
    earlier_steps_clipping_findings,
    missing_clipping_findings,
    nonfinite_step_findings,
    step_growth_findings,
)
from gradcheckup.rules.time import through_time_findings
from gradcheckup.rules.units import unit_findings

__all__ = [
    "NonfiniteInput",
    "PassFacts",
    "all_zero_findings",
    "clipping_before_unscale_findings",
    "collapse_findings",
    "coverage_findings",
    "depth_findings",
    "depth_ratio",
    "diagnose",
    "divergence_findings",
    "earlier_steps_clipping_findings",
    "finding",
    "missing_clipping_findings",
    "no_gradient_findings",
    "nonfinite_findings",
    "nonfinite_step_findings",
    "severity_band",
    "step_growth_findings",
    "through_time_findings",
    "unit_findings",
]


def diagnose(
    layers: Sequence[LayerStats],
    activations: Sequence[ActivationStats],
    config: Config,
    loss: float | None = None,
    temporal: Sequence[TemporalStats] = (),
    steps: Sequence[StepStats] = (),
    step_summary: StepSummary | None = None,
    passes: int | None = None,
    facts: PassFacts | None = None,
) -> list[Finding]:
    """All findings for one report, worst severity first (stable within a severity).

    Args:
        layers: per-layer statistics.
        activations: per-activation-site statistics.
        config: the thresholds to judge by.
        loss: the loss ``check()`` differentiated (a non-finite loss is named as the origin
            of non-finite gradients); None under ``watch()``.
        temporal: per-recurrent-module gradients through time.
        steps: the watched optimizer steps, oldest first.
        step_summary: counts over all steps, including those beyond the history window.
        passes: forward passes the module hooks recorded (None: not known).
        facts: what ``check()`` knows about its pass (non-finite inputs, parameters that
            feed only outputs outside the loss); None under ``watch()``.

    Returns:
        The findings, errors first.
    """
    # With optimizer steps watched, NaN/inf is judged per step, so that steps the AMP
    # scaler skipped (expected while its scale calibrates) are not errors.
    judged_per_step = any(step.nonfinite or step.skipped for step in steps)
    facts = facts or PassFacts()
    findings = [
        *depth_findings(layers, activations, config),
        *through_time_findings(temporal, config),
        *(
            nonfinite_step_findings(steps)
            if judged_per_step
            else nonfinite_findings(layers, loss, facts.nonfinite_inputs)
        ),
        *clipping_before_unscale_findings(steps),
        *missing_clipping_findings(steps, config),
        *earlier_steps_clipping_findings(step_summary, config),
        *divergence_findings(steps, step_summary, config),
        *step_growth_findings(steps, config),
        *collapse_findings(layers, activations),
        *all_zero_findings(layers),
        *unit_findings(activations, config),
        *no_gradient_findings(layers, facts.outside_loss),
        *coverage_findings(layers, passes),
    ]
    return sorted(findings, key=lambda found: -found.severity.rank)
