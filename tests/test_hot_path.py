"""DESIGN's hot-path rule: no host sync inside hooks; one sync when the report is built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from tests import models


def _training_loop(model: nn.Module, device: torch.device, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, device=device)
        y = torch.randint(0, 10, (8,), device=device)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_hooks_never_read_device_values(monkeypatch: pytest.MonkeyPatch) -> None:
    model = models.SmallResNet()
    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 10, (8,))
    loss_fn = F.cross_entropy
    with gcu.watch(model) as monitor:
        # Anything that would bring a device value to the host now raises inside our
        # hooks, where the error log would record it.
        def forbidden(*args, **kwargs):
            raise AssertionError("host sync inside a hook")

        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        for _ in range(2):
            loss = loss_fn(model(x), y)
            torch.autograd.backward(loss)
        monkeypatch.undo()
    report = monitor.report()
    assert report.probe_errors == []
    assert report.passes == 2 and report.activations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_no_cuda_synchronisation_while_watching() -> None:
    device = torch.device("cuda")
    model = models.SmallResNet().to(device)
    _training_loop(model, device, steps=1)  # warm-up: lazy CUDA initialisation syncs
    with gcu.watch(model) as monitor:
        torch.cuda.set_sync_debug_mode("error")
        try:
            _training_loop(model, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    report = monitor.report()
    assert report.probe_errors == [] and report.passes == 3


class _EveryProbe(nn.Module):
    """Layers, activations of both families and a recurrent module."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU())
        self.rnn = nn.GRU(8, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.mlp(x))[0]


def test_a_report_reads_the_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _EveryProbe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # step_history=2 of 3 steps: earlier steps are summarised on device too.
    with gcu.watch(model, optimizer, config=gcu.Config(step_history=2)) as monitor:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(2, 5, 6)).square().sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    report = monitor.report()
    monkeypatch.undo()
    assert reads == ["tolist"]
    assert len(report.activations) == 2 and report.temporal and report.passes == 3
    assert len(report.steps) == 2 and report.step_summary.earlier_steps == 1
