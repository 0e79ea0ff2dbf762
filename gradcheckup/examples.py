"""Small models bundled for demonstrations: ``gradcheckup report --example NAME``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gradcheckup._example_catalog import EXAMPLE_CATALOG

__all__ = ["EXAMPLES", "LastStepClassifier", "SigmoidChain", "build_example"]


class SigmoidChain(nn.Module):
    """Seed 002's chain of sigmoid layers: h <- sigmoid(W h), or h <- h + sigmoid(W h)
    with skip connections, which keep the gradient flowing."""

    def __init__(self, depth: int = 12, width: int = 16, skip: bool = False) -> None:
        super().__init__()
        self.skip = skip
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the chain to ``x`` of shape (batch, width); returns (batch, 1)."""
        for layer in self.layers:
            update = torch.sigmoid(layer(x))
            x = x + update if self.skip else update
        return self.head(x)


def _he_relu_mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for features in (16, 64, 64, 64):
        layer = nn.Linear(features, 64)
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


class LastStepClassifier(nn.Module):
    """A recurrent layer read out at the last step only (sequence classification)."""

    def __init__(
        self, cell: str = "rnn", features: int = 16, hidden: int = 32, classes: int = 4
    ) -> None:
        super().__init__()
        recurrent = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.recurrent = recurrent(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify sequences ``x`` of shape (batch, steps, features) from the last step."""
        output, _ = self.recurrent(x)
        return self.head(output[:, -1])


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "deep-sigmoid": lambda: SigmoidChain(skip=False),
    "deep-sigmoid-skip": lambda: SigmoidChain(skip=True),
    "he-relu-mlp": _he_relu_mlp,
    "plain-rnn": lambda: LastStepClassifier("rnn"),
}

EXAMPLES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    name: (_BUILDERS[name], shape, description)
    for name, (shape, description) in EXAMPLE_CATALOG.items()
}
"""name -> (builder, input shape, one-line description); names and descriptions come
from ``_example_catalog`` (light, for ``--help``)."""


def build_example(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The example model and the input shape it expects.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in EXAMPLES:
        raise ValueError(f"--example: unknown example {name!r}; choose from {', '.join(EXAMPLES)}")
    builder, shape, _ = EXAMPLES[name]
    return builder(), shape
