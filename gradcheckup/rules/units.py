"""Rules on the activation sites (``probes/activations.py``): dead ReLU units and saturated
sigmoid/tanh outputs, both one fraction judged against an error and a warning threshold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from gradcheckup.config import Config
from gradcheckup.report import ActivationStats, Finding, FindingKind, Severity
from gradcheckup.rules._finding import finding, severity_band


class _FractionRule(NamedTuple):
    """One fraction of ``ActivationStats``, its two ``Config`` thresholds and its wording."""

    kind: FindingKind
    fraction: Callable[[ActivationStats], float | None]
    error_at: Callable[[Config], float]
    warn_at: Callable[[Config], float]
    describe: Callable[[ActivationStats, float, float, Config], str]


def _describe_dead(site: ActivationStats, fraction: float, threshold: float, _: Config) -> str:
    dead_units = round(fraction * (site.units or 0))
    return (
        f"{fraction:.0%} of its units ({dead_units} of {site.units} {site.unit_axis}) were "
        f"never positive over {site.samples_per_unit} observations each "
        f"(threshold {threshold:.0%})."
    )


def _describe_saturated(
    site: ActivationStats, fraction: float, threshold: float, config: Config
) -> str:
    return (
        f"{fraction:.0%} of its {site.function} outputs are within "
        f"{config.saturation_margin:.0%} of the range's ends, where the derivative is nearly 0 "
        f"(threshold {threshold:.0%})."
    )


# In this order in the report: every dead-ReLU finding, then every saturation finding.
_FRACTION_RULES = (
    _FractionRule(
        FindingKind.DEAD_RELU,
        lambda site: site.dead_fraction,
        lambda config: config.dead_relu_fraction,
        lambda config: config.dead_relu_warn_fraction,
        _describe_dead,
    ),
    _FractionRule(
        FindingKind.SATURATION,
        lambda site: site.saturated_fraction,
        lambda config: config.saturation_fraction,
        lambda config: config.saturation_warn_fraction,
        _describe_saturated,
    ),
)


def unit_findings(activations: Sequence[ActivationStats], config: Config) -> list[Finding]:
    """Dead ReLU units and saturated sigmoid/tanh outputs, per activation site.

    ``dead_fraction`` is compared with ``config.dead_relu_fraction`` (error) and
    ``config.dead_relu_warn_fraction`` (warning), ``saturated_fraction`` with
    ``config.saturation_fraction`` and ``config.saturation_warn_fraction``; reaching a
    threshold counts. With fewer than ``config.min_samples_per_unit`` observations per
    unit a finding is only info.
    """
    findings = []
    for rule in _FRACTION_RULES:
        for site in activations:
            fraction = rule.fraction(site)
            if fraction is None:
                continue
            graded = _graded_by_samples(
                fraction, rule.error_at(config), rule.warn_at(config), site.samples_per_unit, config
            )
            if graded is None:
                continue
            severity, threshold, note = graded
            findings.append(
                finding(
                    rule.kind,
                    severity,
                    site.name,
                    rule.describe(site, fraction, threshold, config) + note,
                    value=fraction,
                    threshold=threshold,
                )
            )
    return findings


def _graded_by_samples(
    value: float, error_at: float, warn_at: float, samples: int, config: Config
) -> tuple[Severity, float, str] | None:
    """The severity band of ``value``, downgraded to info (with a note saying why) when
    there are fewer than ``config.min_samples_per_unit`` observations per unit."""
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
