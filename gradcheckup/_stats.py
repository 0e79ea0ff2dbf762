"""Probe totals -> the report's stats models; no device keys are known here."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter

from gradcheckup.config import Config
from gradcheckup.probes.activations import SiteTotals
from gradcheckup.probes.inventory import Inventory
from gradcheckup.probes.layers import SignalTotals
from gradcheckup.probes.parameters import ParameterTotals
from gradcheckup.probes.steps import StepHistoryTotals, StepTotals
from gradcheckup.probes.temporal import TemporalTotals
from gradcheckup.report import (
    ActivationStats,
    ClipCall,
    LayerStats,
    StepStats,
    StepSummary,
    TemporalStats,
)

_Row = TypeVar("_Row", bound=BaseModel)


def _ratio_of_squares(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return math.sqrt(numerator / denominator)


def _relative_grads(
    param_counts: Mapping[int, int], parameters: Mapping[int, ParameterTotals]
) -> dict[int, float]:
    """Per layer: per-parameter RMS gradient over the largest layer's (finite ones only)."""
    per_param_rms = {}
    for index, count in param_counts.items():
        grad_norm = parameters[index].grad_norm
        if grad_norm is not None and math.isfinite(grad_norm) and count:
            per_param_rms[index] = grad_norm / math.sqrt(count)
    largest_rms = max(per_param_rms.values(), default=0.0)
    if largest_rms <= 0:
        return {}
    return {index: rms / largest_rms for index, rms in per_param_rms.items()}


def _nonfinite_ranks(
    parameters: Mapping[int, ParameterTotals], signals: Mapping[int, SignalTotals]
) -> dict[int, int]:
    """Per layer that saw NaN/inf: 1 for the first in backward order, 2 for the next..."""
    first_ticks = []
    for index, signal in signals.items():
        ticks = [signal.first_nonfinite_tick, parameters[index].first_nonfinite_tick]
        known = [tick for tick in ticks if tick is not None]
        if known:
            first_ticks.append((min(known), index))
    return {index: rank for rank, (_, index) in enumerate(sorted(first_ticks), start=1)}


def build_layer_stats(
    inventory: Inventory,
    parameters: Mapping[int, ParameterTotals],
    signals: Mapping[int, SignalTotals],
    nonfinite_count: Mapping[int, int] | None,
    zero_since: Mapping[int, int] | None = None,
) -> list[LayerStats]:
    """Per-layer stats, in forward (depth) order; layers that never ran come last."""
    param_counts = {layer.index: layer.param_count for layer in inventory.layers}
    relative_grad = _relative_grads(param_counts, parameters)
    nonfinite_rank = _nonfinite_ranks(parameters, signals)
    zero_since = zero_since or {}
    fields = []
    for layer in inventory.layers:
        params = parameters[layer.index]
        signal = signals[layer.index]
        grad_norm, weight_norm = params.grad_norm, params.weight_norm
        # Signals are summed over the passes that measured them; dividing by their count
        # gives a root-mean-square over several passes, the plain norm for one.
        fields.append(
            {
                "name": layer.name,
                "module_type": type(layer.module).__name__,
                "depth_index": signal.depth_index,
                "param_count": param_counts[layer.index],
                "grad_norm": grad_norm,
                "weight_norm": weight_norm,
                "grad_to_weight": (
                    grad_norm / weight_norm if grad_norm is not None and weight_norm > 0 else None
                ),
                "relative_grad": relative_grad.get(layer.index),
                "output_grad_norm": _ratio_of_squares(signal.output_squared, signal.passes),
                "unit_signal": _ratio_of_squares(signal.unit_squared, signal.passes),
                "bias_grad_norm": params.bias_grad_norm,
                "input_grad_norm": _ratio_of_squares(signal.input_squared, signal.input_passes),
                "backward_gain": _ratio_of_squares(signal.input_squared, signal.output_squared),
                "nonfinite_passes": params.nonfinite_passes,
                "nonfinite_count": (
                    None if nonfinite_count is None else nonfinite_count.get(layer.index, 0)
                ),
                "nonfinite_rank": nonfinite_rank.get(layer.index),
                "passes": params.passes,
                "params_without_grad": params.params_without_grad,
                "zero_since_step": zero_since.get(layer.index),
            }
        )
    rows = _rows_of(LayerStats).validate_python(fields)
    rows.sort(key=lambda row: (row.depth_index is None, row.depth_index or 0))
    return rows


def build_activation_stats(sites: Mapping[str, SiteTotals]) -> list[ActivationStats]:
    """One row per activation site that was called, in order of first call."""
    fields = [
        {
            "name": name,
            "owner": site.owner,
            "function": site.function,
            "calls": site.calls,
            "unit_axis": site.unit_axis,
            "units": site.units,
            "samples_per_unit": site.samples_per_unit,
            "dead_fraction": site.dead_fraction,
            "saturated_fraction": site.saturated_fraction,
            "nonfinite": site.nonfinite,
        }
        for name, site in sites.items()
        if site.calls
    ]
    return _rows_of(ActivationStats).validate_python(fields)


@functools.cache
def _rows_of(row_type: type[_Row]) -> TypeAdapter[list[_Row]]:
    """Validates a list of rows in one call (a third faster than a constructor call per
    row, which counts at 10,000 layers)."""
    return TypeAdapter(list[row_type])


def memory_horizon(norms: list[float], fraction: float) -> int | None:
    """Steps back from the last over which the norm stays >= fraction * last norm."""
    if not norms or not norms[-1] > 0:
        return None
    floor = fraction * norms[-1]
    horizon = 0
    for norm in reversed(norms[:-1]):
        if not norm >= floor:
            break
        horizon += 1
    return horizon


def build_temporal_stats(
    modules: Mapping[str, TemporalTotals], config: Config
) -> list[TemporalStats]:
    """One row per recurrent module that received a gradient."""
    rows = []
    for name, module in modules.items():
        norms = list(module.step_grad_norms)
        last = norms[-1] if norms else 0.0
        rows.append(
            TemporalStats(
                name=name,
                module_type=module.module_type,
                gated=module.gated,
                time_axis=module.time_axis,
                step_grad_norms=norms,
                first_to_last=norms[0] / last if last > 0 else None,
                memory_horizon=memory_horizon(norms, config.memory_horizon_fraction),
                passes=module.passes,
            )
        )
    return rows


def _step_stats(step: StepTotals, layer_names: Mapping[int, str]) -> StepStats:
    clips = [
        ClipCall(
            kind=clip.kind,
            bound=clip.bound,
            returned_norm=clip.returned_norm,
            before_unscale=clip.before_unscale,
        )
        for clip in step.clips
    ]
    grad_norm = step.norm_at_step
    norm_clips = [clip for clip in step.clips if clip.kind == "norm"]
    if norm_clips:
        # The first norm clip saw the gradient before any clipping (divided by the AMP
        # scale when it ran on scaled gradients).
        grad_norm = norm_clips[0].returned_norm
        if grad_norm is not None and norm_clips[0].scale:
            grad_norm = grad_norm / norm_clips[0].scale
    elif clips:
        grad_norm = None  # clipped by value first: the pre-clip norm was not measured
    return StepStats(
        optimizer=step.optimizer,
        step=step.index,
        grad_norm=grad_norm,
        grad_norm_at_step=step.norm_at_step,
        clip_calls=clips,
        skipped=step.skipped,
        amp_scale=step.amp_scale,
        nonfinite=step.first_nonfinite_layer is not None
        or (step.norm_at_step is not None and not math.isfinite(step.norm_at_step)),
        first_nonfinite_layer=None
        if step.first_nonfinite_layer is None
        else layer_names[step.first_nonfinite_layer],
        closure=step.closure,
    )


def build_step_stats(
    history: StepHistoryTotals, layer_names: Mapping[int, str]
) -> tuple[list[StepStats], StepSummary]:
    """The steps in the history window, and the summary that counts the earlier ones."""
    summary = StepSummary(
        total_steps=history.earlier_steps + len(history.steps),
        earlier_steps=history.earlier_steps,
        earlier_clipped_steps=history.earlier_clipped_steps,
        earlier_skipped_steps=history.earlier_skipped_steps,
        earlier_max_grad_norm_at_step=history.earlier_max_norm_at_step,
    )
    return [_step_stats(step, layer_names) for step in history.steps], summary
