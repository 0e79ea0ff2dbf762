"""Example 4: BatchNorm and LayerNorm rescue a badly scaled network.

    python examples/normalisation_layers.py [--plot DIR] [--brief]

A 10-layer ReLU MLP whose weights are drawn N(0, s^2) changes its backward signal by
sqrt(fan_in * s^2 / 2) per layer (He et al. 2015): with s = 0.01 (as the zoo's sick
VGG11, which gradcheckup flags) that is 0.057 per layer and the gradient vanishes; with
s = 1 it is 5.7 per layer and the gradient explodes. A normalisation layer after each Linear makes
the network blind to the scale of the weights: BatchNorm(c z) = BatchNorm(z) for any
c > 0 (LayerNorm alike), so the forward pass is the same for every s, and going back
through a Linear + norm the factor s from W^T cancels against the 1/s from the norm's
division by the standard deviation.

Theory checked here: without normalisation the factor per layer is sqrt(fan_in s^2 / 2);
with it, the factor per hidden layer is the same for s = 0.01 and s = 1. Exit code 0
when the verdicts and the theory hold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _gallery import (
    arguments,
    check_each,
    geometric_mean,
    kinds,
    labelled_batch,
    layer_signals,
    mlp,
    per_layer_factors,
    print_saved,
    relu_gain,
    show,
    signal_figure,
    signal_series,
    summary,
)
from rich.console import Console
from torch import nn

from gradcheckup.report import Report

DEPTH, WIDTH, INPUTS, CLASSES, BATCH = 10, 64, 32, 10, 128
SCALES = {"small": 0.01, "large": 1.0}
NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "no norm": None,
    "BatchNorm": nn.BatchNorm1d,
    "LayerNorm": nn.LayerNorm,
}
# Without normalisation: the geometric-mean factor over the 9 WIDTH x WIDTH layers
# scatters by ~6% / sqrt(9) = 2% around sqrt(fan_in s^2 / 2) (the active share per layer
# is binomial over 64 units; see initialisation.py). 10% is five deviations; measured
# here: 0.2% off.
RELU_TOLERANCE = 0.10
# With normalisation the scale cancels up to the norm's eps: it divides by
# sqrt(Var(z) + 1e-5) instead of sqrt(Var(z)). At s = 0.01, Var(z) = fan_in * s^2 *
# E[h^2] ~ 64 * 1e-4 * 0.5 = 3e-3, and a unit's batch variance can be ~3x below that,
# so each normaliser is off by at most ~1e-5 / (2 * 1e-3) = 0.5%, and a factor (two
# normalisers) by ~1%. 3% leaves room; measured: 0.6% (BatchNorm), 0.2% (LayerNorm).
INVARIANCE_TOLERANCE = 0.03


def _normal(scale: float) -> Callable[[nn.Linear], None]:
    def init(linear: nn.Linear) -> None:
        nn.init.normal_(linear.weight, 0.0, scale)
        nn.init.zeros_(linear.bias)

    return init


def build_models() -> dict[str, nn.Module]:
    """Six models keyed ``'<norm>, <scale>'``. Each pair with the same norm has the same
    seed, so its weights differ exactly by the factor between the scales."""
    models = {}
    for norm_name, norm in NORMS.items():
        for scale_name, scale in SCALES.items():
            torch.manual_seed(0)
            models[f"{norm_name}, {scale_name}"] = mlp(
                nn.ReLU, DEPTH, WIDTH, INPUTS, CLASSES, init=_normal(scale), norm=norm
            )
    return models


def run(models: dict[str, nn.Module] | None = None) -> dict[str, Report]:
    """``gcu.check`` each model on the same fixed batch of inputs and class labels."""
    return check_each(models or build_models(), *labelled_batch(BATCH, INPUTS, CLASSES))


def hidden_factors(report: Report) -> list[float]:
    """The per-layer factors of the backward signal between the hidden Linear layers."""
    return per_layer_factors(layer_signals(report, "Linear"))[: DEPTH - 1]


def theory_holds(reports: dict[str, Report]) -> bool:
    """The unnormalised factors match sqrt(fan_in s^2 / 2); the normalised ones do not
    depend on s."""
    for scale_name, scale in SCALES.items():
        measured = geometric_mean(hidden_factors(reports[f"no norm, {scale_name}"]))
        if abs(measured / relu_gain(WIDTH, scale**2) - 1) > RELU_TOLERANCE:
            return False
    for norm_name in ("BatchNorm", "LayerNorm"):
        small = hidden_factors(reports[f"{norm_name}, small"])
        large = hidden_factors(reports[f"{norm_name}, large"])
        if any(abs(a / b - 1) > INVARIANCE_TOLERANCE for a, b in zip(small, large, strict=True)):
            return False
    return True


def plot(reports: dict[str, Report], directory: Path) -> Path | None:
    """The backward signal per Linear layer of the six models, log scale."""
    return signal_figure(
        directory,
        "normalisation_layers",
        signal_series(reports, "Linear"),
        f"{DEPTH}-layer ReLU MLPs, weights N(0, 0.01^2) (small) and N(0, 1) (large)",
        "Linear layer",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example and explain it; exit code 0 when it came out as expected."""
    return explain(run(), arguments(__doc__, argv))


def explain(reports: dict[str, Report], args: argparse.Namespace) -> int:
    """Print the small-weight pair, every verdict, and check the theory; 0 when all holds."""
    console = Console()
    show(
        console,
        "Broken: weights N(0, 0.01^2), no normalisation",
        reports["no norm, small"],
        f"Each layer multiplies the signal by sqrt(64 * 0.01^2 / 2) = "
        f"{relu_gain(WIDTH, 1e-4):.3f}.",
        args.brief,
    )
    show(
        console,
        "Fixed: the same weights with BatchNorm after every Linear",
        reports["BatchNorm, small"],
        "BatchNorm divides by the standard deviation of its input, which undoes the "
        "weights' scale in the forward and the backward pass.",
        args.brief,
    )
    for name, report in reports.items():
        console.print(f"{name:>17}: {summary(report)}", highlight=False)
    holds = theory_holds(reports)
    console.print(
        f"Theory holds (no norm: sqrt(fan_in s^2 / 2); with a norm: the same factors for "
        f"both scales): {holds}"
    )
    if args.plot:
        print_saved(console, plot(reports, args.plot))
    expected = (
        "vanishing" in kinds(reports["no norm, small"], "error")
        and "exploding" in kinds(reports["no norm, large"], "error")
        and not any(
            kinds(reports[f"{norm}, {scale}"])
            for norm in NORMS
            if norm != "no norm"
            for scale in SCALES
        )
    )
    return 0 if expected and holds else 1


if __name__ == "__main__":
    sys.exit(main())
