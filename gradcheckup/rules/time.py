"""Rules on the gradient through time of recurrent modules (``probes/temporal.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheckup.config import Config
from gradcheckup.report import Finding, FindingKind, Severity, TemporalStats, display_name
from gradcheckup.rules._finding import finding
from gradcheckup.rules.hints import through_time_hint


def through_time_findings(temporal: Sequence[TemporalStats], config: Config) -> list[Finding]:
    """Vanishing/exploding gradient through time, from each recurrent module's profile.

    ``TemporalStats.first_to_last`` (the first step's input gradient over the last
    step's) is compared with ``config.temporal_vanishing_ratio`` from below and
    ``config.temporal_exploding_ratio`` from above; profiles shorter than two steps or
    with a non-finite ratio are not judged. Exploding is an error. Vanishing is an error
    for plain RNNs and a warning for LSTM/GRU: their gates can learn to carry the
    gradient (the forget gate opens), a plain tanh RNN's cannot.
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
                finding(
                    FindingKind.VANISHING_THROUGH_TIME,
                    Severity.WARNING if stats.gated else Severity.ERROR,
                    display_name(stats.name),
                    f"The gradient reaching the first step's input is {ratio:.3g} of the last "
                    f"step's (< {config.temporal_vanishing_ratio:g}) {shape}: early steps "
                    "barely influence learning.",
                    value=ratio,
                    threshold=config.temporal_vanishing_ratio,
                    hint=through_time_hint(vanishing=True, gated=stats.gated),
                )
            )
        elif ratio > config.temporal_exploding_ratio:
            findings.append(
                finding(
                    FindingKind.EXPLODING_THROUGH_TIME,
                    Severity.ERROR,
                    display_name(stats.name),
                    f"The gradient reaching the first step's input is {ratio:.3g}x the last "
                    f"step's (> {config.temporal_exploding_ratio:g}) {shape}.",
                    value=ratio,
                    threshold=config.temporal_exploding_ratio,
                    hint=through_time_hint(vanishing=False, gated=stats.gated),
                )
            )
    return findings
