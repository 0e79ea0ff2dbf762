"""A deferred ledger (check()'s) measures its gradients at the end of the pass, with the
same totals, the same order of first non-finite norms and one end of pass as a ledger
that measures each gradient when it is recorded."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes import _ledger
from gradcheckup.probes._accumulators import fetch_to_host
from gradcheckup.probes._hooks import ErrorLog
from gradcheckup.probes._ledger import GradientLedger, LedgerTotals

_SLOTS = 5


def _records() -> list[tuple[int, ...] | tuple[int, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (0, torch.randn(8, 16, generator=generator)),
        (1, 2, torch.randn(8, 16, generator=generator)),  # one gradient, two slots
        (3, torch.randn(2, 3, 4, generator=generator).to(torch.float16)),
        (4, torch.full((8, 16), math.nan)),
        (0, torch.randn(8, 16, generator=generator) * 1e-25),  # float32 squares underflow
        (3, torch.full((2, 3, 4), math.inf)),
        (1, torch.randn(16, generator=generator, dtype=torch.float64)),
        (2, torch.randn(70, 70, generator=generator)),  # too large to keep: measured at once
    ]


def _totals(deferred: bool) -> tuple[LedgerTotals, int]:
    ledger = GradientLedger(ErrorLog(), precise=True, deferred=deferred)
    ledger.allocate(_SLOTS)
    ends = []
    ledger.on_backward_end = lambda: ends.append(True)
    leaf = torch.ones(1, requires_grad=True)

    def record_all(grad: torch.Tensor) -> None:
        for *slots, gradient in _records():
            if len(slots) == 2:
                ledger.record_twice(slots[0], slots[1], gradient)
            else:
                ledger.record(slots[0], gradient)

    leaf.register_hook(record_all)
    (leaf * 2).sum().backward()
    fetched = fetch_to_host(ledger.device_values())
    return ledger.totals(fetched), len(ends)


@pytest.mark.parametrize("early_measures", [False, True], ids=["at the end", "in chunks"])
def test_deferred_totals_equal_immediate_ones(early_measures, monkeypatch) -> None:
    immediate, immediate_ends = _totals(deferred=False)
    if early_measures:
        monkeypatch.setattr(_ledger, "_DEFERRED_ELEMENTS", 100)  # a drain every record
    deferred, deferred_ends = _totals(deferred=True)

    assert deferred_ends == immediate_ends == 1
    assert deferred.appearances == immediate.appearances == [1] * _SLOTS  # one pass
    assert deferred.nonfinite == immediate.nonfinite == [0, 0, 0, 1, 1]
    assert deferred.first_tick == immediate.first_tick
    assert deferred.first_tick[4] < deferred.first_tick[3]  # slot 4 went NaN first
    for got, expected in zip(deferred.squared, immediate.squared, strict=True):
        assert got == pytest.approx(expected, rel=1e-12) or math.isnan(got) == math.isnan(expected)


def test_check_reports_what_a_watch_measures() -> None:
    """check() defers its norms, a watch does not: on the same pass both agree."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 1)
    )
    x = torch.randn(6, 4)
    checked = gcu.check(model, x, loss_fn=lambda output: output.sum())
    with gcu.watch(model) as monitor:
        model(x).sum().backward()
    watched = monitor.report()
    for mine, theirs in zip(checked.layers, watched.layers, strict=True):
        assert mine.output_grad_norm == pytest.approx(theirs.output_grad_norm, rel=1e-5)
        assert mine.grad_norm == pytest.approx(theirs.grad_norm, rel=1e-5)
        if theirs.input_grad_norm is not None:
            assert mine.input_grad_norm == pytest.approx(theirs.input_grad_norm, rel=1e-5)
