"""Rules as pure functions of synthetic stats: thresholds, ends of the depth profile."""

from __future__ import annotations

import pytest

from gradcheckup import Config
from gradcheckup.report import ActivationStats, LayerStats
from gradcheckup.rules import (
    dead_relu_findings,
    depth_findings,
    depth_ratio,
    diagnose,
    saturation_findings,
)


def _layer(name: str, depth: int | None, signal: float | None) -> LayerStats:
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
        input_grad_norm=None,
        backward_gain=None,
        nonfinite_passes=0,
        nonfinite_count=0,
        passes=1,
    )


def _profile(signals: list[float | None]) -> list[LayerStats]:
    return [_layer(f"l{i}", i, signal) for i, signal in enumerate(signals)]


@pytest.mark.parametrize(
    ("ratio", "kind", "severity"),
    [
        (1e-4, "vanishing", "error"),
        (5e-3, "vanishing", "warning"),
        (0.5, None, None),
        (2e2, "exploding", "warning"),
        (1e4, "exploding", "error"),
    ],
)
def test_depth_thresholds(ratio: float, kind: str | None, severity: str | None) -> None:
    layers = _profile([ratio, 1.0, 1.0, 1.0])
    findings = depth_findings(layers, [], Config())
    assert [(f.kind.value, f.severity.value) for f in findings] == (
        [(kind, severity)] if kind else []
    )
    if findings:
        assert findings[0].value == pytest.approx(ratio) and findings[0].where == "l0"


def test_each_end_is_its_largest_signal_so_tiny_outliers_do_not_decide() -> None:
    # 8 layers, window 2: query/key-like outliers (1e-7) in the first window are ignored.
    layers = _profile([1e-7, 1.0, 1e-7, 1.0, 1.0, 1.0, 1e-7, 2.0])
    ratio, first_end, last_end, _ = depth_ratio(layers, Config())
    assert ratio == pytest.approx(0.5) and first_end.name == "l1" and last_end.name == "l7"
    assert depth_findings(layers, [], Config()) == []


def test_too_few_layers_and_zero_or_missing_signals_give_no_depth_judgement() -> None:
    assert depth_findings(_profile([1e-9, 1.0]), [], Config()) == []
    # Exact zeros (zero-initialised head or branch) and unmeasured layers are left out.
    assert depth_findings(_profile([0.0, None, 1.0, 1.0]), [], Config()) == []
    assert depth_findings(_profile([1e-9, 1.0, 1.0]), [], Config(min_depth=4)) == []


def test_vanishing_names_first_layer_even_when_its_signal_underflowed_to_zero() -> None:
    layers = _profile([0.0, 0.0, 1e-12, 1e-8, 1e-4, 1.0, 1.0, 1.0])
    (finding,) = depth_findings(layers, [], Config())
    assert finding.where == "l0" and "2 layer(s) got exactly zero" in finding.message


def test_layers_that_never_ran_are_not_in_the_profile() -> None:
    layers = [*_profile([1e-6, 1.0, 1.0]), _layer("never", None, 1e-12)]
    (finding,) = depth_findings(layers, [], Config())
    assert finding.kind == "vanishing" and finding.where == "l0"


def _site(
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


@pytest.mark.parametrize(
    ("dead", "severity"),
    [(0.05, None), (0.1, "warning"), (0.49, "warning"), (0.5, "error"), (1.0, "error")],
)
def test_dead_relu_grading(dead: float, severity: str | None) -> None:
    findings = dead_relu_findings([_site("a", dead=dead)], Config())
    assert [f.severity.value for f in findings] == ([severity] if severity else [])


@pytest.mark.parametrize(
    ("saturated", "severity"), [(0.4, None), (0.5, "warning"), (0.95, "error")]
)
def test_saturation_grading(saturated: float, severity: str | None) -> None:
    findings = saturation_findings([_site("t", saturated=saturated)], Config())
    assert [f.severity.value for f in findings] == ([severity] if severity else [])


def test_stricter_config_raises_severity() -> None:
    site = _site("a", dead=0.3)
    assert dead_relu_findings([site], Config())[0].severity == "warning"
    assert dead_relu_findings([site], Config(dead_relu_fraction=0.3))[0].severity == "error"


def test_diagnose_combines_and_orders() -> None:
    findings = diagnose(_profile([1e-6, 1.0, 1.0]), [_site("a", dead=0.2)], Config())
    assert [f.kind.value for f in findings] == ["vanishing", "dead_relu"]


def test_an_error_threshold_milder_than_the_warning_one_still_errors() -> None:
    config = Config(
        vanishing_ratio=1e-2,
        vanishing_warn_ratio=1e-6,
        exploding_ratio=10.0,
        exploding_warn_ratio=1e6,
    )
    (vanishing,) = depth_findings(_profile([1e-3, 1.0, 1.0, 1.0]), [], config)
    assert vanishing.severity == "error" and vanishing.threshold == 1e-2
    (exploding,) = depth_findings(_profile([100.0, 1.0, 1.0, 1.0]), [], config)
    assert exploding.severity == "error" and exploding.threshold == 10.0


def test_bias_gradients_stand_in_when_no_backward_signal_was_hooked() -> None:
    layers = [
        _layer(f"l{i}", None, None).model_copy(update={"bias_grad_norm": value})
        for i, value in enumerate([1e-9, 1e-6, 1e-3, 1.0])
    ]
    (finding,) = depth_findings(layers, [], Config())
    assert finding.kind == "vanishing" and finding.where == "l0"
    assert "judged on bias gradients" in finding.message
