"""Synthetic stats for the rule tests: only the fields a rule reads are chosen."""

from __future__ import annotations

from gradcheckup.report import ActivationStats, ClipCall, LayerStats, StepStats, TemporalStats


def layer(name: str, depth: int | None, signal: float | None) -> LayerStats:
    return LayerStats(
        name=name,
        module_type="Linear",
        depth_index=depth,
        param_count=10,
        grad_norm=1.0,
        weight_norm=1.0,
        grad_to_weight=1.0,
        relative_grad=1.0,
        output_grad_norm=signal,
        unit_signal=signal,
        input_grad_norm=None,
        backward_gain=None,
        nonfinite_passes=0,
        nonfinite_count=0,
        passes=1,
    )


def profile(signals: list[float | None]) -> list[LayerStats]:
    return [layer(f"l{i}", i, signal) for i, signal in enumerate(signals)]


def site(
    name: str, dead: float | None = None, saturated: float | None = None, samples: int = 64
) -> ActivationStats:
    return ActivationStats(
        name=name,
        owner="",
        function="relu" if dead is not None else "tanh",
        calls=1,
        unit_axis="features (last dim)",
        units=100,
        samples_per_unit=samples,
        dead_fraction=dead,
        saturated_fraction=saturated,
    )


def temporal(name: str, first_to_last: float | None, steps: int = 20, gated: bool = False):
    return TemporalStats(
        name=name,
        module_type="LSTM" if gated else "RNN",
        gated=gated,
        time_axis="dim 1",
        step_grad_norms=[1.0] * steps,
        first_to_last=first_to_last,
        memory_horizon=3,
        passes=1,
    )


def step(
    number: int,
    norm: float | None,
    *,
    optimizer: int = 0,
    clips: tuple[ClipCall, ...] = (),
    skipped: bool = False,
    nonfinite: bool = False,
    first_nonfinite_layer: str | None = None,
    before_clipping: float | None = None,
) -> StepStats:
    return StepStats(
        optimizer=optimizer,
        step=number,
        grad_norm=norm if before_clipping is None else before_clipping,
        grad_norm_at_step=norm,
        clip_calls=list(clips),
        skipped=skipped,
        amp_scale=None,
        nonfinite=nonfinite,
        first_nonfinite_layer=first_nonfinite_layer,
    )


def clip(bound: float, before_unscale: bool = False, returned: float | None = None) -> ClipCall:
    return ClipCall(kind="norm", bound=bound, returned_norm=returned, before_unscale=before_unscale)
