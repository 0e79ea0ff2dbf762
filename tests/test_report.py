"""The Report model: JSON round trip, lookups, ok."""

from __future__ import annotations

import json

import pytest
import torch

import gradcheckup as gcu
from tests import models


def test_json_round_trip_reproduces_the_report_exactly() -> None:
    report = gcu.check(
        models.sigmoid_mlp(depth=6), torch.randn(16, 64), target=torch.randint(0, 10, (16,))
    )
    text = report.model_dump_json()
    restored = gcu.Report.model_validate_json(text)
    assert restored == report
    assert restored.model_dump_json() == text
    data = json.loads(text)  # strict JSON: no bare NaN/Infinity tokens
    assert data["ok"] == report.ok
    assert {"layers", "activations", "findings", "config", "torch_version"} <= set(data)


def test_ok_is_false_iff_an_error_finding_exists() -> None:
    sick = gcu.check(models.sigmoid_mlp(depth=20), torch.randn(16, 64))
    assert not sick.ok and any(f.severity == "error" for f in sick.findings)
    healthy = gcu.check(models.he_relu_mlp(depth=3), torch.randn(32, 32))
    assert healthy.ok and all(f.severity != "error" for f in healthy.findings)


def test_lookup_errors_name_what_exists() -> None:
    report = gcu.check(models.he_relu_mlp(depth=2), torch.randn(8, 32))
    with pytest.raises(KeyError, match=r"no layer named 'nope'; layers: \['0', '2', '4'\]"):
        report.layer("nope")
    with pytest.raises(KeyError, match=r"no activation site named 'x'"):
        report.activation("x")
    with pytest.raises(ValueError):
        report.findings_of("not-a-kind")


def test_findings_are_sorted_errors_first() -> None:
    model = torch.nn.Sequential(
        models.biased_linear(8, 20, 0.65), torch.nn.ReLU(), models.sigmoid_mlp(depth=20, width=20)
    )
    report = gcu.check(model, torch.randn(32, 8))
    severities = [finding.severity.value for finding in report.findings]
    ranks = [finding.severity.rank for finding in report.findings]
    assert ranks == sorted(ranks, reverse=True)
    assert "error" in severities and "warning" in severities


def test_config_is_validated_and_merged() -> None:
    config = gcu.Config().merged(dead_relu_fraction=0.3)
    assert (
        config.dead_relu_fraction == 0.3 and config.vanishing_ratio == gcu.Config().vanishing_ratio
    )
    with pytest.raises(ValueError, match="dead_relu_fraction"):
        gcu.Config().merged(dead_relu_fraction=1.5)
    for name, field in gcu.Config.model_fields.items():
        assert field.description, f"Config.{name} needs its reason documented"


def test_depth_profile_orders_by_forward_position_and_leaves_out_what_was_not_measured() -> None:
    from gradcheckup.report import depth_profile
    from tests.rules.stats import layer

    layers = [
        layer("c", 2, 1.0),
        layer("a", 0, 0.5),
        layer("zero", 1, 0.0),
        layer("nan", 3, float("nan")),
        layer("unmeasured", 4, None),
        layer("never-ran", None, 1.0),
    ]
    assert [entry.name for entry in depth_profile(layers)] == ["a", "c"]


def test_bias_gradients_stand_in_only_where_no_signal_was_hooked() -> None:
    from gradcheckup.report import backward_signal, bias_profile
    from tests.rules.stats import layer

    hooked = [layer("a", 0, 1.0).model_copy(update={"bias_grad_norm": 3.0})]
    assert bias_profile(hooked) == [] and backward_signal(hooked[0]) == 1.0
    unhooked = [
        layer("b", None, None).model_copy(update={"bias_grad_norm": 2.0}),
        layer("a", 0, None).model_copy(update={"bias_grad_norm": 3.0}),
        layer("c", 1, None).model_copy(update={"bias_grad_norm": 0.0}),
    ]
    assert [entry.name for entry in bias_profile(unhooked)] == ["a", "b"]
    assert backward_signal(unhooked[0]) == 2.0 and backward_signal(layer("x", 0, None)) == 0.0


def test_depth_ends_are_the_first_windows_largest_and_the_last_non_norm_layer() -> None:
    from gradcheckup.report import depth_ends
    from tests.rules.stats import profile

    layers = profile([1e-7, 1.0, 1e-7, 5.0, 1.0, 1.0, 3.0, 2.0])
    first, last = depth_ends(layers, 0.25)  # first window of 2
    assert (first.name, last.name) == ("l1", "l7")
    layers[7] = layers[7].model_copy(update={"module_type": "LayerNorm"})
    assert depth_ends(layers, 0.25)[1].name == "l6"
    first, last = depth_ends(layers[:3], 0.25)  # never fewer than one layer per end
    assert (first.name, last.name) == ("l0", "l2")


def test_a_step_exceeds_the_clip_limit_only_above_bound_times_tolerance() -> None:
    from gradcheckup.report import exceeds_clip_limit
    from tests.rules.stats import step

    config = gcu.Config(max_grad_norm=2.0, clip_tolerance=0.01)
    assert config.clip_limit == pytest.approx(2.02)
    assert not exceeds_clip_limit(step(0, 2.02), config)
    assert exceeds_clip_limit(step(0, 2.03), config)
    assert not exceeds_clip_limit(step(0, 9.0, skipped=True), config)
    assert not exceeds_clip_limit(step(0, None), config)
    assert not exceeds_clip_limit(step(0, 9.0), gcu.Config())
