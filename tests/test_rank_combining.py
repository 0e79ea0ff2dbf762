"""The rules that combine the ranks of a distributed job, one process (no collectives)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes import LedgerTotals
from gradcheckup.probes._hooks import ErrorLog
from gradcheckup.probes._ledger import GradientLedger
from gradcheckup.probes._ranks import largest, require_timeout, summed_aligned
from gradcheckup.probes.activations import SiteRecord, SiteShare


def _totals(squared: list[float], appearances: list[int]) -> LedgerTotals:
    return LedgerTotals(squared, [0] * len(squared), [math.inf] * len(squared), appearances)


def test_ledger_slots_combine_by_what_they_hold() -> None:
    ledger = GradientLedger(ErrorLog())
    ledger.allocate(3)
    ledger.mark_reduced(sharded=[1], replicated=[2])
    combined = ledger.combined(
        [_totals([1.0, 4.0, 9.0], [2, 1, 1]), _totals([3.0, 5.0, 9.0], [3, 1, 1])]
    )
    # Local gradients: each rank's passes add up. Shards: squares add up, same passes.
    # Replicated: the same gradient on every rank, counted once.
    assert combined.squared == [4.0, 9.0, 9.0]
    assert combined.appearances == [5, 1, 1]


def test_a_site_is_dead_where_it_is_dead_on_every_rank_and_nan_stays() -> None:
    record = SiteRecord(owner="0", function="relu", family="relu", calls=1, units=3, elements=6)
    first = SiteShare("0/relu", record, [1.0, 0.0, 0.0], None, None)
    second = SiteShare("0/relu", record, [0.0, 2.0, 0.0], None, None)
    combined = SiteShare.combined([first, second])
    assert combined.activity == [1.0, 2.0, 0.0]
    assert combined.record.calls == 2 and combined.record.elements == 12
    poisoned = SiteShare("0/relu", record, [math.nan, 0.0, 0.0], None, None)
    assert math.isnan(SiteShare.combined([first, poisoned]).activity[0])
    assert math.isnan(largest([1.0, math.nan, 3.0])) and largest([1.0, 3.0]) == 3.0


def test_time_step_sums_of_different_lengths_align_from_the_first_step() -> None:
    assert summed_aligned([[1.0, 2.0], [3.0, 4.0, 5.0]]) == [4.0, 6.0, 5.0]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1.0, ValueError), ("5", TypeError), (True, TypeError)],
)
def test_a_bad_timeout_is_named(timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        require_timeout(timeout)  # type: ignore[arg-type]


def test_a_timedelta_timeout_is_seconds() -> None:
    assert require_timeout(timedelta(minutes=2)) == 120.0


def test_report_checks_its_timeout_before_anything_else() -> None:
    model = nn.Linear(2, 1)
    with gcu.watch(model) as monitor:
        model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match="timeout"):
        monitor.report(timeout=0)
    report = monitor.report(local=True)
    assert report.ranks == 1 and report.passes == 1


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_single_process_ddp_measures_the_gradient_it_leaves_in_grad(tmp_path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        wrapped = nn.parallel.DistributedDataParallel(model)
        with gcu.watch(wrapped) as monitor:
            wrapped(torch.randn(5, 3)).sum().backward()
        report = monitor.report()
        expected = [
            float(torch.sqrt(sum(p.grad.square().sum() for p in model[i].parameters())))
            for i in (0, 2)
        ]
        assert [layer.grad_norm for layer in report.layers] == pytest.approx(expected, rel=1e-6)
        assert report.ranks == 1 and report.passes == 1 and report.probe_errors == []
        checked = gcu.check(wrapped, torch.randn(5, 3))
        assert all(layer.grad_norm for layer in checked.layers)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_module_watched_inside_its_ddp_wrapper_is_read_once_reduced(tmp_path) -> None:
    """As training frameworks do: the callback gets the inner module, the trainer the
    wrapper. Accumulation tells the two apart: the no_sync() pass is not reduced."""
    from gradcheckup.monitor import Monitor

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        wrapped = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(5, 3)
        reports = []
        for data_parallel in (wrapped, None):
            model.zero_grad()
            with Monitor(model, data_parallel=data_parallel) as monitor:
                with wrapped.no_sync():
                    wrapped(x).sum().backward()
                wrapped(x).sum().backward()
            reports.append(monitor.report())
        once_reduced, per_pass = reports
        # Two identical passes accumulated: .grad holds twice one pass's gradient.
        accumulated = float(torch.sqrt(sum(p.grad.square().sum() for p in model[0].parameters())))
        assert once_reduced.layers[0].passes == 1
        assert once_reduced.layers[0].grad_norm == pytest.approx(accumulated, rel=1e-6)
        assert per_pass.layers[0].passes == 2
        assert per_pass.layers[0].grad_norm == pytest.approx(accumulated / 2, rel=1e-6)
    finally:
        dist.destroy_process_group()


def test_the_trainers_wrapper_is_used_only_when_it_is_ddp() -> None:
    from types import SimpleNamespace

    pytest.importorskip("transformers")
    from gradcheckup.integrations.transformers import data_parallel_wrapper

    model = nn.Linear(2, 1)
    assert data_parallel_wrapper(SimpleNamespace(model_wrapped=model)) is None
    assert data_parallel_wrapper(None) is None


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_a_backward_from_any_output_of_a_ddp_model_is_read(tmp_path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.left = nn.Linear(4, 1)
            self.right = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = torch.tanh(self.body(x))
            return self.left(hidden), self.right(hidden)

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = TwoHeads()
        wrapped = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        with gcu.watch(wrapped) as monitor:
            _, right = wrapped(torch.randn(5, 3))
            right.sum().backward()  # the second output only
        report = monitor.report()
        body = report.layer("body")
        expected = float(torch.sqrt(sum(p.grad.square().sum() for p in model.body.parameters())))
        assert body.passes == 1 and body.grad_norm == pytest.approx(expected, rel=1e-6)
        assert report.layer("left").passes == 0
    finally:
        dist.destroy_process_group()


def test_a_monitor_told_of_a_wrapper_that_is_not_ddp_says_so() -> None:
    from gradcheckup.monitor import Monitor

    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"data_parallel: expected .*DistributedDataParallel"):
        Monitor(model, data_parallel=nn.DataParallel(model))
