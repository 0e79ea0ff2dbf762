"""The Lightning callback in a real two-process DDP fit (``ddp_spawn`` on CPU, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")
from gradcheckup.integrations.lightning import GradcheckupCallback  # noqa: E402
from tests.distributed._lightning_job import Regression  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

STEPS = 4


def test_a_ddp_fit_writes_one_report_of_both_ranks_reduced_gradients(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    callback = GradcheckupCallback(report_path=tmp_path / "grads.json", log_every_n_steps=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Regression(), torch.utils.data.DataLoader(data, batch_size=8))
    report = json.loads((tmp_path / "grads.json").read_text())
    assert report["ranks"] == 2 and report["passes"] == 2 * STEPS
    # The reduced gradient is read once per step (the same on both ranks), so each layer
    # has one measured pass per step, not one per rank and step.
    assert [layer["passes"] for layer in report["layers"]] == [STEPS, STEPS]
    assert [layer["name"] for layer in report["layers"]] == ["net.0", "net.2"]
    assert len(report["steps"]) == STEPS and report["probe_errors"] == []
