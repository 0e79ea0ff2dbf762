"""Example 7: exploding gradients in training, gradient clipping, and AMP's GradScaler
done right and wrong.

    python examples/clipping_and_amp.py [--plot DIR] [--brief]

A regression trained with SGD at too large a learning rate diverges: every step
overshoots, the loss grows, and so does the gradient norm, step after step. Clipping the
global gradient norm (torch.nn.utils.clip_grad_norm_, Pascanu et al. 2013) bounds every
step, so training cannot run away.

Under automatic mixed precision the GradScaler multiplies the loss (and so every
gradient) by its scale, here 1024, to keep float16 gradients from underflowing. Clipping
those scaled gradients clips to max_norm / scale once they are unscaled: the optimizer
gets a gradient norm of 1/1024 and training stalls. The right order is
scaler.scale(loss).backward(); scaler.unscale_(optimizer); clip_grad_norm_(...);
scaler.step(optimizer); scaler.update().

gcu.watch(model, optimizer=...) observes each real step: the norm the optimizer saw, the
clip calls and whether they ran on scaled gradients. With Config(max_grad_norm=1.0)
every step must reach the optimizer with a norm of at most 1. This runs on the CPU
(autocast to bfloat16); on a GPU use torch.autocast("cuda", dtype=torch.float16) and
torch.amp.GradScaler("cuda"): the order of the calls is the same.

Checked here: with clipping before unscale_, the norm the optimizer saw is exactly
max_norm / scale at every step. Exit code 0 when the verdicts and this hold.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from _gallery import arguments, kinds, line_figure, print_saved, show
from rich.console import Console
from torch import nn

import gradcheckup as gcu
from gradcheckup.report import Report
from gradcheckup.testing import assert_clipped

STEPS, BATCH, FEATURES = 12, 64, 16
LEARNING_RATE = 0.5
MAX_NORM = 1.0
AMP_SCALE = 2.0**10
# sample_every=1: every step's norm is measured (a long watch samples every 10th by
# default, which is cheaper; this example wants the whole curve).
CONFIG = gcu.Config(max_grad_norm=MAX_NORM, sample_every=1)


def build_model() -> nn.Module:
    """A small tanh MLP for a scalar regression (the same seed every time)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of scale 3 and a target that is 5x the first feature: large gradients."""
    generator = torch.Generator().manual_seed(1)
    inputs = 3 * torch.randn(BATCH, FEATURES, generator=generator)
    return inputs, 5 * inputs[:, :1] + torch.randn(BATCH, 1, generator=generator)


# --- One training step each: the way to write it, and the ways not to ----------------


def step_without_clipping(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Broken: nothing bounds the step."""
    inputs, targets = batch()
    loss = F.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def step_with_clipping(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Fixed: clip after backward, before the step."""
    inputs, targets = batch()
    loss = F.mse_loss(model(inputs), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def amp_step(unscale_first: bool) -> Callable[[nn.Module, torch.optim.Optimizer], float]:
    """A mixed-precision step with its own GradScaler: clipping after ``unscale_``
    (``unscale_first``, right) or on the scaled gradients (wrong)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=AMP_SCALE)

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        inputs, targets = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(model(inputs), targets)
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(optimizer)  # before clipping!
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        return loss.item()

    return step


MODES: dict[str, Callable[[], Callable[[nn.Module, torch.optim.Optimizer], float]]] = {
    "no clipping": lambda: step_without_clipping,
    "clip_grad_norm_": lambda: step_with_clipping,
    "AMP, clip before unscale_": lambda: amp_step(unscale_first=False),
    "AMP, unscale_ then clip": lambda: amp_step(unscale_first=True),
}


def train(mode: str) -> tuple[Report, list[float]]:
    """``STEPS`` real SGD steps of ``mode`` under ``gcu.watch``: the report and the losses."""
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    step = MODES[mode]()
    with gcu.watch(model, optimizer=optimizer, config=CONFIG) as monitor:
        losses = [step(model, optimizer) for _ in range(STEPS)]
    return monitor.report(), losses


def run() -> dict[str, tuple[Report, list[float]]]:
    """Every mode, from the same initial model."""
    return {mode: train(mode) for mode in MODES}


def clipped_to_bound(report: Report) -> bool:
    """``assert_clipped`` passes: every step reached the optimizer within the bound."""
    try:
        assert_clipped(report)
    except AssertionError:
        return False
    return True


def wrong_order_scales_the_bound(report: Report) -> bool:
    """Clipping scaled gradients leaves the optimizer max_norm / scale at every step."""
    return all(
        math.isclose(step.grad_norm_at_step or 0.0, MAX_NORM / AMP_SCALE, rel_tol=1e-3)
        for step in report.steps
    )


def plot(results: dict[str, tuple[Report, list[float]]], directory: Path) -> Path | None:
    """The norm each step reached the optimizer with, per mode, log scale."""
    series = {
        mode: (
            [step.step for step in report.steps],
            [step.grad_norm_at_step or 0.0 for step in report.steps],
        )
        for mode, (report, _) in results.items()
    }
    return line_figure(
        directory,
        "clipping_and_amp",
        series,
        f"Gradient norm at optimizer.step(), SGD lr {LEARNING_RATE:g}",
        "step",
        "global gradient norm",
        guides={f"max_grad_norm={MAX_NORM:g}": MAX_NORM},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example and explain it; exit code 0 when it came out as expected."""
    return explain(run(), arguments(__doc__, argv))


def explain(results: dict[str, tuple[Report, list[float]]], args: argparse.Namespace) -> int:
    """Print every mode's report and the scaled-bound check; 0 when all is as expected."""
    console = Console()
    why = {
        "no clipping": "Each step overshoots, the loss and the gradient grow, and nothing "
        "bounds the next step.",
        "clip_grad_norm_": "Every step is at most 1 long: the loss comes down instead of "
        "running away.",
        "AMP, clip before unscale_": "The bound applied to gradients 1024x too large: "
        f"after unscaling the optimizer gets norm {MAX_NORM / AMP_SCALE:.3g} and the "
        "loss does not move.",
        "AMP, unscale_ then clip": "unscale_ first: the bound applies to the true "
        "gradients, exactly as without AMP.",
    }
    for mode, (report, losses) in results.items():
        verdict = "Fixed" if mode in ("clip_grad_norm_", "AMP, unscale_ then clip") else "Broken"
        loss_path = f" Loss {losses[0]:.3g} -> {losses[-1]:.3g} over {STEPS} steps."
        show(console, f"{verdict}: {mode}", report, why[mode] + loss_path, args.brief)
    wrong_report = results["AMP, clip before unscale_"][0]
    scaled = wrong_order_scales_the_bound(wrong_report)
    console.print(f"Clipping before unscale_ left max_norm / scale at every step: {scaled}")
    if args.plot:
        print_saved(console, plot(results, args.plot))
    reports = {mode: report for mode, (report, _) in results.items()}
    expected = (
        {"exploding", "missing_clipping"} <= kinds(reports["no clipping"], "error")
        and "clipping_before_unscale" in kinds(wrong_report, "error")
        and not kinds(reports["clip_grad_norm_"])
        and not kinds(reports["AMP, unscale_ then clip"])
        and clipped_to_bound(reports["AMP, unscale_ then clip"])
    )
    return 0 if expected and scaled else 1


if __name__ == "__main__":
    sys.exit(main())
