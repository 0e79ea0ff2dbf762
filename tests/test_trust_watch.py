"""Issue 10: watching never breaks the user's program and never reports a pass it did not
measure (torch.func, copies and pickles, other monitors, empty batches, parametrized
layers; torch.compile: tests/test_compile.py)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import gradcheckup as gcu
from gradcheckup.probes import _ownership
from tests.helpers import hook_count, layer_norm_of


def mlp(width: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def grad_norms(model: nn.Module, names: list[str]) -> list[float]:
    return [
        layer_norm_of([p.grad for p in model.get_submodule(name).parameters()]) for name in names
    ]


def _print_and_return(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    """A user's own forward hook (module level, so it pickles)."""


# -- torch.func --------------------------------------------------------------------------------
def test_per_sample_gradients_with_torch_func_inside_a_watch() -> None:
    model = mlp()
    params = {name: p.detach() for name, p in model.named_parameters()}
    x = torch.randn(5, 8)
    y = torch.randint(0, 2, (5,))

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, p, (xi[None],))
        return F.cross_entropy(out, yi[None])

    with gcu.watch(model) as monitor:
        per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
        F.cross_entropy(model(x), y).backward()
    assert per_sample["0.weight"].shape == (5, 8, 8)
    report = monitor.report()
    assert report.passes == 1 and report.probe_errors == []
    assert all(layer.passes == 1 for layer in report.layers)
    assert [layer.grad_norm for layer in report.layers] == pytest.approx(
        grad_norms(model, ["0", "2"]), rel=1e-5
    )


def test_a_transform_inside_the_forward_is_left_alone() -> None:
    class Vmapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.func.vmap(torch.relu)(self.first(x)))

    model = Vmapped()
    with gcu.watch(model) as monitor:
        model(torch.randn(4, 8)).sum().backward()
    report = monitor.report()  # raised "tensor may have escaped" when it kept vmap's relu
    assert report.passes == 1 and report.probe_errors == []
    assert report.activations == []  # the relu ran inside vmap: not observed


# -- copies and pickles ------------------------------------------------------------------------
def test_a_watched_model_pickles_and_its_copies_carry_no_hook_of_ours() -> None:
    model = mlp()
    model.register_forward_hook(_print_and_return)  # the user's own hook travels as usual
    x = torch.randn(4, 8)
    with gcu.watch(model) as monitor:
        model(x).sum().backward()
        saved = io.BytesIO()
        torch.save(model, saved)
        pickled = pickle.dumps(model)
        ema = copy.deepcopy(model)
        averaged = torch.optim.swa_utils.AveragedModel(model)
        shallow = copy.copy(model)
        for copied in (ema, averaged.module):
            copied(x).sum().backward()  # a copy does not feed the monitor
    report = monitor.report()
    assert report.passes == 1 and all(layer.passes == 1 for layer in report.layers)
    saved.seek(0)
    loaded = torch.load(saved, weights_only=False)
    for copied in (model, ema, averaged, shallow, loaded, pickle.loads(pickled)):
        root = copied.module if copied is averaged else copied
        assert list(root._forward_hooks.values()) == [_print_and_return]
        assert hook_count(copied) == 1
        assert "__getstate__" not in copied.__dict__
        pickle.dumps(copied)
        torch.save(copied, io.BytesIO())


def test_a_deepcopy_of_a_parametrized_model_during_a_watch_is_clean() -> None:
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 8)), nn.Linear(8, 2))
    with gcu.watch(model):
        model(torch.randn(4, 8)).sum().backward()
        ema = copy.deepcopy(model)
    assert hook_count(ema) == 0 and hook_count(model) == 0
    for param in ema.parameters():
        assert not param._backward_hooks
        assert not getattr(param, "_post_accumulate_grad_hooks", None)


# -- passes belong to one monitor ------------------------------------------------------------
def test_check_inside_a_watch_is_invisible_to_it() -> None:
    model = mlp()
    x = torch.randn(4, 8)
    with gcu.watch(model) as monitor:
        model(x).sum().backward()
        pending = model(x).sum()
        before = monitor.report()
        gcu.check(model, torch.randn(4, 8))
        after_check = monitor.report()
        pending.backward()  # the watch's own pass, differentiated after check()
    assert after_check.passes == before.passes == 2
    assert [layer.grad_norm for layer in after_check.layers] == [
        layer.grad_norm for layer in before.layers
    ]
    report = monitor.report()
    assert all(layer.passes == 2 for layer in report.layers)


def test_two_models_sharing_a_submodule_keep_their_passes_apart() -> None:
    shared = nn.Linear(8, 8)
    model_a = nn.Sequential(shared, nn.ReLU(), nn.Linear(8, 2))
    model_b = nn.Sequential(shared, nn.Tanh(), nn.Linear(8, 3))
    with gcu.watch(model_a) as monitor_a, gcu.watch(model_b) as monitor_b:
        model_a(torch.randn(4, 8)).sum().backward()
        report_b = monitor_b.report()
        model_b(torch.randn(4, 8)).sum().backward()
    assert report_b.passes == 0
    assert not any(
        f.kind.value == "no_gradient" and f.severity.value != "info" for f in report_b.findings
    )
    report_a, report_b = monitor_a.report(), monitor_b.report()
    assert not _ownership._open_owners and not _ownership._claims  # closing released both
    assert report_a.passes == report_b.passes == 1
    assert report_a.layer("0").passes == report_b.layer("0").passes == 1
    assert [a.name for a in report_a.activations] == ["0/relu"]
    assert report_a.activations[0].function == "relu"
    assert report_b.activations[0].function == "tanh"


def test_a_zero_sample_pass_is_not_a_pass() -> None:
    model = mlp()
    x = torch.randn(4, 8)
    with gcu.watch(model) as monitor:
        model(x).sum().backward()
        model(torch.randn(0, 8)).sum().backward()
    report = monitor.report()
    assert report.passes == 1
    assert all(layer.passes == 1 for layer in report.layers)
    model.zero_grad()
    model(x).sum().backward()
    assert report.layer("0").grad_norm == pytest.approx(grad_norms(model, ["0"])[0], rel=1e-5)


# -- parametrized layers -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "parametrize",
    [parametrizations.weight_norm, parametrizations.orthogonal, parametrizations.spectral_norm],
)
def test_a_parametrized_layer_is_one_row_with_its_effective_weight(parametrize) -> None:
    model = nn.Sequential(parametrize(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 8)
    with gcu.watch(model) as monitor:
        model(x).sum().backward()
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    report = monitor.report()
    # Measuring the weight took no spectral_norm power-iteration step.
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert [layer.name for layer in report.layers] == ["0", "2"]
    row = report.layer("0")
    layer = model[0].eval()
    assert row.weight_norm == pytest.approx(layer_norm_of([layer.weight, layer.bias]), rel=1e-5)
    # The gradient is taken with respect to what the optimizer updates: the originals.
    assert row.param_count == sum(p.numel() for p in layer.parameters())
    assert row.grad_norm == pytest.approx(
        layer_norm_of([p.grad for p in layer.parameters()]), rel=1e-5
    )
    assert row.depth_index == 0 and row.output_grad_norm is not None
