"""The assertion helpers: fail with the layer, the number, the threshold and the hint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.report import format_number
from gradcheckup.rules import depth_ratio
from gradcheckup.testing import (
    assert_healthy,
    assert_no_dead_relu,
    assert_no_exploding,
    assert_no_vanishing,
)
from tests import models


@pytest.fixture(scope="module")
def vanishing_report() -> gcu.Report:
    torch.manual_seed(0)
    return gcu.check(
        models.sigmoid_mlp(depth=20), torch.randn(64, 64), target=torch.randint(0, 10, (64,))
    )


@pytest.fixture(scope="module")
def healthy_report() -> gcu.Report:
    torch.manual_seed(0)
    return gcu.check(
        models.he_relu_mlp(depth=4), torch.randn(64, 32), target=torch.randint(0, 10, (64,))
    )


def test_assert_healthy_names_layer_value_threshold_and_hint(vanishing_report: gcu.Report) -> None:
    finding = vanishing_report.findings_of("vanishing")[0]
    with pytest.raises(AssertionError) as failure:
        assert_healthy(vanishing_report)
    message = str(failure.value)
    assert "- 0: vanishing (error)" in message
    threshold = format_number(vanishing_report.config.vanishing_ratio)
    assert f"value {format_number(finding.value)} vs threshold {threshold}" in message
    assert "hint: Replace sigmoid/tanh" in message


def test_helpers_pass_on_a_healthy_model(healthy_report: gcu.Report) -> None:
    assert_healthy(healthy_report)
    assert_no_vanishing(healthy_report)
    assert_no_exploding(healthy_report)
    assert_no_dead_relu(healthy_report)


def test_assert_no_vanishing_with_a_stricter_ratio(
    healthy_report: gcu.Report, vanishing_report: gcu.Report
) -> None:
    with pytest.raises(AssertionError, match="vanishing gradients"):
        assert_no_vanishing(vanishing_report)
    with pytest.raises(AssertionError, match=r"below min_ratio=0.99") as failure:
        assert_no_vanishing(healthy_report, min_ratio=0.99)
    # The depth rule's own message, judged against min_ratio: layer, ratio, threshold, hint.
    ratio, first_end, last_end, _ = depth_ratio(healthy_report.layers, healthy_report.config)
    message = str(failure.value)
    assert f"value {format_number(ratio)} vs threshold 0.99" in message
    assert f"ratio {ratio:.3g} < 0.99" in message
    assert (
        f"largest at {first_end.name!r}" in message and f"logits layer {last_end.name!r}" in message
    )
    assert "hint: Add residual (skip) connections" in message
    assert_no_vanishing(healthy_report, min_ratio=1e-3)
    with pytest.raises(
        ValueError, match=r"min_ratio: vanishing_ratio=1.5 is invalid: .*less than 1"
    ):
        assert_no_vanishing(healthy_report, min_ratio=1.5)


def test_assert_no_exploding() -> None:
    report = gcu.check(models.linear_chain(depth=20), torch.randn(8, 32))
    with pytest.raises(AssertionError, match=r"exploding gradients \(1\):\n  - 0: exploding"):
        assert_no_exploding(report)
    assert_no_exploding(report, max_ratio=1e6)
    with pytest.raises(AssertionError, match=r"above max_ratio=10") as failure:
        assert_no_exploding(report, max_ratio=10)
    ratio, *_ = depth_ratio(report.layers, report.config)
    assert f"- 0: exploding (error), value {format_number(ratio)} vs threshold 10." in str(
        failure.value
    )
    assert f"ratio {ratio:.3g} > 10" in str(failure.value) and "hint: The weights" in str(
        failure.value
    )
    with pytest.raises(
        ValueError, match=r"max_ratio: exploding_ratio=.* is invalid: .*greater than 1"
    ):
        assert_no_exploding(report, max_ratio=0.5)
    nonfinite = gcu.check(models.nonfinite_model(), torch.randn(8, 8))
    with pytest.raises(AssertionError, match="nonfinite"):
        assert_no_exploding(nonfinite)


def test_assert_no_dead_relu_with_custom_fraction() -> None:
    model = nn.Sequential(
        models.biased_linear(8, 10, dead_fraction=0.7), nn.ReLU(), nn.Linear(10, 1)
    )
    report = gcu.check(model, torch.randn(32, 8))
    assert_no_dead_relu(report)  # 70% is a warning by default, not an error
    with pytest.raises(
        AssertionError, match=r"- 0/relu: 70.0% of 10 units dead \(max_fraction 60.0%"
    ):
        assert_no_dead_relu(report, max_fraction=0.6)
    with pytest.raises(AssertionError, match="dead_relu"):
        assert_healthy(report, fail_on="warning")


def test_helpers_reject_what_is_not_a_report() -> None:
    with pytest.raises(TypeError, match=r"report: expected a gradcheckup\.Report"):
        assert_healthy({"ok": True})
    with pytest.raises(ValueError, match="fail_on"):
        assert_healthy(gcu.check(nn.Linear(2, 2), torch.ones(1, 2)), fail_on="fatal")
