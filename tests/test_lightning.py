"""The Lightning callback (``gradcheckup.integrations.lightning``) in real ``Trainer.fit``
runs on CPU: logging through the trainer's loggers, warnings, stopping, the final report,
Lightning's gradient clipping and bf16 autocast."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from gradcheckup.report_files import read_report
from tests.helpers import hook_count
from tests.models import he_relu_mlp, sigmoid_mlp

pl = pytest.importorskip("lightning.pytorch")
from gradcheckup.integrations.lightning import GradcheckupCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # Lightning's advice for real runs (more dataloader workers, a logger) is noise here.
    "ignore::UserWarning:lightning",
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated",
)


class Classifier(pl.LightningModule):
    """A LightningModule around any classifier; raises at ``fail_at_step`` if given."""

    def __init__(self, net: nn.Module, lr: float = 0.05, fail_at_step: int | None = None):
        super().__init__()
        self.net = net
        self.lr = lr
        self.fail_at_step = fail_at_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError("boom")
        inputs, targets = batch
        loss = F.cross_entropy(self.net(inputs), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(features: int, classes: int = 10, batches: int = 8) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batches * 16, features, generator=generator)
    targets = torch.randint(0, classes, (batches * 16,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), 16)


def fit(
    module: pl.LightningModule, callback: GradcheckupCallback, features: int, **trainer: Any
) -> pl.Trainer:
    options = {
        "max_steps": 8,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 2,
        **trainer,
    }
    run = pl.Trainer(callbacks=[callback], **options)
    run.fit(module, loader(features))
    return run


def test_scalars_reach_the_trainers_logger_every_log_step(tmp_path: Path) -> None:
    module = Classifier(he_relu_mlp(depth=3, width=32))
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    callback = GradcheckupCallback(layers=["net.0"])
    run = fit(module, callback, 32, logger=logger)
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("gradcheckup/errors")]
    # 8 optimizer steps, logged every 2: one row per log step, with the step norm.
    assert [int(row["step"]) for row in rows] == [1, 3, 5, 7]
    assert all(float(row["gradcheckup/step_norm"]) > 0 for row in rows)
    assert all(float(row["gradcheckup/layer/net.0/grad_norm"]) > 0 for row in rows)
    assert "gradcheckup/errors" in run.callback_metrics
    assert "gradcheckup/errors" not in run.progress_bar_metrics
    assert callback.report is not None and callback.report.ok
    assert hook_count(module) == 0


def test_own_log_every_n_steps_and_the_report_files(tmp_path: Path) -> None:
    callback = GradcheckupCallback(
        log_every_n_steps=4, report_path=tmp_path / "r.json", html_path=tmp_path / "r.html"
    )
    logged: list[int] = []
    original = callback._watch.window_scalars
    callback._watch.window_scalars = lambda step: logged.append(step) or original(step)  # type: ignore[method-assign]
    fit(Classifier(he_relu_mlp(depth=3, width=32)), callback, 32, log_every_n_steps=1)
    assert logged == [4, 8]
    report, notes = read_report(tmp_path / "r.json")
    assert not notes and len(report.steps) == 8 and report.passes == 8
    assert "<!DOCTYPE html>" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_accumulated_gradients_log_once_per_optimizer_step() -> None:
    callback = GradcheckupCallback()
    logged: list[int] = []
    original = callback._watch.window_scalars
    callback._watch.window_scalars = lambda step: logged.append(step) or original(step)  # type: ignore[method-assign]
    fit(
        Classifier(he_relu_mlp(depth=3, width=32)),
        callback,
        32,
        max_steps=4,
        accumulate_grad_batches=2,
    )
    assert logged == [2, 4]
    assert callback.report is not None
    assert len(callback.report.steps) == 4 and callback.report.passes == 8


def test_warns_once_per_new_finding_and_stops_on_error() -> None:
    module = Classifier(sigmoid_mlp(depth=20, width=32))
    callback = GradcheckupCallback(stop_on="error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = fit(module, callback, 32, max_steps=20)
    messages = [str(w.message) for w in caught if "gradcheckup" in str(w.message)]
    vanishing = [m for m in messages if m.startswith("gradcheckup: [error] vanishing")]
    assert len(vanishing) == 1, messages
    assert run.global_step == 2, "stops at the first log step"
    assert callback.stop_reason is not None
    assert "stopped training at step 2" in callback.stop_reason
    assert "vanishing" in callback.stop_reason
    assert any(m.startswith("gradcheckup stopped training") for m in messages)
    assert callback.report is not None and callback.report.findings_of("vanishing")


def test_no_stop_without_stop_on() -> None:
    callback = GradcheckupCallback(warn_on="error")
    with pytest.warns(UserWarning, match="vanishing"):
        run = fit(Classifier(sigmoid_mlp(depth=20, width=32)), callback, 32, max_steps=6)
    assert run.global_step == 6 and callback.stop_reason is None


@pytest.mark.parametrize("clip", [True, False])
def test_lightnings_gradient_clipping_is_seen(clip: bool) -> None:
    # Plain SGD on random labels: the global norm stays far above 0.05 for every step.
    callback = GradcheckupCallback(gcu.Config(max_grad_norm=0.05))
    clipping = {"gradient_clip_val": 0.05} if clip else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(Classifier(he_relu_mlp(depth=3, width=32)), callback, 32, **clipping)
    warned = [str(w.message) for w in caught if "[error] missing_clipping" in str(w.message)]
    assert len(warned) == (0 if clip else 1)
    report = callback.report
    assert report is not None and len(report.steps) == 8
    missing = report.findings_of("missing_clipping")
    if clip:
        assert not missing
        assert all(step.clip_calls for step in report.steps)
        assert all((step.grad_norm_at_step or 0) <= 0.05 * 1.01 for step in report.steps)
    else:
        assert missing and "8 of 8 step(s)" in missing[0].message


def test_gradient_clip_val_becomes_max_grad_norm() -> None:
    callback = GradcheckupCallback()
    fit(Classifier(he_relu_mlp(depth=3, width=32)), callback, 32, gradient_clip_val=0.5)
    assert callback.report is not None and callback.report.config.max_grad_norm == 0.5
    assert not callback.report.findings_of("missing_clipping")
    value_clipping = GradcheckupCallback()
    fit(
        Classifier(he_relu_mlp(depth=3, width=32)),
        value_clipping,
        32,
        gradient_clip_val=0.5,
        gradient_clip_algorithm="value",
    )
    assert value_clipping.report is not None
    assert value_clipping.report.config.max_grad_norm is None


def test_bf16_autocast_on_cpu_runs_with_clipping() -> None:
    callback = GradcheckupCallback()
    module = Classifier(he_relu_mlp(depth=3, width=32))
    fit(module, callback, 32, precision="bf16-mixed", gradient_clip_val=0.1)
    report = callback.report
    assert report is not None and len(report.steps) == 8 and report.passes == 8
    assert not report.findings_of("missing_clipping")
    assert all(step.clip_calls for step in report.steps)
    assert all(layer.grad_norm and layer.grad_norm > 0 for layer in report.layers)


def test_a_failing_fit_removes_the_hooks_and_writes_the_report(tmp_path: Path) -> None:
    module = Classifier(he_relu_mlp(depth=3, width=32), fail_at_step=3)
    callback = GradcheckupCallback(report_path=tmp_path / "r.json")
    with pytest.raises(RuntimeError, match="boom"):
        fit(module, callback, 32)
    assert hook_count(module) == 0
    report, _ = read_report(tmp_path / "r.json")
    assert len(report.steps) == 3


def test_the_older_pytorch_lightning_package() -> None:
    ptl = pytest.importorskip("pytorch_lightning")

    class Module(ptl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = he_relu_mlp(depth=3, width=32)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return F.cross_entropy(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    callback = GradcheckupCallback()
    run = ptl.Trainer(
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=2,
        gradient_clip_val=0.3,
        callbacks=[callback],
    )
    run.fit(Module(), loader(32))
    assert "gradcheckup/step_norm" in run.callback_metrics
    assert callback.report is not None and len(callback.report.steps) == 4
    assert all(step.clip_calls for step in callback.report.steps)
    assert not callback.report.findings_of("missing_clipping")


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="stop_on"):
        GradcheckupCallback(stop_on="fatal")
    with pytest.raises(ValueError, match="log_every_n_steps"):
        GradcheckupCallback(log_every_n_steps=0)
    with pytest.raises(ValueError, match=r"no layer named 'fc9'.*'net\.0'"):
        fit(Classifier(he_relu_mlp(depth=3, width=32)), GradcheckupCallback(layers=["fc9"]), 32)
