"""Example 1: sigmoid vs ReLU in a deep MLP: the gradient vanishes through depth.

    python examples/sigmoid_vs_relu.py [--plot DIR] [--brief]

Backpropagation multiplies the gradient arriving from above by every layer's local
derivative (upstream x local = downstream). The sigmoid's derivative is at most 1/4, so
each sigmoid layer shrinks the backward signal, and after 20 of them the first layer
gets ~1e-14 of what the head gets: it learns nothing. ReLU's derivative is 1 wherever
the unit is active; with He initialisation (example 2) the signal keeps its size.

Theory checked here: going back one sigmoid layer, |dL/dz_l| <= 1/4 * ||W_(l+1)||_2 *
|dL/dz_(l+1)| (sigmoid' <= 1/4, and a matrix stretches no vector by more than its
largest singular value). Exit code 0 when both verdicts and the bound hold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from _gallery import (
    arguments,
    check_each,
    geometric_mean,
    he_init,
    kinds,
    labelled_batch,
    layer_signals,
    mlp,
    per_layer_factors,
    print_saved,
    show,
    signal_figure,
)
from rich.console import Console
from torch import nn

from gradcheckup.report import Report

DEPTH, WIDTH, INPUTS, CLASSES, BATCH = 20, 64, 32, 10, 128
SIGMOID_SLOPE_MAX = 0.25  # sigmoid'(x) = s(1 - s) <= 1/4, reached at x = 0


def build_models() -> dict[str, nn.Module]:
    """The broken model (20 sigmoid layers) and the fixed one (20 ReLU layers, He init)."""
    torch.manual_seed(0)
    sigmoid = mlp(nn.Sigmoid, DEPTH, WIDTH, INPUTS, CLASSES)
    torch.manual_seed(0)
    relu = mlp(nn.ReLU, DEPTH, WIDTH, INPUTS, CLASSES, init=he_init)
    return {"sigmoid": sigmoid, "relu": relu}


def run(models: dict[str, nn.Module] | None = None) -> dict[str, Report]:
    """``gcu.check`` each model on the same fixed batch of inputs and class labels."""
    return check_each(models or build_models(), *labelled_batch(BATCH, INPUTS, CLASSES))


def sigmoid_bounds(model: nn.Sequential) -> list[float]:
    """The most the backward signal can keep going back over each sigmoid layer:
    1/4 times the spectral norm of the next Linear's weight."""
    linears = [module for module in model if isinstance(module, nn.Linear)]
    return [
        SIGMOID_SLOPE_MAX * float(torch.linalg.matrix_norm(later.weight.detach(), ord=2))
        for later in linears[1:]
    ]


def plot(reports: dict[str, Report], bounds: Sequence[float], directory: Path) -> Path | None:
    """The backward signal per layer of both models and the sigmoid bound, log scale."""
    sigmoid, relu = layer_signals(reports["sigmoid"]), layer_signals(reports["relu"])
    # The bound compounds from the head backwards: the head's signal times every later
    # layer's 1/4 * ||W||_2.
    bound = [sigmoid[-1]]
    for factor in reversed(bounds):
        bound.insert(0, bound[0] * factor)
    layers = list(range(len(sigmoid)))
    series = {
        "sigmoid (broken)": (layers, sigmoid),
        "bound: product of 1/4 * ||W||_2": (layers, bound),
        "ReLU + He init (fixed)": (layers, relu),
    }
    return signal_figure(
        directory,
        "sigmoid_vs_relu",
        series,
        f"{DEPTH}-layer MLP: backward signal |dL/d output| per layer",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example and explain it; exit code 0 when it came out as expected."""
    return explain(run(), arguments(__doc__, argv))


def explain(reports: dict[str, Report], args: argparse.Namespace) -> int:
    """Print both reports and check the sigmoid bound; 0 when all holds."""
    console = Console()
    models = build_models()
    show(
        console,
        f"Broken: {DEPTH} sigmoid layers",
        reports["sigmoid"],
        "sigmoid' <= 1/4, so every layer multiplies the backward signal by a factor "
        "below 1 and the first layers get almost nothing.",
        args.brief,
    )
    show(
        console,
        f"Fixed: {DEPTH} ReLU layers, He initialisation",
        reports["relu"],
        "ReLU passes gradient 1 through active units and He's Var(W) = 2/fan_in makes up "
        "for the half that are inactive (at PyTorch's default init a ReLU stack still "
        "shrinks it, by ~0.41 per layer: see initialisation.py).",
        args.brief,
    )
    measured = per_layer_factors(layer_signals(reports["sigmoid"]))
    bounds = sigmoid_bounds(models["sigmoid"])
    holds = all(
        factor <= bound * (1 + 1e-5) for factor, bound in zip(measured, bounds, strict=True)
    )
    console.print(
        f"Per sigmoid layer the signal keeps {geometric_mean(measured):.3f}x (geometric mean); "
        f"the bound 1/4 * ||W||_2 is {geometric_mean(bounds):.3f}x; bound holds at every "
        f"layer: {holds}"
    )
    if args.plot:
        print_saved(console, plot(reports, bounds, args.plot))
    expected = "vanishing" in kinds(reports["sigmoid"]) and not kinds(reports["relu"])
    return 0 if expected and holds else 1


if __name__ == "__main__":
    sys.exit(main())
