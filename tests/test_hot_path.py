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
