"""The activation mode steps off torch's stack while torch's own quiet modules run.

Linear, Conv, norm layers make no monitored call, and an activation module makes
exactly one, which its forward hook observes instead; every other op still goes
through the mode. Nothing the report says may change: each test compares with the
mode seeing every op (``runs_no_monitored_call`` patched to refuse every module).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode

import gradcheckup as gcu
from gradcheckup.probes import tracker
from gradcheckup.report import Report


class _FunctionalAfterLinear(nn.Module):
    """A user's block: a quiet Linear, then functional activations in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.relu(self.fc(x)) - 0.5)


class _ReluInsideLinear(nn.Linear):
    """A Linear subclass with its own forward: not quiet, its ReLU must be seen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


def _mixed_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 6),
        nn.ReLU(),
        nn.Linear(6, 6),
        nn.ReLU6(),
        nn.Linear(6, 6),
        nn.Hardtanh(-0.5, 0.5),
        nn.Linear(6, 6),
        nn.Hardswish(),
        nn.Linear(6, 6),
        nn.Hardswish(inplace=True),
        nn.LayerNorm(6),
        nn.Sigmoid(),
        _FunctionalAfterLinear(),
        _ReluInsideLinear(6, 6),
        nn.Hardsigmoid(),
        nn.Dropout(0.0),
        nn.Linear(6, 6),
        nn.ReLU(inplace=True),
        nn.Linear(6, 1),
    )


def _conv1d_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 5),  # before any channels-first mark: quiet
        nn.ReLU(),
        nn.Conv1d(3, 4, 3, padding=1),
        nn.BatchNorm1d(4),
        nn.ReLU(),  # (N, C, L) after a channels-first module: units are channels
        nn.Conv1d(4, 4, 1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(20, 1),
    )


def _mode_sees_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker, "runs_no_monitored_call", lambda module: False)


def _activation_rows(report: Report) -> list[dict[str, object]]:
    return [site.model_dump() for site in report.activations]


@pytest.mark.parametrize(
    ("build", "inputs"),
    [(_mixed_model, (16, 6)), (_conv1d_model, (8, 3, 5))],
    ids=["activation-modules", "conv1d-layout"],
)
def test_reports_equal_those_of_the_mode_seeing_every_op(
    build, inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(*inputs, generator=torch.Generator().manual_seed(1))
    fast = gcu.check(build(), x)
    _mode_sees_everything(monkeypatch)
    slow = gcu.check(build(), x)
    assert _activation_rows(fast) == _activation_rows(slow)
    assert [layer.model_dump() for layer in fast.layers] == [
        layer.model_dump() for layer in slow.layers
    ]
    assert fast.findings == slow.findings
    assert not fast.probe_errors


def test_every_kind_of_site_is_seen() -> None:
    report = gcu.check(_mixed_model(), torch.randn(16, 6))
    names = [site.name for site in report.activations]
    assert names == [
        "0/relu",
        "2/relu6",
        "4/hardtanh",
        "6/hardswish",
        "8/hardswish",
        "10/sigmoid",
        "12.fc/relu",
        "12.fc/tanh",
        "13/relu",
        "13/hardsigmoid",
        "16/relu",
    ]
    assert report.activations[2].saturated_fraction is not None  # Hardtanh's bounds


def test_units_after_conv1d_are_channels() -> None:
    report = gcu.check(_conv1d_model(), torch.randn(8, 3, 5))
    relu = next(site for site in report.activations if site.name == "3/relu")
    assert relu.units == 4 and relu.unit_axis == "channels (dim 1)"
    assert report.activations[0].units == 5  # the first ReLU: features of the Linear


def test_an_exception_inside_a_quiet_module_leaves_no_mode_behind() -> None:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(7, 1))
    with pytest.raises(RuntimeError):
        gcu.check(model, torch.randn(4, 6))
    assert _get_current_function_mode() is None
    with gcu.watch(model) as monitor:
        with pytest.raises(RuntimeError):
            model(torch.randn(4, 6))
        assert _get_current_function_mode() is None
    assert _get_current_function_mode() is None
    fixed = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 1))
    assert [site.name for site in gcu.check(fixed, torch.randn(4, 6)).activations] == ["0/relu"]
    assert [site.name for site in monitor.report().activations] == ["0/relu"]


def test_a_quiet_module_with_a_forward_of_its_own_is_not_quiet() -> None:
    class Patched(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.fc.forward = lambda x: torch.sigmoid(nn.Linear.forward(self.fc, x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).sum(dim=1, keepdim=True)

    report = gcu.check(Patched(), torch.randn(8, 4))
    assert [site.name for site in report.activations] == ["fc/sigmoid"]


def test_the_mode_sees_no_op_of_quiet_modules_until_a_tensor_is_channels_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gradcheckup.probes import activations

    seen: list[str] = []
    through_the_mode = activations._ActivationMode.__torch_function__

    def counted(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        seen.append(getattr(func, "__name__", str(func)))
        return through_the_mode(self, func, types, args, kwargs)

    monkeypatch.setattr(activations._ActivationMode, "__torch_function__", counted)
    quiet = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 1))
    report = gcu.check(quiet, torch.randn(6, 4))
    assert [site.name for site in report.activations] == ["0/relu", "2/tanh"]
    assert seen == []
    gcu.check(_conv1d_model(), torch.randn(8, 3, 5))
    # Before the first Conv1d the mode steps off; after it (a channels-first output) it
    # sees every op, the ReLU and Tanh modules' calls among them.
    assert "relu" in seen and "tanh" in seen and "linear" in seen
