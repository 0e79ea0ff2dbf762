"""check() and a watch make no reference cycles: what they leave behind is freed as soon
as the report is dropped, not by a collector run that walks a large model's worth of
objects (it took 45 ms of check() on 10,000 modules)."""

from __future__ import annotations

import gc
import io
from collections.abc import Callable, Iterator

import pytest
import torch
from rich.console import Console
from torch import nn

import gradcheckup as gcu
from gradcheckup._gc import collector_paused


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    with collector_paused():
        yield


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(24, 1)
    )


def _printed(report: gcu.Report) -> None:
    report.print(Console(file=io.StringIO()))


CHECKS: dict[str, Callable[[], object]] = {
    "mlp": lambda: _printed(gcu.check(_mlp(), torch.randn(5, 4))),
    "conv, channels-first layout": lambda: _printed(gcu.check(_conv(), torch.randn(2, 3, 8))),
    "lstm, time profile": lambda: _printed(
        gcu.check(nn.LSTM(4, 8, batch_first=True), torch.randn(2, 3, 4))
    ),
}


def _watched_steps() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gcu.watch(model, optimizer=optimizer) as monitor:
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(5, 4)).sum().backward()
            optimizer.step()
    _printed(monitor.report())


CHECKS["watch with optimizer"] = _watched_steps


@pytest.mark.parametrize("run", CHECKS.values(), ids=CHECKS.keys())
def test_nothing_is_left_for_the_collector(run: Callable[[], object], collector_off) -> None:
    run()  # first use: lazy imports make their own cycles
    gc.collect()

    run()

    assert gc.collect() == 0
