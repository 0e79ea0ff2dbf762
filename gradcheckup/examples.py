"""Small models bundled for demonstrations: ``gradcheckup report --example NAME``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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


# name -> (builder, input shape, one-line description)
EXAMPLES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "deep-sigmoid": (
        lambda: SigmoidChain(skip=False),
        (64, 16),
        "12-layer sigmoid chain: vanishing",
    ),
    "deep-sigmoid-skip": (
        lambda: SigmoidChain(skip=True),
        (64, 16),
        "the same chain with skip connections: healthy",
    ),
    "he-relu-mlp": (_he_relu_mlp, (64, 16), "4-layer ReLU MLP with He init: healthy"),
    "plain-rnn": (
        lambda: LastStepClassifier("rnn"),
        (8, 60, 16),
        "Elman RNN over 60 steps, read out at the last: vanishing through time",
    ),
}


def build_example(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The example model and the input shape it expects.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in EXAMPLES:
        raise ValueError(f"--example: unknown example {name!r}; choose from {', '.join(EXAMPLES)}")
    builder, shape, _ = EXAMPLES[name]
    return builder(), shape
