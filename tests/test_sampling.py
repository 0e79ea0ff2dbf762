"""Sampling (Config.full_passes, sample_every) and probe selection (forward_probes):
what is measured on which pass, and that sampled statistics estimate the full ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def _train(model: nn.Module, config: gcu.Config, passes: int, optimizer: bool = False):
    x, y = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every pass is the same pass
    with gcu.watch(model, optimizer=sgd if optimizer else None, config=config) as monitor:
        for _ in range(passes):
            sgd.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sgd.step()
    return monitor.report()


def test_measured_passes_are_the_first_ones_then_every_nth() -> None:
    # 12 passes, the first 2 whole, then every 5th: passes 0, 1, 5, 10 are measured.
    report = _train(_model(), gcu.Config(full_passes=2, sample_every=5), passes=12)
    assert report.passes == 12
    assert {layer.passes for layer in report.layers} == {4}
    relu = report.activation("0/relu")
    assert relu.calls == 4


def test_sampled_statistics_equal_the_full_ones_when_passes_repeat() -> None:
    full = _train(_model(), gcu.Config(sample_every=1), passes=12)
    sampled = _train(_model(), gcu.Config(full_passes=0, sample_every=4), passes=12)
    assert sampled.passes == full.passes == 12
    for every, some in zip(full.layers, sampled.layers, strict=True):
        assert some.passes == 3 and every.passes == 12
        for field in ("grad_norm", "unit_signal", "output_grad_norm", "input_grad_norm"):
            expected = getattr(every, field)
            if expected is None:  # the first layer's input is data: no gradient
                assert getattr(some, field) is None
            else:
                assert getattr(some, field) == pytest.approx(expected, rel=1e-6), field
    for every, some in zip(full.activations, sampled.activations, strict=True):
        assert some.dead_fraction == every.dead_fraction
        assert some.saturated_fraction == every.saturated_fraction


def test_only_steps_after_a_measured_pass_carry_a_norm() -> None:
    report = _train(_model(), gcu.Config(full_passes=1, sample_every=3), passes=7, optimizer=True)
    measured = [step.step for step in report.steps if step.grad_norm_at_step is not None]
    assert measured == [0, 3, 6]
    assert len(report.steps) == 7  # every step is still recorded (clips, skips)
    norms = {step.grad_norm_at_step for step in report.steps if step.step in measured}
    assert len(norms) == 1 and norms.pop() > 0  # lr 0: the same gradient each time


def test_parameters_only_measures_gradients_and_says_what_it_left_out() -> None:
    report = _train(_model(), gcu.Config(forward_probes=()), passes=3)
    assert report.activations == []
    assert all(layer.grad_norm is not None and layer.grad_norm > 0 for layer in report.layers)
    assert all(layer.output_grad_norm is None for layer in report.layers)
    (note,) = [line for line in report.unavailable if "forward_probes" in line]
    assert "dead and saturated units" in note and "backward signal" in note


def test_one_probe_set_runs_without_the_others() -> None:
    report = _train(_model(), gcu.Config(forward_probes=("activations",)), passes=2)
    assert report.activations and all(layer.output_grad_norm is None for layer in report.layers)
    report = _train(_model(), gcu.Config(forward_probes=("signal",)), passes=2)
    assert not report.activations and all(layer.unit_signal for layer in report.layers)


def test_config_rejects_unknown_probes_and_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="forward_probes"):
        gcu.Config(forward_probes=("gradients",))
    with pytest.raises(ValueError, match="sample_every"):
        gcu.Config(sample_every=0)


def test_parameters_only_hooks_no_module_and_counts_backward_passes() -> None:
    model = _model()
    config = gcu.Config(forward_probes=(), full_passes=2, sample_every=5)
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    with gcu.watch(model, config=config) as monitor:
        assert all(
            not module._forward_pre_hooks and not module._forward_hooks
            for module in model.modules()
        )
        for _ in range(12):
            F.cross_entropy(model(x), y).backward()
    report = monitor.report()
    # Backward passes 0, 1, 5, 10 are measured, as forward passes would be.
    assert report.passes == 12 and {layer.passes for layer in report.layers} == {4}
    assert not report.findings_of("not_measured")


def test_check_inside_a_parameters_only_watch_stays_invisible_to_it() -> None:
    model = _model()
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    for measured_after_first in (True, False):
        config = gcu.Config(forward_probes=(), full_passes=1, sample_every=1)
        if not measured_after_first:
            config = gcu.Config(forward_probes=(), full_passes=1, sample_every=100)
        with gcu.watch(model, config=config) as monitor:
            F.cross_entropy(model(x), y).backward()
            gcu.check(model, x, target=y)
            F.cross_entropy(model(x), y).backward()
        report = monitor.report()
        assert report.passes == 2
        assert {layer.passes for layer in report.layers} == {2 if measured_after_first else 1}


def test_a_parameters_only_watch_beside_a_full_one_counts_every_pass() -> None:
    model = _model()
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    with gcu.watch(model, config=gcu.Config(forward_probes=())) as cheap, gcu.watch(model) as full:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
    for report in (cheap.report(), full.report()):
        assert report.passes == 3 and {layer.passes for layer in report.layers} == {3}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("backwards", [1, 3])
def test_parameters_only_counts_a_pass_once_through_reentrant_checkpointing(backwards: int) -> None:
    """The checkpoint's own backward runs nested inside the pass: its end is not the
    pass's end, whichever layer's gradient arrives first."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 8)  # before the checkpoint: its gradient comes last
            self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.block, self.embed(x), use_reentrant=True)

    model = Checkpointed()
    with gcu.watch(model, config=gcu.Config(forward_probes=(), sample_every=1)) as monitor:
        for _ in range(backwards):
            model(torch.randn(5, 4)).sum().backward()
    report = monitor.report()
    assert report.passes == backwards
    assert [layer.passes for layer in report.layers] == [backwards] * 3
