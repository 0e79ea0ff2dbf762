"""Both directions pinned: sick models are flagged, healthy standard architectures at
initialisation give no error finding."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.rules import depth_ratio
from tests import models

Case = Callable[[], tuple[nn.Module, Any, Any]]


def _classification(
    model: nn.Module, inputs: torch.Tensor, classes: int
) -> tuple[nn.Module, Any, Any]:
    return model, inputs, torch.randint(0, classes, (inputs.shape[0],))


HEALTHY: dict[str, Case] = {
    "he_relu_mlp": lambda: _classification(models.he_relu_mlp(depth=6), torch.randn(64, 32), 10),
    "residual_mlp_layernorm": lambda: _classification(
        models.ResidualMLP(depth=8), torch.randn(64, 32), 10
    ),
    "residual_cnn_batchnorm": lambda: _classification(
        models.SmallResNet(), torch.randn(16, 3, 32, 32), 10
    ),
    "transformer_encoder": lambda: _classification(
        models.TransformerClassifier(), torch.randint(0, 100, (16, 32)), 5
    ),
    "lstm": lambda: _classification(
        models.RecurrentClassifier("lstm"), torch.randint(0, 100, (16, 20)), 5
    ),
    "gru": lambda: _classification(
        models.RecurrentClassifier("gru"), torch.randint(0, 100, (16, 20)), 5
    ),
    "hf_style_dict_io": lambda: (models.TinyBert(), models.tiny_bert_inputs(), None),
    "sigmoid_chain_with_skips": lambda: (
        models.SigmoidChain(depth=40, width=32, skip=True),
        torch.randn(64, 32),
        None,
    ),
}


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_architectures_have_no_errors(name: str) -> None:
    model, inputs, target = HEALTHY[name]()
    report = gcu.check(model, inputs, target=target)
    errors = [finding.describe() for finding in report.findings if finding.severity == "error"]
    assert errors == [], errors
    assert report.ok
    assert report.probe_errors == []
    assert not report.findings_of("vanishing") and not report.findings_of("exploding")


def test_sigmoid_mlp_20_layers_is_vanishing() -> None:
    report = gcu.check(
        models.sigmoid_mlp(depth=20), torch.randn(64, 64), target=torch.randint(0, 10, (64,))
    )
    (finding,) = report.findings_of("vanishing")
    assert finding.severity == "error" and finding.where == "0"
    assert finding.value < report.config.vanishing_ratio
    assert "sigmoid/tanh" in finding.hint and "residual" in finding.hint
    assert not report.ok


def test_sigmoid_chain_40_layers_is_vanishing_and_skips_fix_it() -> None:
    x = torch.randn(64, 32)
    plain = gcu.check(models.SigmoidChain(depth=40, width=32), x)
    (finding,) = plain.findings_of("vanishing")
    assert finding.where == "layers.0" and finding.severity == "error"

    skipped = gcu.check(models.SigmoidChain(depth=40, width=32, skip=True), x)
    assert skipped.findings_of("vanishing") == []
    # The trap the rule avoids: with skips, raw parameter gradients still grow by
    # orders of magnitude from the first layer to the head.
    head, first = skipped.layer("head").grad_norm, skipped.layer("layers.0").grad_norm
    assert head / first > 30


def test_sigmoid_per_layer_factor_matches_the_chain_rule() -> None:
    # Each sigmoid layer multiplies the backward signal by ||W^T diag(sigmoid'(z))||,
    # which gradcheckup reports as the next layer's backward gain; the signal at each
    # layer is then the product of the gains above it.
    report = gcu.check(
        models.sigmoid_mlp(depth=8), torch.randn(32, 64), target=torch.randint(0, 10, (32,))
    )
    layers = report.layers
    for earlier, later in itertools.pairwise(layers):
        # Between two Linear layers sits an elementwise sigmoid: its factor is the part
        # of the ratio that the later layer's own gain does not explain, at most 1/4.
        sigmoid_factor = earlier.output_grad_norm / (later.output_grad_norm * later.backward_gain)
        assert 0 < sigmoid_factor <= 0.25 + 1e-6


@pytest.mark.parametrize(
    ("depth", "severity"),
    [(6, None), (14, None), (15, "warning"), (16, "error"), (20, "error")],
)
def test_linear_chain_with_gain_two_is_exploding_never_vanishing(
    depth: int, severity: str | None
) -> None:
    # Its smallest signal is at the output layer: growth toward the input is explosion.
    report = gcu.check(models.linear_chain(depth=depth, gain=2.0), torch.randn(16, 32))
    assert report.findings_of("vanishing") == []
    # Equal widths and gain 2 per layer: the first end is layer 0 (largest), the last end
    # the output layer, so the ratio of the signal per unit is exactly 2^(depth - 1):
    # 2^14 = 16384 passes the warning threshold (1e4), 2^15 = 32768 the error one (3e4).
    ratio, first_end, last_end, _ = depth_ratio(report.layers, report.config)
    assert (first_end.name, last_end.name) == ("0", str(depth - 1))
    assert ratio == pytest.approx(2.0 ** (depth - 1), rel=1e-4)
    findings = report.findings_of("exploding")
    assert [finding.severity for finding in findings] == ([severity] if severity else [])
    if findings:
        assert findings[0].value == pytest.approx(2.0 ** (depth - 1), rel=1e-4)
        assert "clip" in findings[0].hint


def test_linear_chain_with_gain_half_is_vanishing() -> None:
    report = gcu.check(models.linear_chain(depth=20, gain=0.5), torch.randn(16, 32))
    (finding,) = report.findings_of("vanishing")
    # The first end is the largest signal of the first 5 layers (window 0.25), layer 4,
    # 15 layers before the output layer: 0.5^15.
    assert finding.value == pytest.approx(0.5**15, rel=1e-4)


def test_attention_query_key_layers_do_not_decide_the_depth_ratio() -> None:
    report = gcu.check(models.TinyBert(), models.tiny_bert_inputs())
    signals = {
        layer.name: layer.output_grad_norm for layer in report.layers if layer.output_grad_norm
    }
    largest = max(signals.values())
    assert signals["attention.0.query"] < 1e-3 * largest  # the trap is real in this model
    ratio, *_ = depth_ratio(report.layers, report.config)
    assert report.config.vanishing_warn_ratio < ratio < report.config.exploding_warn_ratio


def test_dead_relu_model_is_flagged() -> None:
    model = nn.Sequential(
        models.biased_linear(16, 50, dead_fraction=0.9), nn.ReLU(), nn.Linear(50, 2)
    )
    report = gcu.check(model, torch.randn(64, 16))
    (finding,) = report.findings_of("dead_relu")
    assert finding.severity == "error" and finding.where == "0/relu"
    assert finding.value == pytest.approx(0.9) and finding.threshold == 0.8
    assert "LeakyReLU" in finding.hint


def test_saturated_tanh_model_is_flagged() -> None:
    layer = nn.Linear(16, 32)
    nn.init.normal_(layer.weight, std=10.0)
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(32, 1))
    report = gcu.check(model, torch.randn(64, 16))
    (finding,) = report.findings_of("saturation")
    assert finding.severity == "error" and finding.value >= 0.9
    assert "Xavier" in finding.hint


def test_a_detached_stage_is_one_no_gradient_error_and_unused_layers_stay_warnings() -> None:
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
            self.head = nn.Linear(16, 3)
            self.spare = nn.Linear(16, 3)  # never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x).detach())  # the stem's output leaves the graph

    report = gcu.check(Detached(), torch.randn(32, 8), target=torch.randint(0, 3, (32,)))
    found = [(f.severity.value, f.where, f.value) for f in report.findings_of("no_gradient")]
    assert found == [("error", "stem.0", 2.0), ("warning", "spare", 2.0)]
    assert not report.ok


def _train(lr: float, steps: int = 8) -> gcu.Report:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with gcu.watch(model, optimizer=optimizer) as monitor:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    return monitor.report()


def test_watched_training_diverging_without_clipping_is_an_error_ordinary_training_is_not() -> None:
    # MSE on a linear model: the Hessian's eigenvalues are ~2, so lr 2.5 multiplies the
    # error by |1 - 2.5 * 2| ~ 4 per step and every step's norm jumps over the earlier ones.
    diverged = _train(lr=2.5).findings_of("exploding")
    (finding,) = [found for found in diverged if "jumped" in found.message]
    assert finding.severity == "error" and finding.where == "optimizer 0, step 1"
    assert finding.value > 3.0 and "diverging" in finding.message
    assert _train(lr=0.1).findings == []
