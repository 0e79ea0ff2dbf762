"""DESIGN's hot-path rule: no host sync inside hooks; one sync when the report is built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from tests import models
from tests.helpers import bytes_kept_by


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


def _watched_training(model: nn.Module, passes: int, batch: int, config: gcu.Config):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gcu.watch(model, optimizer, config=config) as monitor:
        for _ in range(passes):
            optimizer.zero_grad()
            model(torch.randn(batch, 5, 6)).square().sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    return monitor


_HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")


def test_no_device_read_in_any_hook_of_a_sampled_training_run(monkeypatch) -> None:
    """Every probe, the optimizer and clipping, on measured and unmeasured passes alike:
    any read of a device value inside our hooks raises there (and would be logged)."""
    model = _EveryProbe()
    reads: list[str] = []

    def forbidden(*args, _name="", **kwargs):
        reads.append(_name)
        raise AssertionError("host read inside a hook")

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = gcu.Config(full_passes=2, sample_every=3, step_history=4)
    with gcu.watch(model, optimizer, config=config) as monitor:
        # The user's own clip_grad_norm_ reads no device value either (no error_if_nonfinite).
        for name in _HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, lambda *a, _n=name, **k: forbidden(_name=_n))
        for _ in range(9):
            optimizer.zero_grad()
            model(torch.randn(2, 5, 6)).square().sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        monkeypatch.undo()
    report = monitor.report()
    assert reads == [] and report.probe_errors == []
    assert report.passes == 9 and {layer.passes for layer in report.layers} == {4}
    assert report.step_summary.total_steps == 9


def test_memory_kept_does_not_grow_with_passes_or_batch_size() -> None:
    """O(layers + units + time steps): 40 passes of 16 samples keep what 6 passes of 2
    samples keep, once the step history (4 steps) is full."""
    config = gcu.Config(sample_every=1, step_history=4)
    few = bytes_kept_by(_watched_training(_EveryProbe(), passes=6, batch=2, config=config))
    many = bytes_kept_by(_watched_training(_EveryProbe(), passes=40, batch=16, config=config))
    assert few == many
    assert 0 < many < 64 * 1024
