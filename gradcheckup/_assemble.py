"""Turn the probes' host-side totals into the report's per-layer and per-site stats."""

from __future__ import annotations

import math
from collections.abc import Mapping

from gradcheckup.config import Config
from gradcheckup.probes.activations import RELU_FAMILY, SiteRecord
from gradcheckup.probes.inventory import Inventory
from gradcheckup.probes.layers import SignalTotals
from gradcheckup.probes.parameters import ParameterTotals
from gradcheckup.probes.temporal import TemporalRecord
from gradcheckup.report import ActivationStats, LayerStats, TemporalStats


def _ratio_of_squares(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return math.sqrt(numerator / denominator)


def build_layer_stats(
    inventory: Inventory,
    parameters: Mapping[int, ParameterTotals],
    signals: Mapping[int, SignalTotals],
    weight_squared: Mapping[int, float],
    nonfinite_entries: Mapping[int, int] | None,
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
                input_grad_norm=input_norm,
                backward_gain=_ratio_of_squares(signal.input_squared, signal.output_squared),
                nonfinite_passes=params.nonfinite_passes,
                nonfinite_entries=(
                    None if nonfinite_entries is None else nonfinite_entries.get(layer.index, 0)
                ),
                nonfinite_rank=nonfinite_rank.get(layer.index),
                passes=params.passes,
                params_without_grad=params.params_without_grad,
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
