"""Example 3: a plain vs a residual 40-layer network (the articles' 40-layer example).

    python examples/residual_connections.py [--plot DIR] [--brief]

The plain chain h <- sigmoid(W h) multiplies the backward signal by sigmoid' <= 1/4 and
by W at every layer, 40 times over. A skip connection, h <- h + sigmoid(W h), adds the
identity to every layer's Jacobian: dL/dh_l = dL/dh_(l+1) (I + ...), so the gradient
has a path back to the first layer that is not multiplied down (He et al. 2016).

The residual chain as the article writes it has a second problem, which gradcheckup
reports: every block adds a positive sigmoid output to h, so h grows with depth and the
deeper sigmoids are pushed into their flat ends (saturation). Normalising each block's
input (a pre-norm block, h <- h + sigmoid(W LayerNorm(h)), as in transformers) keeps
them in their working range. Exit code 0 when all three verdicts are as expected.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from _gallery import arguments, kinds, print_saved, show, signal_figure, signal_series
from rich.console import Console
from torch import nn

import gradcheckup as gcu
from gradcheckup.examples import SigmoidChain
from gradcheckup.report import Report

DEPTH, WIDTH, BATCH = 40, 16, 64


class PreNormResidualChain(nn.Module):
    """h <- h + sigmoid(W LayerNorm(h)): the residual chain with each block's input
    normalised, so the growing residual stream cannot saturate the sigmoids."""

    def __init__(self, depth: int = DEPTH, width: int = WIDTH) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the chain to ``x`` of shape (batch, width); returns (batch, 1)."""
        for norm, layer in zip(self.norms, self.layers, strict=True):
            x = x + torch.sigmoid(layer(norm(x)))
        return self.head(x)


def build_models() -> dict[str, nn.Module]:
    """Plain, residual (as in the article) and pre-norm residual chains, same seed."""
    models: dict[str, nn.Module] = {}
    for name, build in (
        ("plain", lambda: SigmoidChain(DEPTH, WIDTH, skip=False)),
        ("residual", lambda: SigmoidChain(DEPTH, WIDTH, skip=True)),
        ("pre-norm residual", PreNormResidualChain),
    ):
        torch.manual_seed(0)
        models[name] = build()
    return models


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of inputs and regression targets."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, WIDTH, generator=generator), torch.randn(
        BATCH, 1, generator=generator
    )


def run(models: dict[str, nn.Module] | None = None) -> dict[str, Report]:
    """One ``gcu.check`` per model (MSE loss: the targets are floating point)."""
    models = models or build_models()
    inputs, targets = batch()
    return {name: gcu.check(model, inputs, target=targets) for name, model in models.items()}


def plot(reports: dict[str, Report], directory: Path) -> Path | None:
    """The backward signal per Linear layer of the three chains, log scale."""
    # The pre-norm chain's LayerNorms are layers too: plot the Linear layers only, so the
    # three curves share their x axis.
    return signal_figure(
        directory,
        "residual_connections",
        signal_series(reports, "Linear"),
        f"{DEPTH}-layer sigmoid chains: backward signal per Linear layer (0 not drawn)",
        "Linear layer",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example and explain it; exit code 0 when it came out as expected."""
    return explain(run(), arguments(__doc__, argv))


def explain(reports: dict[str, Report], args: argparse.Namespace) -> int:
    """Print the three reports; 0 when the verdicts are as expected."""
    console = Console()
    show(
        console,
        f"Broken: plain {DEPTH}-layer sigmoid chain",
        reports["plain"],
        "40 factors of sigmoid' * W, each well below 1. The first layers' gradient entries "
        "are 1e-36 to 1e-23: a float32 norm would underflow to 0 (squares below 1e-38), "
        "check() takes its norms in float64 and reports their true size.",
        args.brief,
    )
    show(
        console,
        "Fixed for vanishing: the same chain with skip connections (as in the article)",
        reports["residual"],
        "The identity path keeps the early layers' gradient alive (no 'vanishing'); the "
        "saturation findings are real: the residual stream grows by up to 1 per block and "
        "pushes the deeper sigmoids into their flat ends.",
        args.brief,
    )
    show(
        console,
        "Fixed: pre-norm residual chain, h + sigmoid(W LayerNorm(h))",
        reports["pre-norm residual"],
        "LayerNorm hands every block an input of unit scale, so no sigmoid saturates.",
        args.brief,
    )
    if args.plot:
        print_saved(console, plot(reports, args.plot))
    expected = (
        "vanishing" in kinds(reports["plain"], "error")
        and "vanishing" not in kinds(reports["residual"])
        and not kinds(reports["pre-norm residual"])
    )
    return 0 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
