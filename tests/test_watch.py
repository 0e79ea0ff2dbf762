"""watch(): several real passes, the user's own loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from tests.helpers import hook_count


def test_grad_norm_is_rms_over_passes_and_leaves_training_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reference.load_state_dict(model.state_dict())
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)

    norms = []
    with gcu.watch(model) as monitor:
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            norms.append(float(torch.cat([p.grad.flatten() for p in model[2].parameters()]).norm()))
            optimizer.step()
    for x, y in batches:
        reference_optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        reference_optimizer.step()

    # Identical training with and without the monitor.
    for a, b in zip(model.parameters(), reference.parameters(), strict=False):
        assert torch.equal(a, b)
    report = monitor.report()
    assert report.passes == 4 and report.layer("2").passes == 4
    expected = math.sqrt(sum(n * n for n in norms) / len(norms))
    assert report.layer("2").grad_norm == pytest.approx(expected, rel=1e-5)
    assert hook_count(model) == 0


def test_gradient_accumulation_sees_each_backward_not_the_running_sum() -> None:
    model = nn.Linear(3, 1)
    x = torch.randn(8, 3)
    with gcu.watch(model) as monitor:
        for chunk in x.split(2):
            (model(chunk).sum() / 4).backward()  # .grad accumulates over 4 micro-batches
    per_pass = []
    for chunk in x.split(2):
        grads = torch.autograd.grad(model(chunk).sum() / 4, list(model.parameters()))
        per_pass.append(float(torch.cat([g.flatten() for g in grads]).norm()))
    expected = math.sqrt(sum(n * n for n in per_pass) / 4)
    assert monitor.report().layer("").grad_norm == pytest.approx(expected, rel=1e-5)


def test_report_inside_and_after_the_block_and_reopen_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    monitor = gcu.watch(model)
    assert hook_count(model) == 0  # nothing attached before the block
    with monitor:
        model(torch.randn(3, 2)).sum().backward()
        inside = monitor.report()
    model(torch.randn(3, 2)).sum().backward()  # after the block: not observed
    after = monitor.report()
    assert inside.passes == after.passes == 1
    assert inside.layer("0").grad_norm == after.layer("0").grad_norm
    with pytest.raises(RuntimeError, match="opened once"):
        monitor.open()


def test_backward_after_the_block_is_ignored() -> None:
    model = nn.Linear(2, 1)
    with gcu.watch(model) as monitor:
        loss = model(torch.randn(3, 2)).sum()
    loss.backward()
    report = monitor.report()
    assert report.layer("").passes == 0
    assert report.findings_of("no_gradient")[0].severity == "info"


def test_two_monitors_on_one_model_are_independent() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with gcu.watch(model) as outer:
        model(torch.randn(4, 3)).sum().backward()
        with gcu.watch(model) as inner:
            model(torch.randn(4, 3)).sum().backward()
    assert outer.report().passes == 2 and inner.report().passes == 1
    assert outer.report().activation("0/relu").calls == 2
    assert inner.report().activation("0/relu").calls == 1
    assert hook_count(model) == 0
