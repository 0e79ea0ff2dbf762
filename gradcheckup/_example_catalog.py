"""The bundled example models by name: input shape and one-line description.

Kept apart from ``examples.py``, which builds the models and so imports torch, so that
``gradcheckup --help`` lists the examples without importing torch.
"""

from __future__ import annotations

__all__ = ["EXAMPLE_CATALOG"]

EXAMPLE_CATALOG: dict[str, tuple[tuple[int, ...], str]] = {
    "deep-sigmoid": ((64, 16), "12-layer sigmoid chain: vanishing"),
    "deep-sigmoid-skip": ((64, 16), "the same chain with skip connections: healthy"),
    "he-relu-mlp": ((64, 16), "4-layer ReLU MLP with He init: healthy"),
    "plain-rnn": (
        (8, 60, 16),
        "Elman RNN over 60 steps, read out at the last: vanishing through time",
    ),
}
"""name -> (input shape, one-line description)."""
