"""The few numbers of a report worth plotting over training, under stable names.

Every adapter (TensorBoard, W&B, the Lightning and Hugging Face callbacks) logs the
dictionary ``summary_scalars`` returns. Names (after the prefix, ``gradcheckup/`` by
default); a name is left out when its number was not measured or is not finite:

- ``errors``, ``warnings``: how many findings of that severity (always there);
- ``nonfinite``: 1.0 when a finding says NaN/inf reached the loss or the gradients as an
  error, else 0.0 (always there; AMP steps the GradScaler skipped do not count);
- ``depth_ratio``: the backward signal at the first layers over the signal at the logits
  layer, the number the vanishing/exploding rule judges (``rules.depth.depth_ratio``);
- ``max_dead_fraction``, ``max_saturated_fraction``: the largest fraction over the
  activation sites (sites whose outputs were not finite are left out, as by the rules);
- ``through_time_ratio``: over the recurrent layers, the first step's input gradient over
  the last step's that lies furthest from 1 (vanishing or exploding through time);
- ``step_norm``: the global gradient norm the optimizer saw at its newest measured step
  (``StepStats.grad_norm_at_step``, after clipping), with optimizer steps watched;
- ``clipped_steps``: how many of the watched steps were clipped, with steps watched;
- ``layer/<name>/grad_norm``, ``layer/<name>/unit_signal``: per chosen layer (by default
  the two ends the depth ratio compares), its gradient norm and its backward signal per
  unit; ``<name>`` as in ``model.named_modules()``, ``(model)`` for the model itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from gradcheckup.report import (
    FindingKind,
    LayerStats,
    Report,
    Severity,
    display_name,
)
from gradcheckup.rules.depth import depth_ratio

__all__ = ["DEFAULT_PREFIX", "summary_scalars"]

DEFAULT_PREFIX = "gradcheckup/"
"""What every scalar's name starts with unless the caller chooses another prefix."""


def summary_scalars(
    report: Report, layers: Sequence[str] | None = None, prefix: str = DEFAULT_PREFIX
) -> dict[str, float]:
    """The few numbers of ``report`` worth plotting over training (names in the module doc).

    Args:
        report: a report, typically ``monitor.snapshot()`` or ``monitor.report()``.
        layers: layer names (as in ``model.named_modules()``, or ``(model)``) whose gradient
            norm and backward signal to add; None for the two ends of the depth ratio.
        prefix: put before every name.

    Returns:
        Name to value, finite floats only, in a fixed order.

    Raises:
        KeyError: a name in ``layers`` is no layer of the report.
    """
    measured = depth_ratio(report.layers, report.config)
    chosen = (
        [_layer(report, name) for name in layers]
        if layers is not None
        else _distinct([measured[1], measured[2]] if measured else [])
    )
    values: dict[str, float | None] = {
        "errors": _count(report, Severity.ERROR),
        "warnings": _count(report, Severity.WARNING),
        "nonfinite": float(
            any(
                finding.kind is FindingKind.NONFINITE and finding.severity is Severity.ERROR
                for finding in report.findings
            )
        ),
        "depth_ratio": measured[0] if measured else None,
        "max_dead_fraction": _largest(
            site.dead_fraction for site in report.activations if not site.nonfinite
        ),
        "max_saturated_fraction": _largest(
            site.saturated_fraction for site in report.activations if not site.nonfinite
        ),
        "through_time_ratio": _furthest_from_one(stats.first_to_last for stats in report.temporal),
        **_step_values(report),
    }
    for layer in chosen:
        where = f"layer/{display_name(layer.name)}"
        values[f"{where}/grad_norm"] = layer.grad_norm
        values[f"{where}/unit_signal"] = layer.unit_signal
    return {
        prefix + name: float(value)
        for name, value in values.items()
        if value is not None and math.isfinite(value)
    }


def _count(report: Report, severity: Severity) -> float:
    return float(sum(finding.severity is severity for finding in report.findings))


def _layer(report: Report, name: str) -> LayerStats:
    """The layer called ``name``, or ``(model)`` for the model itself."""
    for layer in report.layers:
        if name in (layer.name, display_name(layer.name)):
            return layer
    return report.layer(name)  # raises the KeyError that lists the names


def _distinct(layers: Iterable[LayerStats]) -> list[LayerStats]:
    """The layers once each: the two depth ends are the same layer in a one-layer window."""
    return list({layer.name: layer for layer in layers}.values())


def _finite(values: Iterable[float | None]) -> list[float]:
    return [value for value in values if value is not None and math.isfinite(value)]


def _largest(values: Iterable[float | None]) -> float | None:
    return max(_finite(values), default=None)


def _furthest_from_one(ratios: Iterable[float | None]) -> float | None:
    """The positive ratio with the largest |log| (0 counts as furthest of all)."""
    positive = [ratio for ratio in _finite(ratios) if ratio >= 0]
    return max(
        positive, key=lambda ratio: abs(math.log(ratio)) if ratio else math.inf, default=None
    )


def _step_values(report: Report) -> dict[str, float | None]:
    """``step_norm`` and ``clipped_steps``, when optimizer steps were watched."""
    summary = report.step_summary
    if not report.steps and not (summary and summary.total_steps):
        return {}
    norms = _finite(step.grad_norm_at_step for step in report.steps if not step.skipped)
    clipped = sum(bool(step.clip_calls) for step in report.steps)
    return {
        "step_norm": norms[-1] if norms else None,
        "clipped_steps": float(clipped + (summary.earlier_clipped_steps if summary else 0)),
    }
