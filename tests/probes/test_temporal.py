"""Gradient through time for recurrent layers, checked against theory."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradcheckup as gcu
from gradcheckup._stats import memory_horizon
from gradcheckup.probes import ProbeContext
from gradcheckup.probes.temporal import TemporalProbe
from tests.helpers import probe_totals


def _elman(rho: float, size: int = 16, batch_first: bool = True) -> nn.RNN:
    """W_hh = rho * orthogonal, W_ih = I, no bias: with tiny inputs tanh' ~ 1, so each
    step back multiplies the input gradient by exactly rho."""
    rnn = nn.RNN(size, size, batch_first=batch_first)
    with torch.no_grad():
        orthogonal, _ = torch.linalg.qr(torch.randn(size, size))
        rnn.weight_hh_l0.copy_(rho * orthogonal)
        rnn.weight_ih_l0.copy_(torch.eye(size))
        rnn.bias_hh_l0.zero_()
        rnn.bias_ih_l0.zero_()
    return rnn


def _last_step_loss(readout: torch.Tensor, batch_first: bool = True):
    def loss(output):
        sequence = output[0]
        last = sequence[:, -1] if batch_first else sequence[-1]
        return (last * readout).sum()

    return loss


@pytest.mark.parametrize("rho", [0.5, 0.9, 1.5])
def test_elman_rnn_first_to_last_is_rho_to_the_steps(rho: float, device: torch.device) -> None:
    steps = 12
    rnn = _elman(rho).to(device)
    x = torch.randn(4, steps, 16, device=device) * 1e-6
    report = gcu.check(rnn, x, loss_fn=_last_step_loss(torch.randn(4, 16, device=device)))
    (stats,) = report.temporal
    assert stats.name == "" and stats.module_type == "RNN" and not stats.gated
    assert len(stats.step_grad_norms) == steps and stats.time_axis == "dim 1"
    assert stats.first_to_last == pytest.approx(rho ** (steps - 1), rel=0.02)
    norms = stats.step_grad_norms
    for earlier, later in itertools.pairwise(norms):
        assert earlier / later == pytest.approx(rho, rel=0.02)


def test_elman_findings_follow_the_spectral_radius() -> None:
    steps = 20
    x = torch.randn(4, steps, 16) * 1e-6
    readout = torch.randn(4, 16)
    shrinking = gcu.check(_elman(0.5), x, loss_fn=_last_step_loss(readout))
    (finding,) = shrinking.findings_of("vanishing_through_time")
    assert finding.severity == "error" and finding.value == pytest.approx(0.5**19, rel=0.02)
    assert "LSTM/GRU" in finding.hint
    growing = gcu.check(_elman(1.5), x, loss_fn=_last_step_loss(readout))
    (finding,) = growing.findings_of("exploding_through_time")
    assert finding.severity == "error" and "clip" in finding.hint
    steady = gcu.check(_elman(0.99), x, loss_fn=_last_step_loss(readout))
    assert (
        steady.findings_of("vanishing_through_time")
        == steady.findings_of("exploding_through_time")
        == []
    )


def test_memory_horizon_counts_steps_above_the_fraction() -> None:
    norms = [0.5**k for k in range(10, -1, -1)]  # last step 1, then 0.5, 0.25, ...
    assert memory_horizon(norms, 0.01) == 6  # 0.5^6 = 0.0156 >= 0.01 > 0.5^7
    assert memory_horizon([1.0, 1.0, 1.0], 0.5) == 2
    assert memory_horizon([1.0, 0.0], 0.5) is None


def test_plain_rnn_over_100_steps_vanishes() -> None:
    model = nn.RNN(8, 32, batch_first=True)
    report = gcu.check(
        model, torch.randn(8, 100, 8), loss_fn=lambda out: out[0][:, -1].square().sum()
    )
    (finding,) = report.findings_of("vanishing_through_time")
    assert finding.severity == "error" and report.temporal[0].first_to_last < 1e-6
    assert report.temporal[0].memory_horizon < 20


def test_lstm_with_a_high_forget_bias_keeps_its_memory() -> None:
    lstm = nn.LSTM(8, 32, batch_first=True)
    with torch.no_grad():
        lstm.bias_ih_l0[32:64] = 5.0  # gate order: input, forget, cell, output
        lstm.bias_hh_l0[32:64] = 0.0
    x = torch.randn(8, 100, 8)
    report = gcu.check(lstm, x, loss_fn=lambda out: out[0][:, -1].square().sum())
    (stats,) = report.temporal
    assert stats.gated and 1e-2 < stats.first_to_last < 1e2
    assert stats.memory_horizon == 99
    assert report.findings_of("vanishing_through_time") == []

    default = gcu.check(
        nn.LSTM(8, 32, batch_first=True), x, loss_fn=lambda out: out[0][:, -1].square().sum()
    )
    (finding,) = default.findings_of("vanishing_through_time")
    assert finding.severity == "warning" and "forget-gate bias" in finding.hint


def test_time_major_bidirectional_multilayer_gru() -> None:
    gru = nn.GRU(6, 10, num_layers=2, bidirectional=True)  # (T, N, F)
    report = gcu.check(gru, torch.randn(15, 3, 6), loss_fn=lambda out: out[0][-1].square().sum())
    (stats,) = report.temporal
    assert stats.time_axis == "dim 0" and len(stats.step_grad_norms) == 15
    assert all(norm > 0 for norm in stats.step_grad_norms)


def test_packed_sequence_per_step_norms_match_direct_computation() -> None:
    lstm = nn.LSTM(4, 6, batch_first=True)
    lengths = torch.tensor([7, 5, 2])
    x = torch.randn(3, 7, 4)
    packed = pack_padded_sequence(x, lengths, batch_first=True)

    def loss_fn(output):
        _, (h, _) = output
        return h.square().sum()

    report = gcu.check(lstm, packed, loss_fn=loss_fn)
    (stats,) = report.temporal
    assert stats.time_axis == "packed" and len(stats.step_grad_norms) == 7

    leaf = x.clone().requires_grad_(True)
    _, (h, _) = lstm(pack_padded_sequence(leaf, lengths, batch_first=True))
    (grad,) = torch.autograd.grad(h.square().sum(), leaf)
    expected = grad.square().sum(dim=(0, 2)).sqrt()
    assert stats.step_grad_norms == pytest.approx(expected.tolist(), rel=1e-5)


def test_unbatched_input() -> None:
    rnn = nn.RNN(3, 5)
    report = gcu.check(rnn, torch.randn(9, 3), loss_fn=lambda out: out[0][-1].sum())
    assert len(report.temporal[0].step_grad_norms) == 9


def test_plain_data_input_does_not_change_the_models_gradients() -> None:
    model = nn.Sequential(nn.LSTM(4, 8, batch_first=True))
    x = torch.randn(5, 6, 4)
    reference = [torch.zeros_like(p) for p in model.parameters()]
    grads = torch.autograd.grad(model(x)[0].square().sum(), list(model.parameters()))
    for buffer, grad in zip(reference, grads, strict=True):
        buffer.copy_(grad)
    with gcu.watch(model) as monitor:
        model(x)[0].square().sum().backward()
    for param, expected in zip(model.parameters(), reference, strict=True):
        assert torch.equal(param.grad, expected)
    assert not x.requires_grad and x.grad is None
    assert monitor.report().temporal[0].passes == 1


def test_lengths_may_vary_across_watched_passes() -> None:
    rnn = _elman(0.5, size=4)
    readout = torch.randn(2, 4)
    with gcu.watch(rnn) as monitor:
        for steps in (3, 5):
            rnn(torch.randn(2, steps, 4) * 1e-6)[0][:, -1].mul(readout).sum().backward()
    (stats,) = monitor.report().temporal
    assert len(stats.step_grad_norms) == 5 and stats.passes == 2
    # Steps 3-4 come from the 5-step pass only (one pass): rho^1 and rho^0 times |g|;
    # steps 0-2 mix both passes: RMS over two.
    g = float(readout.norm())
    assert stats.step_grad_norms[4] == pytest.approx(g, rel=0.02)
    assert stats.step_grad_norms[3] == pytest.approx(0.5 * g, rel=0.02)
    expected_0 = ((0.25 * g) ** 2 + (0.0625 * g) ** 2) / 2
    assert stats.step_grad_norms[0] == pytest.approx(expected_0**0.5, rel=0.02)


def test_custom_recurrent_module_named_in_config() -> None:
    class CellLoop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.RNNCell(3, 3)
            with torch.no_grad():
                self.cell.weight_hh.copy_(0.5 * torch.eye(3))
                self.cell.weight_ih.copy_(torch.eye(3))
                self.cell.bias_hh.zero_()
                self.cell.bias_ih.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, F)
            h = torch.zeros(x.shape[0], 3)
            for step in range(x.shape[1]):
                h = self.cell(x[:, step], h)
            return h

    model = nn.Sequential(CellLoop())
    config = gcu.Config(recurrent_modules={"0": 1})
    report = gcu.check(model, torch.randn(2, 6, 3) * 1e-6, loss_fn=lambda h: h.sum(), config=config)
    (stats,) = report.temporal
    assert stats.name == "0" and stats.first_to_last == pytest.approx(0.5**5, rel=0.02)

    with pytest.raises(ValueError, match=r"config.recurrent_modules: no module named 'nope'"):
        gcu.check(model, torch.randn(2, 6, 3), config=gcu.Config(recurrent_modules={"nope": 1}))


def test_temporal_stats_round_trip_and_render() -> None:
    from rich.console import Console

    report = gcu.check(
        _elman(0.5), torch.randn(2, 30, 16) * 1e-6, loss_fn=_last_step_loss(torch.randn(2, 16))
    )
    assert gcu.Report.model_validate_json(report.model_dump_json()) == report
    console = Console(record=True, width=120, color_system=None)
    report.print(console)
    text = console.export_text()
    assert "Gradient through time" in text and "30 steps" in text and "first/last" in text
    line = next(line for line in text.splitlines() if "30 steps" in line)
    assert "▁" in line and "█" in line and line.index("▁") < line.index("█")


def test_temporal_totals_are_per_step_rms_over_the_passes_that_had_the_step() -> None:
    context = ProbeContext()
    probe = TemporalProbe(context, configured={})
    gru = nn.GRU(3, 4, batch_first=True)
    squared_by_step: dict[int, list[float]] = {}
    for length in (3, 5):
        sequence = torch.randn(2, length, 3, requires_grad=True)
        args, kwargs = probe.before_forward("gru", gru, (sequence,), {})
        output, _ = gru(*args, **kwargs)
        loss = output.square().sum()
        (grad,) = torch.autograd.grad(loss, sequence)  # independent dL/d(input)
        for step in range(length):
            squared_by_step.setdefault(step, []).append(
                float(grad[:, step].double().square().sum())
            )
    totals = probe_totals(probe, context)

    (gru_totals,) = totals.values()
    expected = [(sum(s) / len(s)) ** 0.5 for _, s in sorted(squared_by_step.items())]
    assert gru_totals.step_grad_norms == pytest.approx(expected, rel=1e-5)
    assert (gru_totals.passes, gru_totals.time_axis, gru_totals.gated) == (2, "dim 1", True)
    assert gru_totals.module_type == "GRU" and probe.unavailable() == []
    assert context.errors.summary() == []
