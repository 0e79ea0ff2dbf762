"""The scalars every logging adapter shares (``gradcheckup.integrations``), and what
importing the integrations costs."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.integrations import summary_scalars
from gradcheckup.rules.depth import depth_ratio
from tests import sample_reports

ALWAYS = {"gradcheckup/errors", "gradcheckup/warnings", "gradcheckup/nonfinite"}


def test_importing_the_integrations_imports_no_torch_and_no_logger() -> None:
    code = (
        "import sys, gradcheckup.integrations.tensorboard, gradcheckup.integrations.wandb; "
        "print(sorted(m for m in ('torch', 'tensorboard', 'wandb', 'matplotlib') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_deep_sigmoid_mlp_gives_the_judged_depth_ratio_and_its_two_ends() -> None:
    report = sample_reports.deep_sigmoid()
    scalars = summary_scalars(report)
    ratio, first_end, last_end, _ = depth_ratio(report.layers, report.config)
    assert scalars["gradcheckup/depth_ratio"] == ratio < report.config.vanishing_ratio
    assert scalars["gradcheckup/errors"] == 1.0
    assert scalars["gradcheckup/nonfinite"] == 0.0
    for layer in (first_end, last_end):
        assert scalars[f"gradcheckup/layer/{layer.name}/grad_norm"] == layer.grad_norm
        assert scalars[f"gradcheckup/layer/{layer.name}/unit_signal"] == layer.unit_signal
    # Nothing recurrent and no optimizer steps: those names are left out, not zero.
    assert "gradcheckup/through_time_ratio" not in scalars
    assert "gradcheckup/step_norm" not in scalars
    assert "gradcheckup/clipped_steps" not in scalars


def test_fractions_are_the_largest_over_the_sites() -> None:
    report = sample_reports.dead_relu()
    scalars = summary_scalars(report)
    assert scalars["gradcheckup/max_dead_fraction"] == max(
        site.dead_fraction for site in report.activations if site.dead_fraction is not None
    )
    assert scalars["gradcheckup/max_dead_fraction"] > 0.5


def test_a_plain_rnn_gives_its_through_time_ratio() -> None:
    report = sample_reports.plain_rnn()
    scalars = summary_scalars(report)
    (stats,) = report.temporal
    assert scalars["gradcheckup/through_time_ratio"] == stats.first_to_last < 1e-6


def test_training_steps_give_the_last_step_norm_and_the_clipped_count() -> None:
    report = sample_reports.unclipped_exploding_training()
    scalars = summary_scalars(report)
    assert scalars["gradcheckup/step_norm"] == report.steps[-1].grad_norm_at_step
    assert scalars["gradcheckup/clipped_steps"] == 0.0
    errors = [finding for finding in report.findings if finding.severity is gcu.Severity.ERROR]
    assert scalars["gradcheckup/errors"] == len(errors) > 1


def test_clipped_steps_are_counted() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with gcu.watch(model, optimizer=optimizer) as monitor:
        for step in range(4):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if step % 2:
                nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            optimizer.step()
    scalars = summary_scalars(monitor.report())
    assert scalars["gradcheckup/clipped_steps"] == 2.0
    assert scalars["gradcheckup/step_norm"] == pytest.approx(1e-3, rel=1e-3)


def test_a_nan_in_the_gradients_raises_the_flag_and_only_finite_values_are_kept() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    x = torch.randn(8, 4)
    x[0, 0] = math.inf
    report = gcu.check(model, x)
    scalars = summary_scalars(report)
    assert scalars["gradcheckup/nonfinite"] == 1.0
    assert all(math.isfinite(value) for value in scalars.values())


def test_chosen_layers_by_name_prefix_and_a_clear_error_for_unknown_names() -> None:
    report = sample_reports.healthy_resnet()
    scalars = summary_scalars(report, layers=["stem.0", "head"], prefix="train/gcu.")
    assert scalars["train/gcu.layer/stem.0/grad_norm"] == report.layer("stem.0").grad_norm
    assert scalars["train/gcu.layer/head/unit_signal"] == report.layer("head").unit_signal
    assert set(scalars) >= {name.replace("gradcheckup/", "train/gcu.") for name in ALWAYS}
    assert not any("stages" in name for name in scalars)
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        summary_scalars(report, layers=["nope"])


def test_the_model_itself_is_named_as_everywhere_else() -> None:
    report = gcu.check(nn.Linear(4, 2), torch.randn(8, 4))
    scalars = summary_scalars(report, layers=["(model)"])
    assert scalars["gradcheckup/layer/(model)/grad_norm"] == report.layer("").grad_norm
    assert summary_scalars(report, layers=[""]) == scalars


class _RecordingWriter:
    """The three methods of a SummaryWriter that the TensorBoard adapter calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.calls.append(("scalar", tag, global_step))

    def add_text(self, tag: str, text: str, global_step: int) -> None:
        self.calls.append(("text", tag, global_step))

    def add_figure(self, tag: str, figure: object, global_step: int) -> None:
        self.calls.append(("figure", tag, global_step))


def test_without_matplotlib_the_loggers_leave_the_figure_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gradcheckup.integrations.tensorboard import log_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    writer = _RecordingWriter()
    log_report(writer, sample_reports.healthy_resnet(), step=2)
    assert ("text", "gradcheckup/findings", 2) in writer.calls
    assert not [call for call in writer.calls if call[0] == "figure"]


def test_without_wandb_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradcheckup.integrations.wandb import log_report

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'gradcheckup\[wandb\]'"):
        log_report(object(), sample_reports.healthy_resnet(), step=0)


def test_findings_markdown_keeps_each_finding_in_one_table_row() -> None:
    from gradcheckup.integrations._findings import findings_markdown

    report = sample_reports.unclipped_exploding_training()
    finding = report.findings[0]
    tricky = finding.model_copy(update={"message": "a | b\nc"})
    text = findings_markdown(report.model_copy(update={"findings": [tricky]}))
    assert text.splitlines()[-1] == (
        f"| error | {finding.kind.value} | {finding.where} | a \\| b c | {finding.hint} |"
    )
