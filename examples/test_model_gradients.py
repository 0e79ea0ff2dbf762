"""Gradient tests for your model: copy this file into your test suite.

    pytest examples/test_model_gradients.py

Replace ``build_model``, ``make_batch`` and ``loss_fn`` with your own (keep the names:
``examples/github-workflow.yml`` runs ``gradcheckup check`` on the same two functions).
Installing gradcheckup registers its pytest plugin, which provides:

- the ``gradcheckup`` fixture: ``.check()`` / ``.watch()`` (as ``gcu.check`` /
  ``gcu.watch``) and ``.assert_healthy()``, ``.assert_no_vanishing()``,
  ``.assert_no_exploding()``, ``.assert_no_dead_relu()``, ``.assert_clipped()``; it seeds
  torch for every test (``--gradcheckup-seed``), so every run measures the same numbers;
- the ``@pytest.mark.gradcheckup(**settings)`` marker: Config settings for one test (all
  tests: ``[tool.gradcheckup]`` in pyproject.toml);
- ``--gradcheckup-json=PATH`` (every report, keyed by test id) and, like snapshot tests,
  ``--gradcheckup-baseline=DIR`` (``--gradcheckup-update-baseline`` to record): a test
  fails when a layer's gradient norm moves more than 10x from the recorded one, even
  when no absolute threshold trips.

A failure names the layer, the measured value, the threshold and the fix.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# --- Replace these three with your model, a representative batch and your loss --------


def build_model() -> nn.Module:
    """Your model, freshly initialised (the state you train from)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def make_batch() -> dict[str, torch.Tensor]:
    """One batch as your data loader yields it: inputs and targets."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, 16, 16, generator=generator)
    return {"inputs": images, "target": torch.randint(0, 10, (32,), generator=generator)}


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss you train with."""
    return F.cross_entropy(output, target)


# --- The tests -----------------------------------------------------------------------


def test_gradients_reach_every_layer_at_initialisation(gradcheckup) -> None:
    """One forward and backward pass: no vanishing/exploding signal through depth, no
    NaN/inf, no dead or saturated units, every trainable parameter gets a gradient."""
    batch = make_batch()
    report = gradcheckup.check(
        build_model(), batch["inputs"], target=batch["target"], loss_fn=loss_fn
    )
    gradcheckup.assert_healthy(report)  # fail_on="warning" for a stricter test


def test_no_layer_is_mostly_dead(gradcheckup) -> None:
    """Stricter than the default 80%: fail when a ReLU site has half its units dead."""
    batch = make_batch()
    report = gradcheckup.check(
        build_model(), batch["inputs"], target=batch["target"], loss_fn=loss_fn
    )
    gradcheckup.assert_no_dead_relu(report, max_fraction=0.5)


@pytest.mark.gradcheckup(max_grad_norm=1.0)
def test_training_steps_clip_the_gradient(gradcheckup) -> None:
    """A few real optimizer steps: each reaches the optimizer with a global gradient norm
    of at most max_grad_norm, and training stays healthy. Use your training step here
    (with AMP: scaler.unscale_(optimizer) before clipping)."""
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = make_batch()
    with gradcheckup.watch(model, optimizer=optimizer) as monitor:
        for _ in range(3):
            loss_fn(model(batch["inputs"]), batch["target"]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad()
    report = monitor.report()
    gradcheckup.assert_clipped(report)
    gradcheckup.assert_healthy(report)
