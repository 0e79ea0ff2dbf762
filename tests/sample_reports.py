"""Reports of the cases the pictures are judged on, each made once per test process: a
plain RNN vanishing through time, a deep sigmoid MLP vanishing through depth, a healthy
ResNet-style CNN, an unclipped training run whose step norms explode past max_grad_norm,
and a ReLU site with dead units."""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.examples import LastStepClassifier
from tests import models


@cache
def plain_rnn() -> gcu.Report:
    torch.manual_seed(0)
    return gcu.check(LastStepClassifier("rnn"), torch.randn(8, 60, 16))


@cache
def deep_sigmoid() -> gcu.Report:
    torch.manual_seed(0)
    return gcu.check(
        models.sigmoid_mlp(depth=20), torch.randn(32, 64), target=torch.randint(0, 10, (32,))
    )


@cache
def healthy_resnet() -> gcu.Report:
    torch.manual_seed(0)
    return gcu.check(
        models.SmallResNet(), torch.randn(8, 3, 16, 16), target=torch.randint(0, 10, (8,))
    )


@cache
def unclipped_exploding_training(max_grad_norm: float | None = 1.0) -> gcu.Report:
    """SGD at lr 0.6 on MSE: the step norms grow from 0.7 to ~1e11 over 16 steps, with
    no clipping although max_grad_norm is set."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.6)
    config = gcu.Config(max_grad_norm=max_grad_norm, sample_every=1)
    with gcu.watch(model, optimizer=optimizer, config=config) as monitor:
        for _ in range(16):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    return monitor.report()


@cache
def dead_relu() -> gcu.Report:
    """90% of the ReLU site '0/relu' is dead; the sigmoid site '2/sigmoid' is fine."""
    torch.manual_seed(0)
    model = nn.Sequential(
        models.biased_linear(16, 64, 0.9),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.Sigmoid(),
        nn.Linear(64, 4),
    )
    return gcu.check(model, torch.randn(64, 16), target=torch.randint(0, 4, (64,)))
