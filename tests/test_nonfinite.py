"""Non-finite gradients: where they first appear in backward order."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from tests.models import nonfinite_model


def test_origin_layer_is_named_in_backward_order(device: torch.device) -> None:
    model = nonfinite_model().to(device)
    report = gcu.check(model, torch.randn(16, 8, device=device))
    (finding,) = report.findings_of("nonfinite")
    assert finding.where == "0" and finding.severity == "error"
    assert finding.value == 8 * 8 + 8  # every weight and bias entry of layer 0
    first = report.layer("0")
    assert first.nonfinite_passes == 1 and first.nonfinite_count == 72 and first.nonfinite_rank == 1
    assert not math.isfinite(first.grad_norm)
    for name in ("2", "3"):
        assert report.layer(name).nonfinite_rank is None
        assert math.isfinite(report.layer(name).grad_norm)
    assert not report.ok


def test_nonfinite_loss_points_at_the_forward_pass() -> None:
    class LogOfNegative(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.head = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.log(self.fc(x) - 100.0))

    report = gcu.check(LogOfNegative(), torch.randn(4, 3))
    (finding,) = report.findings_of("nonfinite")
    assert finding.where == "loss" and math.isnan(finding.value)
    assert "forward pass" in finding.message


def test_nonfinite_under_watch_counts_passes() -> None:
    model = nonfinite_model()
    with gcu.watch(model) as monitor:
        for _ in range(3):
            model(torch.randn(4, 8)).sum().backward()
    layer = monitor.report().layer("0")
    assert layer.nonfinite_passes == 3 and layer.nonfinite_count is None
    (finding,) = monitor.report().findings_of("nonfinite")
    assert finding.where == "0" and finding.value == 3


def test_origin_found_when_an_earlier_layer_in_forward_is_still_finite() -> None:
    # NaN is born in the middle: layers after it (earlier in backward) stay finite,
    # the layers before it are all poisoned; the first poisoned in backward order is 'b'.
    class Middle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.b(self.a(x))
            h = h + torch.sqrt(h - h.detach())
            return self.c(h)

    report = gcu.check(Middle(), torch.randn(5, 4))
    ranks = {layer.name: layer.nonfinite_rank for layer in report.layers}
    assert ranks == {"a": 2, "b": 1, "c": None}
    assert report.findings_of("nonfinite")[0].where == "b"


class _NanWeightGradient(torch.autograd.Function):
    """Identity on a weight whose gradient comes back NaN: the signal stays finite."""

    @staticmethod
    def forward(ctx: object, weight: torch.Tensor) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, math.nan)


class _PoisonedWeight(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, _NanWeightGradient.apply(self.weight), self.bias)


class _RegisteredBackwards(nn.Module):
    # Registered last-first: 'late' runs last in forward, so first in backward.
    def __init__(self) -> None:
        super().__init__()
        self.late = _PoisonedWeight(4, 4)
        self.middle = nn.Linear(4, 4)
        self.early = _PoisonedWeight(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(torch.tanh(self.middle(torch.tanh(self.early(x)))))


def test_parameter_only_nonfinite_gradients_are_ranked_in_backward_order() -> None:
    # check() measures parameter gradients after its pass: their backward order comes
    # from their layer's output gradient, not from the order modules were registered in.
    report = gcu.check(_RegisteredBackwards(), torch.randn(5, 4))
    ranks = {layer.name: layer.nonfinite_rank for layer in report.layers}
    assert ranks == {"early": 2, "middle": None, "late": 1}
    assert report.layer("late").nonfinite_count == 16  # the weight, not the bias
    assert math.isfinite(report.layer("late").output_grad_norm or math.nan)
    assert report.findings_of("nonfinite")[0].where == "late"


def test_parameter_only_nonfinite_ranks_without_the_signal_probe_follow_registration() -> None:
    # No output gradient to follow: later-registered layers are taken as later in forward.
    config = gcu.Config(forward_probes=())
    report = gcu.check(_RegisteredBackwards(), torch.randn(5, 4), config=config)
    ranks = {layer.name: layer.nonfinite_rank for layer in report.layers}
    assert ranks == {"early": 1, "middle": None, "late": 2}


def test_inf_and_nan_survive_the_json_round_trip() -> None:
    report = gcu.check(nonfinite_model(), torch.randn(16, 8))
    text = report.model_dump_json()
    again = gcu.Report.model_validate_json(text)
    assert again.model_dump_json() == text
    original, restored = report.layer("0").grad_norm, again.layer("0").grad_norm
    assert (math.isnan(original) and math.isnan(restored)) or original == restored
    assert not math.isfinite(restored)
    assert '"Infinity"' in text or '"NaN"' in text


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_finding_values_keep_nonfinite_numbers(value: float) -> None:
    finding = gcu.Finding(
        kind="nonfinite",
        severity="error",
        where="x",
        value=value,
        threshold=None,
        message="m",
        hint="h",
    )
    restored = gcu.Finding.model_validate_json(finding.model_dump_json())
    assert (math.isnan(value) and math.isnan(restored.value)) or restored.value == value
