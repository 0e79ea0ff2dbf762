"""What a model repository's tests/test_gradients.py looks like with gradcheckup.

    pytest examples/test_gradients_example.py

The fixture seeds torch for every test, so reports (and baselines) are stable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def build_model() -> nn.Module:
    """A small residual MLP with LayerNorm: healthy at initialisation."""

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 2 * width)
            self.down = nn.Linear(2 * width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(F.relu(self.up(self.norm(x))))

    return nn.Sequential(
        nn.Linear(16, 32), *[Block(32) for _ in range(6)], nn.LayerNorm(32), nn.Linear(32, 5)
    )


def test_gradients_are_healthy(gradcheckup) -> None:
    batch, labels = torch.randn(64, 16), torch.randint(0, 5, (64,))
    report = gradcheckup.check(build_model(), batch, target=labels, loss_fn=F.cross_entropy)
    gradcheckup.assert_healthy(report)


@pytest.mark.gradcheckup(max_grad_norm=1.0, dead_relu_fraction=0.3)
def test_training_step_clips(gradcheckup) -> None:
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gradcheckup.watch(model, optimizer=optimizer) as monitor:
        for _ in range(5):
            loss = F.cross_entropy(model(torch.randn(32, 16) * 10), torch.randint(0, 5, (32,)))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad()
    report = monitor.report()
    gradcheckup.assert_healthy(report)
    gradcheckup.assert_clipped(report)


@pytest.mark.xfail(strict=True, reason="a deliberately sick model: shows the failure message")
def test_deep_sigmoid_model_fails(gradcheckup) -> None:
    layers: list[nn.Module] = []
    for _ in range(16):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 5))
    report = gradcheckup.check(model, torch.randn(64, 32), target=torch.randint(0, 5, (64,)))
    gradcheckup.assert_no_vanishing(report)
