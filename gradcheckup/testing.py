"""Assertions for test suites: each raises ``AssertionError`` naming every offending
layer, the measured value, the threshold and the hint for the fix.

    from gradcheckup.testing import assert_healthy
    assert_healthy(gcu.check(model, x, target=y, loss_fn=F.cross_entropy))
"""

from __future__ import annotations

from collections.abc import Iterable

from gradcheckup.config import Config, layered_config
from gradcheckup.report import (
    Finding,
    FindingKind,
    Report,
    Severity,
    exceeds_clip_limit,
    format_number,
)
from gradcheckup.rules import depth_findings
from gradcheckup.rules.hints import HINTS

__all__ = [
    "assert_clipped",
    "assert_healthy",
    "assert_no_dead_relu",
    "assert_no_exploding",
    "assert_no_vanishing",
]

_FAIL_ON = ("error", "warning")


def _require_report(report: object) -> Report:
    if not isinstance(report, Report):
        raise TypeError(
            f"report: expected a gradcheckup.Report (from gcu.check or monitor.report()), "
            f"got {type(report).__name__}"
        )
    return report


def _format_finding(finding: Finding) -> str:
    """One line for a failure message: where, kind, value vs threshold, message, hint."""
    return (
        f"  - {finding.where}: {finding.kind.value} ({finding.severity.value}), value "
        f"{format_number(finding.value)} vs threshold {format_number(finding.threshold)}. "
        f"{finding.message}\n    hint: {finding.hint}"
    )


def _fail_with(title: str, findings: Iterable[Finding]) -> None:
    listed = list(findings)
    if listed:
        lines = "\n".join(_format_finding(finding) for finding in listed)
        raise AssertionError(f"{title} ({len(listed)}):\n{lines}")


def assert_healthy(report: Report, fail_on: str = "error") -> None:
    """Fail if the report has findings at or above ``fail_on``.

    Args:
        report: from ``gcu.check`` or ``monitor.report()``.
        fail_on: ``"error"`` (default) or ``"warning"`` (warnings fail too).

    Raises:
        AssertionError: listing each finding with its layer, value, threshold and hint.
        ValueError: an unknown ``fail_on``.
    """
    _require_report(report)
    if fail_on not in _FAIL_ON:
        raise ValueError(f"fail_on: expected 'error' or 'warning', got {fail_on!r}")
    failing = [f for f in report.findings if f.severity.at_least(fail_on)]
    _fail_with("gradients are not healthy: findings", failing)


def _errors_of(findings: Iterable[Finding], kind: FindingKind) -> list[Finding]:
    return [f for f in findings if f.kind is kind and f.severity is Severity.ERROR]


def _config_with(report: Report, argument: str, **overrides: float) -> Config:
    """The report's Config with ``overrides``; an invalid value is blamed on ``argument``."""
    return layered_config([(argument, overrides)], base=report.config)


def _depth_errors(report: Report, kind: FindingKind, config: Config) -> list[Finding]:
    """The through-depth rule's errors of ``kind`` for the report, judged by ``config``."""
    return _errors_of(depth_findings(report.layers, report.activations, config), kind)


def assert_no_vanishing(report: Report, min_ratio: float | None = None) -> None:
    """Fail if the backward signal vanishes through depth.

    Args:
        report: the report to judge.
        min_ratio: judge against this ratio (backward signal per unit at the
            first layers / at the logits layer, between 0 and 1) instead of the report's
            ``Config.vanishing_ratio``: the depth rule runs again with it as the only
            threshold.

    Raises:
        AssertionError: naming the layer, the ratio, the threshold and the hint.
        ValueError: ``min_ratio`` outside (0, 1).
    """
    _require_report(report)
    if min_ratio is None:
        _fail_with("vanishing gradients", _errors_of(report.findings, FindingKind.VANISHING))
        return
    config = _config_with(
        report, "min_ratio", vanishing_ratio=min_ratio, vanishing_warn_ratio=min_ratio
    )
    _fail_with(
        f"vanishing gradients below min_ratio={min_ratio:g}",
        _depth_errors(report, FindingKind.VANISHING, config),
    )


def assert_no_exploding(report: Report, max_ratio: float | None = None) -> None:
    """Fail if the backward signal explodes through depth (or is NaN/inf); without
    ``max_ratio`` also if the watched step norms diverged or grew during training.

    Args:
        report: the report to judge.
        max_ratio: judge the depth ratio (backward signal per unit at the
            first layers / at the logits layer) against this growth factor (above 1)
            instead of ``Config.exploding_ratio``: the depth rule runs again with it as
            the only threshold.

    Raises:
        AssertionError: naming the layer, the ratio, the threshold and the hint.
        ValueError: ``max_ratio`` not above 1.
    """
    _require_report(report)
    nonfinite = _errors_of(report.findings, FindingKind.NONFINITE)
    if max_ratio is None:
        exploding = _errors_of(report.findings, FindingKind.EXPLODING)
        _fail_with("exploding gradients", [*exploding, *nonfinite])
        return
    _fail_with("non-finite gradients", nonfinite)
    config = _config_with(
        report, "max_ratio", exploding_ratio=max_ratio, exploding_warn_ratio=max_ratio
    )
    _fail_with(
        f"exploding gradients above max_ratio={max_ratio:g}",
        _depth_errors(report, FindingKind.EXPLODING, config),
    )


def assert_no_dead_relu(report: Report, max_fraction: float | None = None) -> None:
    """Fail if ReLU sites have too many dead units.

    Args:
        report: the report to judge.
        max_fraction: fail when any site's dead fraction is above this (sites with fewer
            observations than ``Config.min_samples_per_unit`` included); by default the
            report's dead_relu errors.
    """
    _require_report(report)
    if max_fraction is None:
        _fail_with("dead ReLU units", _errors_of(report.findings, FindingKind.DEAD_RELU))
        return
    offenders = [
        site
        for site in report.activations
        if site.dead_fraction is not None and site.dead_fraction > max_fraction
    ]
    if offenders:
        lines = "\n".join(
            f"  - {site.name}: {site.dead_fraction:.1%} of {site.units} units dead "
            f"(max_fraction {max_fraction:.1%}, {site.samples_per_unit} observations per unit)"
            for site in offenders
        )
        raise AssertionError(
            f"dead ReLU units ({len(offenders)}):\n{lines}\n"
            f"    hint: {HINTS[FindingKind.DEAD_RELU]}"
        )


def assert_clipped(report: Report, max_norm: float | None = None) -> None:
    """Fail if any optimizer step saw a global gradient norm above ``max_norm``.

    The norm is the one ``optimizer.step()`` saw: after accumulation and clipping,
    unscaled under AMP. Steps the GradScaler skipped do not count; clipping applied to
    AMP-scaled gradients (before ``scaler.unscale_``) fails too.

    Args:
        report: from ``monitor.report()`` of ``gcu.watch(model, optimizer=...)``.
        max_norm: the bound; by default the report's ``Config.max_grad_norm``.

    Raises:
        AssertionError: naming each step and the norm that got through.
        ValueError: no bound given and none configured, or ``max_norm`` not above 0.
    """
    _require_report(report)
    config = report.config
    if max_norm is not None:
        config = _config_with(report, "max_norm", max_grad_norm=max_norm)
    bound, limit = config.max_grad_norm, config.clip_limit
    if bound is None or limit is None:
        raise ValueError("max_norm: pass the bound, or set Config.max_grad_norm before watching")
    total = report.step_summary.total_steps if report.step_summary else 0
    if not total:
        raise AssertionError(
            "no optimizer step was observed: use gcu.watch(model, optimizer=opt) around the "
            "training loop"
        )
    lines = []
    for step in report.steps:
        if not exceeds_clip_limit(step, config):
            continue
        norm = step.grad_norm_at_step or 0.0
        clips = ", ".join(f"clip_grad_{c.kind}_({c.bound:g})" for c in step.clip_calls) or "none"
        lines.append(
            f"  - optimizer {step.optimizer}, step {step.step}: gradient norm {norm:.4g} > "
            f"max_norm {bound:g} (clip calls: {clips})"
        )
    earlier = report.step_summary.earlier_max_grad_norm_at_step if report.step_summary else None
    if earlier is not None and earlier > limit:
        lines.append(
            f"  - an earlier step (beyond the history window): gradient norm {earlier:.4g}"
        )
    for finding in report.findings_of(FindingKind.CLIPPING_BEFORE_UNSCALE):
        lines.append(f"  - {finding.where}: {finding.message}")
    if lines:
        raise AssertionError(
            f"gradients were not clipped to {bound:g} ({len(lines)}):\n"
            + "\n".join(lines)
            + f"\n    hint: {HINTS[FindingKind.MISSING_CLIPPING]}"
        )
