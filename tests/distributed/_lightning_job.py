"""A Lightning module for the DDP test (importable by the processes ``ddp_spawn`` starts)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


class Regression(L.LightningModule):
    """A two-layer MLP on a squared error: gradients everywhere, nothing to download."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
