"""``loss_of``: a loss function written as ``loss_fn(output, target)`` serves tests
without a target (issue 10), and no loss runs twice."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from gradcheckup._inputs import loss_of

OUTPUT = torch.tensor([1.0, 2.0], requires_grad=True)


def _recorder(calls: list[tuple]):
    def two(output, target):
        calls.append((output, target))
        return output.square().mean()

    return two


def test_a_two_argument_loss_gets_none_without_a_target() -> None:
    calls: list[tuple] = []
    loss = loss_of(OUTPUT, None, _recorder(calls), seed=0)
    assert len(calls) == 1 and calls[0][1] is None and loss.detach().item() == 2.5
    target = torch.zeros(2)
    loss_of(OUTPUT, target, _recorder(calls), seed=0)
    assert calls[-1][1] is target


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda output: output.sum(),
        lambda output, target=None: output.sum(),
        lambda output, *rest: output.sum(),
        functools.partial(lambda output, scale: output.sum() * scale, scale=1.0),
        torch.sum,  # a builtin without a readable signature
    ],
    ids=["one", "default", "varargs", "partial", "builtin"],
)
def test_one_argument_losses_get_one_argument(loss_fn) -> None:
    assert loss_of(OUTPUT, None, loss_fn, seed=0).detach().item() == 3.0


def test_partials_and_modules_are_read_by_their_signature() -> None:
    calls: list[tuple] = []
    assert loss_of(OUTPUT, None, functools.partial(_recorder(calls)), seed=0).detach().item() == 2.5
    assert calls[-1][1] is None

    class PairLoss(nn.Module):
        def forward(self, output, target):
            calls.append((output, target))
            return output.sum()

    loss_of(OUTPUT, None, PairLoss(), seed=0)
    assert calls[-1][1] is None


def test_a_loss_is_never_called_twice() -> None:
    calls = []

    class Opaque:
        """A callable whose signature cannot be read, failing inside its body."""

        __signature__ = property(lambda self: (_ for _ in ()).throw(ValueError()))

        def __call__(self, *args):
            calls.append(args)
            raise TypeError("inside the loss")

    with pytest.raises(ValueError, match="TypeError: inside the loss"):
        loss_of(OUTPUT, None, Opaque(), seed=0)
    assert len(calls) == 1

    class OpaquePair(Opaque):
        """Unreadable signature, two required arguments: the one-argument call is
        refused before the body runs, then it gets ``None``."""

        def __call__(self, output, target):
            calls.append((output, target))
            return output.sum()

    calls.clear()
    assert loss_of(OUTPUT, None, OpaquePair(), seed=0).detach().item() == 3.0
    assert len(calls) == 1 and calls[0][1] is None


def test_check_with_a_two_argument_loss_and_no_target() -> None:
    seen = []

    def loss_fn(output, target):
        seen.append(target)
        return F.mse_loss(output, torch.zeros_like(output) if target is None else target)

    report = gcu.check(nn.Linear(4, 2), torch.randn(8, 4), loss_fn=loss_fn)
    assert seen == [None] and report.layers[0].grad_norm > 0
