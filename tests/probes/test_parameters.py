"""Per-layer parameter statistics against plain torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from tests.helpers import layer_norm_of


def _two_layer(device: torch.device) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)


def test_layer_numbers_equal_direct_computation(device: torch.device) -> None:
    model = _two_layer(device)
    x = torch.randn(32, 8, device=device)
    y = torch.randint(0, 4, (32,), device=device)

    report = gcu.check(model, x, target=y, loss_fn=F.cross_entropy)

    # Independent computation: retain the intermediate gradients by hand.
    leaf = x.clone().requires_grad_(True)
    hidden = model[0](leaf)
    hidden.retain_grad()
    activated = model[1](hidden)
    activated.retain_grad()
    logits = model[2](activated)
    logits.retain_grad()
    loss = F.cross_entropy(logits, y)
    loss.backward()

    first, second = report.layer("0"), report.layer("2")
    expected = {
        "0": (
            layer_norm_of([model[0].weight.grad, model[0].bias.grad]),
            layer_norm_of([model[0].weight, model[0].bias]),
        ),
        "2": (
            layer_norm_of([model[2].weight.grad, model[2].bias.grad]),
            layer_norm_of([model[2].weight, model[2].bias]),
        ),
    }
    for stats in (first, second):
        grad_norm, weight_norm = expected[stats.name]
        assert stats.grad_norm == pytest.approx(grad_norm, rel=1e-5)
        assert stats.weight_norm == pytest.approx(weight_norm, rel=1e-5)
        assert stats.grad_to_weight == pytest.approx(grad_norm / weight_norm, rel=1e-5)
        assert stats.module_type == "Linear"
        assert stats.nonfinite_passes == 0 and stats.nonfinite_count == 0
        assert stats.passes == 1

    assert first.output_grad_norm == pytest.approx(float(hidden.grad.norm()), rel=1e-5)
    assert second.output_grad_norm == pytest.approx(float(logits.grad.norm()), rel=1e-5)
    assert first.input_grad_norm == pytest.approx(float(leaf.grad.norm()), rel=1e-5)
    assert second.input_grad_norm == pytest.approx(float(activated.grad.norm()), rel=1e-5)
    assert first.backward_gain == pytest.approx(
        float(leaf.grad.norm() / hidden.grad.norm()), rel=1e-5
    )
    assert second.backward_gain == pytest.approx(
        float(activated.grad.norm() / logits.grad.norm()), rel=1e-5
    )

    rms = {
        name: norm / math.sqrt(count)
        for name, (norm, _), count in [
            ("0", expected["0"], 8 * 16 + 16),
            ("2", expected["2"], 16 * 4 + 4),
        ]
    }
    top = max(rms.values())
    assert first.relative_grad == pytest.approx(rms["0"] / top, rel=1e-5)
    assert second.relative_grad == pytest.approx(rms["2"] / top, rel=1e-5)
    assert max(first.relative_grad, second.relative_grad) == pytest.approx(1.0)
    assert [layer.depth_index for layer in report.layers] == [0, 1]
    assert report.loss == pytest.approx(loss.item(), rel=1e-6)


def test_zero_weights_give_no_ratio_instead_of_inf() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    report = gcu.check(model, torch.randn(8, 4))
    head = report.layer("1")
    assert head.weight_norm == 0.0
    assert head.grad_to_weight is None
    assert head.grad_norm is not None and head.grad_norm > 0


def test_tied_weights_are_counted_once() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.body = nn.Linear(16, 16)
            self.lm_head = nn.Linear(16, 50, bias=False)
            self.lm_head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.lm_head(torch.tanh(self.body(self.embed(tokens))))

    model = TiedLM()
    tokens = torch.randint(0, 50, (4, 6))
    report = gcu.check(model, tokens, target=torch.randint(0, 50, (4, 6)))
    names = [layer.name for layer in report.layers]
    assert "lm_head" not in names  # its only parameter belongs to 'embed'
    assert sum(layer.param_count for layer in report.layers) == 50 * 16 + 16 * 16 + 16
    # The shared weight's gradient sums both uses, as autograd does.
    targets = torch.randint(0, 50, (4, 6))
    report = gcu.check(model, tokens, target=targets)
    logits = model(tokens)
    F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1)).backward()
    assert report.layer("embed").grad_norm == pytest.approx(
        float(model.embed.weight.grad.norm()), rel=1e-5
    )


def test_frozen_parameters_are_not_layers_and_not_findings() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    report = gcu.check(model, torch.randn(16, 4))
    assert [layer.name for layer in report.layers] == ["2"]
    assert report.findings_of("no_gradient") == []


def test_unused_trainable_parameter_is_a_no_gradient_finding() -> None:
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    report = gcu.check(WithUnused(), torch.randn(8, 4))
    findings = report.findings_of("no_gradient")
    assert sorted(finding.where for finding in findings) == ["(model)", "unused"]
    assert all(finding.severity == "warning" for finding in findings)
    assert report.layer("unused").params_without_grad == ["weight", "bias"]
    assert report.layer("").params_without_grad == ["scale"]
    assert report.layer("unused").grad_norm is None
    assert report.ok  # a warning, not an error


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_norms_are_computed_in_float32(dtype: torch.dtype) -> None:
    model = nn.Linear(64, 64).to(dtype)
    with torch.no_grad():
        model.weight.fill_(30.0)  # ||W|| = 1920 * ... well beyond what fp16 squares hold
    x = torch.ones(4, 64, dtype=dtype)
    report = gcu.check(model, x, loss_fn=lambda out: out.float().sum())
    layer = report.layer("")
    expected_weight = float(
        torch.cat([model.weight.float().flatten(), model.bias.float()]).detach().norm()
    )
    assert layer.weight_norm == pytest.approx(expected_weight, rel=1e-3)
    assert math.isfinite(layer.weight_norm) and layer.weight_norm > 65504**0.5
    # d sum(Wx + b) / dW[i, j] = sum over the batch of x[:, j] = 4, and 4 for each bias:
    # a squared norm of 16 * 4160 = 66560, past float16's largest value.
    assert layer.grad_norm == pytest.approx(4 * (64 * 64 + 64) ** 0.5, rel=1e-3)


def test_sparse_embedding_gradients() -> None:
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Flatten(), nn.Linear(12, 2))
    tokens = torch.tensor([[1, 1, 3], [1, 2, 3]])
    report = gcu.check(model, tokens, loss_fn=lambda out: out.sum())
    # Independent: dense embedding with the same weights.
    dense = nn.Embedding(20, 4)
    dense.weight.data.copy_(model[0].weight.data)
    out = model[2](model[1](dense(tokens)))
    out.sum().backward()
    assert report.layer("0").grad_norm == pytest.approx(float(dense.weight.grad.norm()), rel=1e-5)
