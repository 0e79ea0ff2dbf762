"""Example 5: dying ReLU (a large negative bias, or one too-large learning-rate step) vs
LeakyReLU.

    python examples/dying_relu.py [--plot DIR] [--brief]

A ReLU unit whose input is negative on every sample outputs 0 and passes gradient 0:
its incoming weights and bias get exactly zero gradient, so nothing in the unit itself
can bring it back ("dying ReLU"). Two ways to get there:

1. a large negative bias (here -5, about 3.5 standard deviations of the layer's input):
   the unit is dead from the start;
2. one too-large learning-rate step: a regression whose outputs are far above the
   targets pushes down every unit that adds to the output, and a step of SGD at lr 0.3
   overshoots, leaving about half of the last hidden layer's units negative on every
   sample. Dying during training typically reaches 20-50%, below the default threshold
   (0.8, set so that stock SqueezeNet's 52% stays clean), so this part sets
   dead_relu_fraction=0.3 as the Config docs suggest for training.

LeakyReLU(0.01) has slope 0.01 below zero: every unit keeps a gradient, so no unit can
die, and gradcheckup does not monitor it (nor ELU/GELU/SiLU). The units pushed below zero
still learn 100x slower: start biases at 0 and keep the learning rate (or the clip bound)
sane as well.

Checked here: the ReLU rows (units) of the weight matrix that get exactly zero gradient
are exactly the units gradcheckup reports dead; under LeakyReLU no row does. Exit code 0
when the verdicts and this check hold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from _gallery import arguments, he_init, kinds, labelled_batch, line_figure, mlp, print_saved, show
from rich.console import Console
from torch import nn

import gradcheckup as gcu
from gradcheckup.report import Report

DEPTH, WIDTH, INPUTS, BATCH = 3, 64, 32, 256
NEGATIVE_BIAS = -5.0
BIASED_LAYER = 2  # the second Linear in the Sequential; its ReLU is site '2/relu'
LAST_HIDDEN = 4  # the last hidden Linear; its ReLU is site '4/relu'
LARGE_LR = 0.3
TRAINING_CONFIG = gcu.Config(dead_relu_fraction=0.3, dead_relu_warn_fraction=0.2)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "ReLU": nn.ReLU,
    "LeakyReLU": lambda: nn.LeakyReLU(0.01),
}


def _classification_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return labelled_batch(BATCH, INPUTS, 10)


def _regression_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Targets near -10, far below what a freshly initialised network outputs."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(BATCH, INPUTS, generator=generator)
    return inputs, -10.0 + 0.1 * torch.randn(BATCH, 1, generator=generator)


def build_models() -> dict[str, nn.Sequential]:
    """Models keyed ``'<cause>, <activation>'``: bias -5 on one layer, and one SGD step
    at lr 0.3 on the regression batch. Same seed for ReLU and LeakyReLU."""
    models = {}
    for name, activation in ACTIVATIONS.items():
        torch.manual_seed(0)
        biased = mlp(activation, DEPTH, WIDTH, INPUTS, 10, init=he_init)
        with torch.no_grad():
            biased[BIASED_LAYER].bias.fill_(NEGATIVE_BIAS)
        models[f"bias, {name}"] = biased
    for name, activation in ACTIVATIONS.items():
        torch.manual_seed(0)
        stepped = mlp(activation, DEPTH, WIDTH, INPUTS, 1, init=he_init)
        _one_step(stepped)
        models[f"step, {name}"] = stepped
    return models


def _one_step(model: nn.Module, learning_rate: float = LARGE_LR) -> None:
    """One SGD step on the regression batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    inputs, targets = _regression_batch()
    F.mse_loss(model(inputs), targets).backward()
    optimizer.step()
    optimizer.zero_grad()


def run(models: dict[str, nn.Sequential] | None = None) -> dict[str, Report]:
    """``gcu.check`` each model on its batch (the stepped ones with the training config)."""
    models = models or build_models()
    reports = {}
    for name, model in models.items():
        if name.startswith("bias"):
            inputs, labels = _classification_batch()
            reports[name] = gcu.check(model, inputs, target=labels, loss_fn=F.cross_entropy)
        else:
            inputs, targets = _regression_batch()
            reports[name] = gcu.check(
                model, inputs, target=targets, loss_fn=F.mse_loss, config=TRAINING_CONFIG
            )
    return reports


def zero_gradient_units(name: str, model: nn.Sequential) -> float:
    """Share of the units (weight rows) of the layer under study whose incoming weights get
    exactly zero gradient on the example's batch."""
    layer = model[BIASED_LAYER if name.startswith("bias") else LAST_HIDDEN]
    if name.startswith("bias"):
        inputs, labels = _classification_batch()
        loss = F.cross_entropy(model(inputs), labels)
    else:
        inputs, targets = _regression_batch()
        loss = F.mse_loss(model(inputs), targets)
    (gradient,) = torch.autograd.grad(loss, layer.weight)
    return float((gradient == 0).all(dim=1).float().mean())


def dead_fraction(name: str, report: Report) -> float:
    """What gradcheckup reports for the site after the layer under study (0 when the
    activation is not monitored, as LeakyReLU is not)."""
    site = f"{BIASED_LAYER if name.startswith('bias') else LAST_HIDDEN}/relu"
    monitored = {activation.name: activation.dead_fraction for activation in report.activations}
    return monitored.get(site) or 0.0


def check_holds(models: dict[str, nn.Sequential], reports: dict[str, Report]) -> bool:
    """Zero-gradient units are exactly the dead ones (rounded to a unit)."""
    return all(
        abs(zero_gradient_units(name, model) - dead_fraction(name, reports[name])) < 0.5 / WIDTH
        for name, model in models.items()
    )


def plot(directory: Path) -> Path | None:
    """After one SGD step of growing size: the share of the last hidden layer's units
    below zero on every sample, and of those that get no gradient at all."""
    rates = [0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3]
    inputs, _ = _regression_batch()
    series: dict[str, tuple[list[float], list[float]]] = {}
    for name, activation in ACTIVATIONS.items():
        below_zero, without_gradient = [], []
        for rate in rates:
            torch.manual_seed(0)
            model = mlp(activation, DEPTH, WIDTH, INPUTS, 1, init=he_init)
            _one_step(model, rate)
            with torch.no_grad():
                before_activation = model[: LAST_HIDDEN + 1](inputs)
            below_zero.append(float((before_activation <= 0).all(dim=0).float().mean()))
            without_gradient.append(zero_gradient_units(f"step, {name}", model))
        # Under ReLU the two shares coincide (the point of the example): draw them once.
        if name != "ReLU":
            series[f"{name}: below zero on every sample"] = (rates, below_zero)
        series[f"{name}: without any gradient"] = (rates, without_gradient)
    return line_figure(
        directory,
        "dying_relu",
        series,
        "Last hidden layer after one SGD step on a far-off regression target",
        "learning rate of the single step",
        "share of units",
        log_y=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example and explain it; exit code 0 when it came out as expected."""
    return explain(run(), arguments(__doc__, argv))


def explain(reports: dict[str, Report], args: argparse.Namespace) -> int:
    """Print the four reports and the zero-gradient check; 0 when all is as expected."""
    console = Console()
    models = build_models()
    why = {
        "bias, ReLU": "A bias of -5 keeps most units below zero on every sample: output 0, "
        "gradient 0.",
        "bias, LeakyReLU": "Slope 0.01 below zero: the same units still pass (a 100x "
        "smaller) gradient, so none is dead (LeakyReLU is not monitored).",
        "step, ReLU": "The step overshot: units that add to the output were pushed far "
        "below zero and now get no gradient at all.",
        "step, LeakyReLU": "The same step pushes the same units below zero, but they keep "
        "a gradient and can come back.",
    }
    for name, report in reports.items():
        cause, activation = name.split(", ")
        title = {
            "bias": f"bias {NEGATIVE_BIAS:g} on one layer",
            "step": f"one SGD step at lr {LARGE_LR:g}",
        }[cause]
        verdict = "Broken" if activation == "ReLU" else "No dead units"
        show(console, f"{verdict}: {activation}, {title}", report, why[name], args.brief)
    holds = check_holds(models, reports)
    console.print(f"Units with exactly zero weight gradient are the dead units: {holds}")
    if args.plot:
        print_saved(console, plot(args.plot))
    expected = all(
        ("dead_relu" in kinds(report, "error")) == name.endswith(", ReLU")
        for name, report in reports.items()
    )
    return 0 if expected and holds else 1


if __name__ == "__main__":
    sys.exit(main())
