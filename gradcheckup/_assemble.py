"""Turn the probes' host-side totals into the report's per-layer and per-site stats."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from gradcheckup.config import Config
from gradcheckup.probes.activations import RELU_FAMILY, SiteRecord
from gradcheckup.probes.inventory import Inventory
from gradcheckup.probes.layers import SignalTotals
from gradcheckup.probes.parameters import ParameterTotals
from gradcheckup.probes.steps import EvictedSummary, StepRecord
from gradcheckup.probes.temporal import TemporalRecord
from gradcheckup.report import (
    ActivationStats,
    ClipCall,
    LayerStats,
    StepStats,
    StepSummary,
    TemporalStats,
)


def _ratio_of_squares(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return math.sqrt(numerator / denominator)


def build_layer_stats(
    inventory: Inventory,
    parameters: Mapping[int, ParameterTotals],
    signals: Mapping[int, SignalTotals],
    weight_squared: Mapping[int, float],
    nonfinite_count: Mapping[int, int] | None,
    zero_since: Mapping[int, int] | None = None,
) -> list[LayerStats]:
    """Per-layer stats, in forward (depth) order; layers that never ran come last."""
    per_param_rms = {}
    for layer in inventory.layers:
        grad_norm = parameters[layer.index].grad_norm
        if grad_norm is not None and math.isfinite(grad_norm) and layer.param_count:
            per_param_rms[layer.index] = grad_norm / math.sqrt(layer.param_count)
    largest_rms = max(per_param_rms.values(), default=0.0)

    first_moments = sorted(
        (signals[index].first_nonfinite_moment, index)
        for index in signals
        if signals[index].first_nonfinite_moment is not None
    )
    nonfinite_rank = {index: rank for rank, (_, index) in enumerate(first_moments, start=1)}

    rows = []
    for layer in inventory.layers:
        params = parameters[layer.index]
        signal = signals[layer.index]
        # Signals are summed over passes; divide by the passes that reached the layer so
        # that several passes give a root-mean-square, one pass the plain norm.
        passes = max(params.passes, 1)
        weight_norm = math.sqrt(weight_squared[layer.index])
        output_norm = _ratio_of_squares(signal.output_squared, passes)
        input_norm = _ratio_of_squares(signal.input_squared, passes)
        rms = per_param_rms.get(layer.index)
        rows.append(
            LayerStats(
                name=layer.name,
                module_type=type(layer.module).__name__,
                depth_index=signal.depth_index,
                param_count=layer.param_count,
                grad_norm=params.grad_norm,
                weight_norm=weight_norm,
                grad_to_weight=(
                    params.grad_norm / weight_norm
                    if params.grad_norm is not None and weight_norm > 0
                    else None
                ),
                relative_grad=rms / largest_rms if rms is not None and largest_rms > 0 else None,
                output_grad_norm=output_norm,
                bias_grad_norm=params.bias_grad_norm,
                input_grad_norm=input_norm,
                backward_gain=_ratio_of_squares(signal.input_squared, signal.output_squared),
                nonfinite_passes=params.nonfinite_passes,
                nonfinite_count=(
                    None if nonfinite_count is None else nonfinite_count.get(layer.index, 0)
                ),
                nonfinite_rank=nonfinite_rank.get(layer.index),
                passes=params.passes,
                params_without_grad=params.params_without_grad,
                zero_since_step=(zero_since or {}).get(layer.index),
            )
        )
    rows.sort(key=lambda row: (row.depth_index is None, row.depth_index or 0))
    return rows


def build_activation_stats(
    sites: Mapping[str, SiteRecord], fetched: Mapping[object, float | list[float]]
) -> list[ActivationStats]:
    rows = []
    for name, site in sites.items():
        if site.calls == 0:
            continue
        dead_fraction = saturated_fraction = None
        if site.family == RELU_FAMILY:
            ever_active = fetched.get(("ever_active", name))
            if isinstance(ever_active, list) and ever_active:
                dead_fraction = 1.0 - sum(ever_active) / len(ever_active)
        else:
            saturated = fetched.get(("saturated", name))
            if isinstance(saturated, float) and site.elements:
                saturated_fraction = saturated / site.elements
        rows.append(
            ActivationStats(
                name=name,
                owner=site.owner,
                function=site.function,
                calls=site.calls,
                unit_axis=site.unit_axis,
                units=site.units,
                samples_per_unit=site.samples_per_unit,
                dead_fraction=dead_fraction,
                saturated_fraction=saturated_fraction,
            )
        )
    return rows


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
    records: Mapping[str, TemporalRecord],
    fetched: Mapping[object, float | list[float]],
    config: Config,
) -> list[TemporalStats]:
    rows = []
    for name, record in records.items():
        sums = fetched.get(("temporal", name))
        if sums is None:
            continue
        per_step = [sums] if isinstance(sums, float) else sums
        counts = record.passes_at_step(len(per_step))
        norms = [
            math.sqrt(total / count) if count else 0.0
            for total, count in zip(per_step, counts, strict=True)
        ]
        last = norms[-1] if norms else 0.0
        rows.append(
            TemporalStats(
                name=name,
                module_type=record.module_type,
                gated=record.gated,
                time_axis=record.time_axis,
                step_grad_norms=norms,
                first_to_last=norms[0] / last if last > 0 else None,
                memory_horizon=memory_horizon(norms, config.memory_horizon_fraction),
                passes=sum(record.passes_by_length.values()),
            )
        )
    return rows


def step_device_values(records: Sequence[StepRecord], evicted: EvictedSummary) -> dict:
    """Every device value the step history needs, keyed for one fetch."""
    values: dict = {}
    for position, record in enumerate(records):
        if record.norm_at_step is not None:
            values[("step", position, "norm")] = record.norm_at_step.reshape(())
        if isinstance(record.skipped, torch.Tensor):
            values[("step", position, "skipped")] = record.skipped.reshape(())
        if record.scale is not None:
            values[("step", position, "scale")] = record.scale.reshape(())
        for clip_index, clip in enumerate(record.clips):
            if clip.returned_norm is not None:
                values[("step", position, "clip", clip_index, "norm")] = clip.returned_norm.reshape(
                    ()
                )
            if clip.scale is not None:
                values[("step", position, "clip", clip_index, "scale")] = clip.scale.reshape(())
            if isinstance(clip.bound, torch.Tensor):
                values[("step", position, "clip", clip_index, "bound")] = clip.bound.reshape(())
        for key, value in record.window.items():
            if key[0] == "first_nonfinite":
                values[("step", position, "first_nonfinite", key[1])] = value.reshape(())
    if evicted.max_norm_at_step is not None:
        values[("evicted", "max_norm")] = evicted.max_norm_at_step.reshape(())
    return values


def build_step_stats(
    records: Sequence[StepRecord],
    evicted: EvictedSummary,
    fetched: Mapping[object, float | list[float]],
    layer_names: Mapping[int, str],
) -> tuple[list[StepStats], StepSummary]:
    moments_by_position: dict[int, dict[int, float]] = {}
    for key, value in fetched.items():
        if (
            isinstance(key, tuple)
            and len(key) == 4
            and key[0] == "step"
            and key[2] == "first_nonfinite"
        ):
            moments_by_position.setdefault(key[1], {})[key[3]] = value
    steps = []
    for position, record in enumerate(records):
        norm_at_step = fetched.get(("step", position, "norm"))
        clips = []
        for clip_index, clip in enumerate(record.clips):
            bound = fetched.get(("step", position, "clip", clip_index, "bound"), clip.bound)
            clips.append(
                ClipCall(
                    kind=clip.kind,
                    bound=float(bound),
                    returned_norm=fetched.get(("step", position, "clip", clip_index, "norm")),
                    before_unscale=clip.before_unscale,
                )
            )
        grad_norm = norm_at_step
        norm_clips = [i for i, clip in enumerate(clips) if clip.kind == "norm"]
        if norm_clips:
            first = norm_clips[0]
            grad_norm = clips[first].returned_norm
            clip_scale = fetched.get(("step", position, "clip", first, "scale"))
            if grad_norm is not None and clip_scale:
                grad_norm = grad_norm / clip_scale
        elif clips:
            grad_norm = None  # clipped by value first: the pre-clip norm was not measured
        moments = moments_by_position.get(position, {})
        bad = {layer: moment for layer, moment in moments.items() if moment != float("inf")}
        first_layer = layer_names[min(bad, key=bad.__getitem__)] if bad else None
        skipped = record.skipped
        if isinstance(skipped, torch.Tensor):
            skipped = bool(fetched.get(("step", position, "skipped"), 0.0))
        steps.append(
            StepStats(
                optimizer=record.optimizer,
                step=record.index,
                grad_norm=grad_norm,
                grad_norm_at_step=norm_at_step,
                clip_calls=clips,
                skipped=bool(skipped),
                amp_scale=fetched.get(("step", position, "scale")),
                nonfinite=bool(bad)
                or (norm_at_step is not None and not math.isfinite(norm_at_step)),
                first_nonfinite_layer=first_layer,
                closure=record.closure,
            )
        )
    summary = StepSummary(
        total_steps=evicted.steps + len(records),
        earlier_steps=evicted.steps,
        earlier_clipped_steps=evicted.clipped_steps,
        earlier_skipped_steps=evicted.skipped_steps,
        earlier_max_grad_norm_at_step=fetched.get(("evicted", "max_norm")),
    )
    return steps, summary
