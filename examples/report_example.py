"""The main job: gradient reports for a sick and a healthy model.

    python examples/report_example.py

The sick model is seed 002's deep sigmoid chain: every layer multiplies the backward
signal by sigmoid' <= 1/4, so the first layers learn nothing. The healthy model is the
same depth with skip connections (h <- h + sigmoid(W h)). Exit code: 0 when both
verdicts are as expected.
"""

from __future__ import annotations

import sys

import torch
from rich.console import Console

import gradcheckup as gcu
from gradcheckup.examples import SigmoidChain


def main() -> int:
    console = Console()
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 16), torch.randn(64, 1)
    verdicts = []
    for title, skip in [
        ("Sick: 12-layer sigmoid chain", False),
        ("Healthy: the same chain with skip connections", True),
    ]:
        console.rule(title)
        report = gcu.check(SigmoidChain(depth=12, width=16, skip=skip), inputs, target=targets)
        report.print(console)
        verdicts.append(report.ok)
    return 0 if verdicts == [False, True] else 1


if __name__ == "__main__":
    sys.exit(main())
