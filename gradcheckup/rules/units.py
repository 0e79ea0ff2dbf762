"""Rules on the activation sites (``probes/activations.py``): dead units (ReLU, ReLU6,
Hardswish) and saturated outputs (sigmoid, tanh, Hardtanh, Hardsigmoid), each one fraction
judged against an error and a warning threshold.

A site whose outputs were not finite is not judged: its 'dead' units and 'saturated'
outputs are the NaN's downstream trace, and the ``nonfinite`` finding names the origin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from gradcheckup.config import Config
from gradcheckup.report import ActivationStats, Finding, FindingKind, Severity
from gradcheckup.rules._finding import finding, severity_band

# Where a unit of each ReLU-family function passes gradient.
_ACTIVE_REGION = {"relu6": "strictly between 0 and 6", "hardswish": "non-zero (input > -3)"}
# Clamped at their ends: the derivative there is exactly 0, not just small.
_CLAMPED = {"hardtanh", "hardsigmoid"}


class _FractionRule(NamedTuple):
    """One fraction of ``ActivationStats``, its two ``Config`` thresholds, its wording and
    the sample-count note that downgrades an uncertain finding to info (None: certain)."""

    kind: FindingKind
    fraction: Callable[[ActivationStats], float | None]
    error_at: Callable[[Config], float]
    warn_at: Callable[[Config], float]
    describe: Callable[[ActivationStats, float, float, Config], str]
    too_few: Callable[[ActivationStats, float, Config], str | None]


def _describe_dead(site: ActivationStats, fraction: float, threshold: float, _: Config) -> str:
    dead_units = round(fraction * (site.units or 0))
    region = _ACTIVE_REGION.get(site.function, "positive")
    return (
        f"{fraction:.0%} of its units ({dead_units} of {site.units} {site.unit_axis}) were "
        f"never {region} over {site.samples_per_unit} observations each "
        f"(threshold {threshold:.0%})."
    )


def _describe_saturated(
    site: ActivationStats, fraction: float, threshold: float, config: Config
) -> str:
    if site.function in _CLAMPED:
        where = "exactly at the range's ends, where the derivative is 0"
    else:
        where = (
            f"within {config.saturation_margin:.0%} of the range's ends, where the derivative "
            "is nearly 0"
        )
    return f"{fraction:.0%} of its {site.function} outputs are {where} (threshold {threshold:.0%})."


def _outputs(site: ActivationStats) -> int:
    """All observations of the site: units x samples per unit."""
    return (site.units or 1) * site.samples_per_unit


def _too_few_for_dead(site: ActivationStats, fraction: float, config: Config) -> str | None:
    """Partly dead units need ``min_samples_per_unit`` observations each (a healthy unit
    active half the time looks dead with probability 2^-n). Every unit dead on every sample
    is certain once there are that many observations in all (2^-n under the same null)."""
    enough = config.min_samples_per_unit
    if site.samples_per_unit >= enough or (fraction >= 1.0 and _outputs(site) >= enough):
        return None
    return (
        f" Only {site.samples_per_unit} observations per unit (< min_samples_per_unit="
        f"{enough}): too few to be sure, so this is only info."
    )


def _too_few_for_saturation(site: ActivationStats, _: float, config: Config) -> str | None:
    """Saturation is a fraction of all outputs, so it is judged on their number."""
    outputs, enough = _outputs(site), config.min_samples_per_unit
    if outputs >= enough:
        return None
    return (
        f" Only {outputs} outputs (< min_samples_per_unit={enough}): too few to be sure, "
        "so this is only info."
    )


# In this order in the report: every dead-unit finding, then every saturation finding.
_FRACTION_RULES = (
    _FractionRule(
        FindingKind.DEAD_RELU,
        lambda site: site.dead_fraction,
        lambda config: config.dead_relu_fraction,
        lambda config: config.dead_relu_warn_fraction,
        _describe_dead,
        _too_few_for_dead,
    ),
    _FractionRule(
        FindingKind.SATURATION,
        lambda site: site.saturated_fraction,
        lambda config: config.saturation_fraction,
        lambda config: config.saturation_warn_fraction,
        _describe_saturated,
        _too_few_for_saturation,
    ),
)


def unit_findings(activations: Sequence[ActivationStats], config: Config) -> list[Finding]:
    """Dead units and saturated outputs, per activation site.

    ``dead_fraction`` is compared with ``config.dead_relu_fraction`` (error) and
    ``config.dead_relu_warn_fraction`` (warning), ``saturated_fraction`` with
    ``config.saturation_fraction`` and ``config.saturation_warn_fraction``; reaching a
    threshold counts. Too few observations make a finding only info (see
    ``Config.min_samples_per_unit``): fewer than ``min_samples_per_unit`` per unit for
    partly dead units, fewer in all (units x samples) for a site with every unit dead and
    for saturation. Sites with non-finite outputs are not judged.
    """
    findings = []
    for rule in _FRACTION_RULES:
        for site in activations:
            fraction = rule.fraction(site)
            if fraction is None or site.nonfinite:
                continue
            band = severity_band(
                fraction, rule.error_at(config), rule.warn_at(config), worse_when="higher"
            )
            if band is None:
                continue
            severity, threshold = band
            note = rule.too_few(site, fraction, config)
            findings.append(
                finding(
                    rule.kind,
                    Severity.INFO if note else severity,
                    site.name,
                    rule.describe(site, fraction, threshold, config) + (note or ""),
                    value=fraction,
                    threshold=threshold,
                )
            )
    return findings
