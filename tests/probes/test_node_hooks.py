"""check() reads a single-op layer's output and input gradients from one hook on its
autograd node (no identity view of the input): the numbers must be those of the
tensor hooks on an identity view, which every other layer, and every watch, uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes import layers


class _Residual(nn.Module):
    """y = fc2(relu(fc1(x))) + x: the skip path's gradient is not fc1's input gradient."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + x


class _SharedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class _Autocast(nn.Module):
    """Autocast casts the input before the Linear's op: the view path measures it."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 6), nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.second(hidden).float()


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 6), _Residual(6), nn.ReLU(), _Residual(6), nn.Linear(6, 2))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # a pad op first: views
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Conv1d(3, 3, 3), nn.Flatten())


def _sequence() -> nn.Module:  # Linear on (N, T, F): not one op, views
    return nn.Sequential(nn.Linear(5, 5), nn.GELU(), nn.Linear(5, 2))


CASES = [
    (_mlp, (8, 6)),
    (_cnn, (4, 3, 6, 6)),
    (_conv1d, (4, 2, 9)),
    (_sequence, (4, 3, 5)),
    (_SharedTwice, (8, 6)),
    (_Autocast, (8, 6)),
]


def _signals(report: gcu.Report) -> dict[str, tuple[object, ...]]:
    return {
        layer.name: (
            layer.output_grad_norm,
            layer.unit_signal,
            layer.input_grad_norm,
            layer.backward_gain,
            layer.grad_norm,
            layer.passes,
        )
        for layer in report.layers
    }


@pytest.mark.parametrize(("build", "shape"), CASES, ids=[c[0].__name__ for c in CASES])
def test_node_hooks_measure_what_views_measure(build, shape, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(*shape)
    with_nodes = gcu.check(model, x)
    monkeypatch.setattr(layers, "_single_op_layers", lambda inventory: {})
    with_views = gcu.check(model, x)
    fast, reference = _signals(with_nodes), _signals(with_views)
    assert fast.keys() == reference.keys()
    for name, values in reference.items():
        assert fast[name] == pytest.approx(values, rel=1e-6, abs=0), name
    assert all(layer.input_grad_norm is not None for layer in with_views.layers[1:])
    assert not with_nodes.probe_errors and with_nodes.findings == with_views.findings


def test_single_op_layers_are_linear_on_matrices_and_zero_padded_convolutions() -> None:
    from gradcheckup.probes.inventory import take_inventory

    model = _cnn()
    single_op = layers._single_op_layers(take_inventory(model))
    names = {layer.index: layer.name for layer in take_inventory(model).layers}
    assert {names[index]: dims for index, dims in single_op.items()} == {
        "0": 4,
        "5": 4,
        "8": 2,
    }


def test_the_residual_path_stays_out_of_the_input_gradient() -> None:
    # y = fc2(relu(fc1(x))) + x with fc2 = 0: the whole gradient at x takes the skip
    # path, none goes through fc1.
    block = _Residual(4)
    with torch.no_grad():
        block.fc2.weight.zero_()
    report = gcu.check(nn.Sequential(nn.Linear(4, 4), block), torch.randn(5, 4))
    assert report.layer("1.fc1").input_grad_norm == 0.0
    assert report.layer("0").output_grad_norm > 0.0


def test_a_failing_node_hook_is_recorded_and_backward_goes_on(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(self, *slots_and_gradients):  # type: ignore[no-untyped-def]
        raise ArithmeticError("broken ledger")

    # Only the node hooks' recording: the first layer (a leaf input, no node to read)
    # records through its tensor hooks.
    monkeypatch.setattr(layers.LayerSignalProbe, "_record_node", broken)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    report = gcu.check(model, torch.randn(6, 4))

    assert "node gradient hook of '2': ArithmeticError: broken ledger" in report.probe_errors
    assert report.layer("2").grad_norm  # parameter gradients arrived all the same
    assert report.layer("0").output_grad_norm  # the first layer is hooked otherwise
