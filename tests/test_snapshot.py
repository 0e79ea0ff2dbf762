"""Monitor.snapshot: reports of windows of a watch, while report() covers the whole run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradcheckup as gcu

CONFIG = gcu.Config(sample_every=1)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, scale: float) -> list[float]:
    """One training step with inputs scaled by ``scale``; the first layer's weight
    gradient norm, measured directly."""
    optimizer.zero_grad()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(3)) * scale
    model(x).square().mean().backward()
    norm = model[0].weight.grad.norm().item(), model[0].bias.grad.norm().item()
    optimizer.step()
    return [norm[0] ** 2 + norm[1] ** 2]


def test_windows_report_their_own_passes_and_report_covers_all() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gcu.watch(model, optimizer, config=CONFIG) as monitor:
        first = [_step(model, optimizer, 1.0)[0] for _ in range(3)]
        window_one = monitor.snapshot()
        second = [_step(model, optimizer, 10.0)[0] for _ in range(2)]
        window_two = monitor.snapshot()
    whole = monitor.report()

    assert (window_one.passes, window_two.passes, whole.passes) == (3, 2, 5)
    rms = lambda squares: math.sqrt(sum(squares) / len(squares))  # noqa: E731
    assert window_one.layer("0").grad_norm == pytest.approx(rms(first), rel=1e-5)
    assert window_two.layer("0").grad_norm == pytest.approx(rms(second), rel=1e-5)
    assert whole.layer("0").grad_norm == pytest.approx(rms(first + second), rel=1e-5)
    assert [step.step for step in window_one.steps] == [0, 1, 2]
    assert [step.step for step in window_two.steps] == [3, 4]
    assert len(whole.steps) == 5


def test_dead_units_are_judged_per_window() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gcu.watch(model, optimizer, config=CONFIG) as monitor:
        _step(model, optimizer, 1.0)
        alive = monitor.snapshot()
        with torch.no_grad():
            model[0].bias.fill_(-1e3)  # every unit dead from now on
        for _ in range(3):
            _step(model, optimizer, 1.0)
        dead = monitor.snapshot()
    whole = monitor.report()
    assert alive.activation("0/relu").dead_fraction < 0.5
    assert dead.activation("0/relu").dead_fraction == 1.0
    assert dead.activation("0/relu").calls == 3
    # Over the whole run, a unit active in the first window was not dead.
    assert whole.activation("0/relu").dead_fraction == alive.activation("0/relu").dead_fraction
    assert whole.activation("0/relu").calls == 4


def test_snapshot_without_reset_keeps_the_window_open() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gcu.watch(model, optimizer, config=CONFIG) as monitor:
        _step(model, optimizer, 1.0)
        peek = monitor.snapshot(reset=False)
        _step(model, optimizer, 1.0)
        window = monitor.snapshot()
        empty = monitor.snapshot()
    assert (peek.passes, window.passes, empty.passes) == (1, 2, 0)
    assert empty.steps == [] and all(layer.grad_norm is None for layer in empty.layers)


def test_a_snapshot_reads_the_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.GRU(8, 4, batch_first=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gcu.watch(model, optimizer, config=CONFIG) as monitor:
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(2, 5, 4))[0].sum().backward()
            optimizer.step()
        reads: list[str] = []
        original = torch.Tensor.tolist

        def counted(tensor: torch.Tensor):
            reads.append("tolist")
            return original(tensor)

        monkeypatch.setattr(torch.Tensor, "tolist", counted)
        window = monitor.snapshot()
        monkeypatch.undo()
    assert reads == ["tolist"]
    assert window.temporal and window.activations and window.passes == 2
