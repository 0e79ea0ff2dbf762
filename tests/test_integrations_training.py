"""What the training callbacks share (``gradcheckup.integrations._training``), without a
training framework: windows, the clipping bound, warnings once per finding, stopping."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.integrations._training import (
    TrainingCallback,
    window_report,
    with_clip_bound,
)
from tests.models import sigmoid_mlp


def test_window_report_takes_a_snapshot_where_the_monitor_has_one() -> None:
    calls: list[Any] = []
    windowed = SimpleNamespace(
        snapshot=lambda reset: calls.append(("snapshot", reset)) or "window",
        report=lambda: calls.append("report") or "everything",
    )
    assert window_report(windowed) == "window"  # type: ignore[arg-type]
    older = SimpleNamespace(report=lambda: calls.append("report") or "everything")
    assert window_report(older) == "everything"  # type: ignore[arg-type]
    assert calls == [("snapshot", True), "report"]


def test_the_trainers_clip_bound_fills_only_a_missing_max_grad_norm() -> None:
    assert with_clip_bound(None, None) is None
    assert with_clip_bound(None, 0.0) is None
    assert with_clip_bound(None, 1.0).max_grad_norm == 1.0  # type: ignore[union-attr]
    own = gcu.Config(max_grad_norm=3.0, dead_relu_fraction=0.5)
    assert with_clip_bound(own, 1.0) is own
    filled = with_clip_bound(gcu.Config(dead_relu_fraction=0.5), 2.0)
    assert filled is not None and filled.max_grad_norm == 2.0
    assert filled.dead_relu_fraction == 0.5


def train_steps(callback: TrainingCallback, model: nn.Module, steps: int) -> list[str]:
    """Plain SGD steps with a log after each; the gradcheckup warnings given."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    callback._open(model, [optimizer], None, writes_files=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, steps + 1):
            model(torch.randn(16, 32)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            assert callback._scalars_once(step)
            assert callback._scalars_once(step) is None, "one log per step"
        callback._watch.close()
    return [str(w.message) for w in caught if str(w.message).startswith("gradcheckup")]


def test_each_finding_warns_once_and_stop_on_keeps_the_first_reason() -> None:
    callback = TrainingCallback(stop_on="error")
    messages = train_steps(callback, sigmoid_mlp(depth=20, width=32), steps=3)
    assert sum("[error] vanishing" in message for message in messages) == 1
    assert callback.stop_reason is not None
    assert callback.stop_reason.startswith("gradcheckup stopped training at step 1")
    assert callback._stops_now(stopping=False, warn=False)
    assert not callback._stops_now(stopping=True, warn=False)
    assert callback.report is not None and not callback.report.ok


def test_warn_on_error_leaves_warnings_quiet() -> None:
    callback = TrainingCallback(warn_on="error", stop_on=None)
    messages = train_steps(callback, sigmoid_mlp(depth=20, width=32), steps=2)
    assert messages and all("[error]" in message for message in messages)
    assert callback.stop_reason is None


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="warn_on: expected one of 'error', 'warning', 'info'"):
        TrainingCallback(warn_on="loud")
    callback = TrainingCallback(layers=["nope"])
    with pytest.raises(ValueError, match="layers: no layer named 'nope'"):
        callback._open(nn.Linear(2, 2), [], None, writes_files=True)


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"], "lightning"),
        ("transformers", ["transformers", "transformers.trainer_callback"], "transformers"),
    ],
)
def test_a_missing_framework_names_the_extra(module: str, missing: list[str], extra: str) -> None:
    code = (
        "import sys\n"
        f"for name in {missing!r}: sys.modules[name] = None\n"
        "try:\n"
        f"    import gradcheckup.integrations.{module}\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"pip install 'gradcheckup[{extra}]'" in result.stdout, result.stderr
