"""Backward signal and gain per layer, against theory and plain torch."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import gradcheckup as gcu


def test_orthogonal_square_linear_has_backward_gain_one(device: torch.device) -> None:
    # dL/dx = W^T dL/dy and W^T is orthogonal: it preserves the norm exactly.
    model = nn.Sequential(nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=False)).to(device)
    for layer in model:
        nn.init.orthogonal_(layer.weight)
    report = gcu.check(model, torch.randn(16, 32, device=device))
    for layer in report.layers:
        assert layer.backward_gain == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_scaled_orthogonal_chain_multiplies_the_signal_by_its_gain(gain: float) -> None:
    depth = 6
    layers = [nn.Linear(16, 16, bias=False) for _ in range(depth)]
    for layer in layers:
        nn.init.orthogonal_(layer.weight, gain=gain)
    report = gcu.check(nn.Sequential(*layers), torch.randn(8, 16))
    signals = [layer.output_grad_norm for layer in report.layers]
    for earlier, later in itertools.pairwise(signals):
        assert earlier / later == pytest.approx(gain, rel=1e-4)


def test_input_gain_of_residual_branch_excludes_the_skip_path() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(8, 8)
            self.branch = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            return h + self.branch(h)

    model = Residual()
    x = torch.randn(4, 8)
    report = gcu.check(model, x, loss_fn=lambda out: (out**2).sum())

    h = model.stem(x)
    h.retain_grad()
    branch_out = model.branch(h)
    branch_out.retain_grad()
    out = h + branch_out
    (out**2).sum().backward()
    branch_only = (branch_out.grad @ model.branch.weight).detach()  # W^T g, the branch's own dL/dh
    stats = report.layer("branch")
    assert stats.input_grad_norm == pytest.approx(float(branch_only.norm()), rel=1e-5)
    assert stats.input_grad_norm != pytest.approx(float(h.grad.norm()), rel=1e-3)
    assert report.layer("stem").output_grad_norm == pytest.approx(float(h.grad.norm()), rel=1e-5)


def test_inplace_relu_after_a_layer_works_and_gives_pre_activation_gradient() -> None:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    x = torch.randn(10, 6)
    report = gcu.check(model, x, loss_fn=lambda out: out.sum())
    assert report.probe_errors == []

    hidden = model[0](x)
    hidden.retain_grad()
    model[2](torch.relu(hidden)).sum().backward()
    assert report.layer("0").output_grad_norm == pytest.approx(float(hidden.grad.norm()), rel=1e-5)


def test_module_called_twice_aggregates_both_calls() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(5, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(torch.tanh(self.block(x)))

    model = Shared()
    x = torch.randn(3, 5)
    report = gcu.check(model, x, loss_fn=lambda out: out.sum())
    first = model.block(x)
    first.retain_grad()
    second = model.block(torch.tanh(first))
    second.retain_grad()
    second.sum().backward()
    expected = (first.grad.norm() ** 2 + second.grad.norm() ** 2).sqrt()
    assert report.layer("block").output_grad_norm == pytest.approx(float(expected), rel=1e-5)
    # (batch, features) outputs have no positions: the signal per unit is the whole norm.
    assert report.layer("block").unit_signal == pytest.approx(float(expected), rel=1e-5)
    assert report.layer("block").grad_norm == pytest.approx(
        float(torch.cat([model.block.weight.grad.flatten(), model.block.bias.grad]).norm()),
        rel=1e-5,
    )


def test_dict_output_and_keyword_tensor_inputs() -> None:
    class KeywordModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.mixer = Mixer()

        def forward(self, features: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
            encoded = self.encoder(features)
            return self.mixer(encoded, context=context)

    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.proj(x * context)}

    model = KeywordModel()
    report = gcu.check(model, {"features": torch.randn(6, 4), "context": torch.randn(6, 4)})
    assert report.probe_errors == []
    mixer = report.layer("mixer.proj")
    assert mixer.output_grad_norm is not None and mixer.output_grad_norm > 0
    encoder = report.layer("encoder")
    assert encoder.backward_gain is not None and encoder.backward_gain > 0


def test_unit_signal_is_a_root_mean_square_over_watched_passes() -> None:
    # Two passes with batches 2 and 6, (batch, features) outputs: like the norm, the
    # signal per unit is a root-mean-square over the passes.
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    batches = [torch.randn(2, 4), torch.randn(6, 4)]
    squares = 0.0
    for x in batches:
        hidden = model[0](x)
        hidden.retain_grad()
        model[1](hidden).sum().backward()
        squares += float(hidden.grad.norm() ** 2)
    model.zero_grad()
    with gcu.watch(model) as monitor:
        for x in batches:
            model(x).sum().backward()
    layer = monitor.report().layer("0")
    assert layer.unit_signal == pytest.approx((squares / 2) ** 0.5, rel=1e-5)
    assert layer.output_grad_norm == pytest.approx((squares / 2) ** 0.5, rel=1e-5)


class PositionsThenPool(nn.Module):
    """A 2-D conv, a 1-D conv over channels-first sequences, a sequence layer over
    (N, T, F), each pooled by a mean over positions before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(2, 3, 3, padding=1)
        self.conv1d = nn.Conv1d(3, 4, 3, padding=1)
        self.sequence = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = torch.tanh(self.conv2d(x))  # (N, 3, H, W)
        channels_first = torch.tanh(self.conv1d(image.flatten(2)))  # (N, 4, H*W)
        steps = self.sequence(channels_first.transpose(1, 2))  # (N, H*W, 5)
        return self.head(steps.mean(dim=1))


@pytest.mark.parametrize("size", [4, 8])
def test_unit_signal_sums_over_positions_per_sample_and_unit(size: int) -> None:
    model = PositionsThenPool()
    x = torch.randn(3, 2, size, size)
    report = gcu.check(model, x, loss_fn=lambda out: out.square().sum())
    outputs = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
        for name in ("conv2d", "conv1d", "sequence")
    ]
    loss = model(x).square().sum()
    for hook in hooks:
        hook.remove()
    for name in outputs:
        outputs[name].retain_grad()
    loss.backward()
    summed = {
        "conv2d": lambda g: g.sum(dim=(2, 3)),  # channels, spatial positions summed
        "conv1d": lambda g: g.sum(dim=2),  # channels-first 1-D: positions last
        "sequence": lambda g: g.sum(dim=1),  # (N, T, F): time summed
    }
    for name, reduce in summed.items():
        expected = float(reduce(outputs[name].grad).norm())
        assert report.layer(name).unit_signal == pytest.approx(expected, rel=1e-4), name


def test_signal_hooks_under_create_graph_measure_alike_and_keep_double_backward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(6, 4)
    reports, penalties = [], []
    for create_graph in (False, True):
        with gcu.watch(model) as monitor:
            loss = model(x).pow(2).sum()
            grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph)
        reports.append(monitor.report())
        penalties.append(sum(grad.pow(2).sum() for grad in grads))
    # The graph the hooks ran in (a gradient penalty's) still differentiates.
    penalties[1].backward()
    assert all(param.grad is not None for param in model.parameters())
    plain, penalised = reports
    for first, second in zip(plain.layers, penalised.layers, strict=True):
        assert second.output_grad_norm == pytest.approx(first.output_grad_norm, rel=1e-6)
        if first.input_grad_norm is None:  # the model's input needs no gradient
            assert second.input_grad_norm is None
        else:
            assert second.input_grad_norm == pytest.approx(first.input_grad_norm, rel=1e-6)
    assert penalised.probe_errors == []


def test_a_failing_signal_hook_is_recorded_and_backward_goes_on(monkeypatch) -> None:
    from gradcheckup.probes._ledger import GradientLedger

    def broken(self, *slots_and_norm):  # type: ignore[no-untyped-def]
        raise ArithmeticError("broken ledger")

    monkeypatch.setattr(GradientLedger, "record_twice", broken)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = gcu.check(model, torch.randn(6, 4))
    assert any(
        error.startswith("output gradient hook of '0': ArithmeticError: broken ledger")
        for error in report.probe_errors
    )
