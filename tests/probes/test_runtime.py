"""The probes' shared runtime: the one hook guard, the one fetch, the notes of what was
not measured."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes import HookSet, ProbeContext, fetch_each
from gradcheckup.probes.inventory import take_inventory
from gradcheckup.probes.parameters import ParameterProbe
from tests.helpers import layer_norm_of, probe_totals


def test_a_guarded_tensor_hook_never_replaces_the_gradient() -> None:
    context = ProbeContext()
    leaf = torch.ones(3, requires_grad=True)
    # A body that returns a tensor would replace the gradient if its value got through.
    leaf.register_hook(context.errors.guarded("returns", lambda grad: torch.zeros_like(grad)))
    (leaf * 2).sum().backward()
    assert torch.equal(leaf.grad, torch.full((3,), 2.0))
    assert context.errors.summary() == []


def test_a_guarded_hook_records_its_failure_and_returns_none() -> None:
    context = ProbeContext()

    def broken(grad: torch.Tensor) -> None:
        raise ValueError("hook bug")

    assert context.errors.guarded("hook of 'x'", broken)(torch.ones(1)) is None
    assert context.errors.summary() == ["hook of 'x': ValueError: hook bug"]


def test_fetch_each_returns_every_group_its_own_keys_with_one_transfer(monkeypatch) -> None:
    calls = []
    tolist = torch.Tensor.tolist

    def counting(tensor: torch.Tensor):
        calls.append(tensor.device)
        return tolist(tensor)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    groups = [
        {"same": torch.tensor(1.0), "vector": torch.tensor([2.0, 3.0])},
        {"same": torch.tensor(4.0)},
        {},
    ]
    assert fetch_each(groups) == [{"same": 1.0, "vector": [2.0, 3.0]}, {"same": 4.0}, {}]
    assert len(calls) == 1


def test_parameter_totals_equal_direct_norms() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 1, bias=False))
    context, inventory, hooks = ProbeContext(), take_inventory(model), HookSet()
    probe = ParameterProbe(context, inventory)
    probe.attach(hooks)
    batches = [torch.randn(3, 4) for _ in range(2)]
    grads = []
    try:
        for x in batches:
            grads.append(torch.autograd.grad(model(x).sum(), list(model.parameters())))
    finally:
        hooks.remove_all()
    totals = probe_totals(probe, context)

    first, second = totals[0], totals[1]
    # Two passes: the root-mean-square over passes of each pass's layer norm.
    for layer, totals_of, first_param in ((0, first, 0), (1, second, 2)):
        count = len(list(model[layer].parameters()))
        per_pass = [layer_norm_of(list(g[first_param : first_param + count])) for g in grads]
        expected = (sum(norm**2 for norm in per_pass) / 2) ** 0.5
        assert totals_of.grad_norm == pytest.approx(expected, rel=1e-5)
        assert totals_of.weight_norm == pytest.approx(
            layer_norm_of(list(model[layer].parameters())), rel=1e-6
        )
        assert totals_of.passes == 2 and totals_of.nonfinite_passes == 0
    bias_per_pass = [float(g[1].double().norm()) for g in grads]
    assert first.bias_grad_norm == pytest.approx(
        (sum(norm**2 for norm in bias_per_pass) / 2) ** 0.5, rel=1e-5
    )
    assert second.bias_grad_norm is None and second.params_without_grad == []
    assert probe.unavailable() == []


class _Inlined(nn.Module):
    """Uses its child's parameters without calling the child, as torch.export programs do."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.inner.weight, self.inner.bias)


NO_LAYER_RAN = (
    "backward signal, gains and activation sites: no layer module ran its own forward "
    "(a torch.export or fx program inlines its submodules); parameter statistics only"
)


def test_no_layer_forward_is_noted_once_gradients_arrive() -> None:
    model = _Inlined()
    report = gcu.check(model, torch.randn(3, 4))
    assert report.unavailable == [NO_LAYER_RAN]
    assert report.layer("inner").grad_norm is not None
    assert report.layer("inner").depth_index is None

    with gcu.watch(model) as monitor:
        model(torch.randn(3, 4))  # a forward without backward: nothing is missing yet
    assert monitor.report().unavailable == []


def test_a_torchscript_submodule_is_noted_as_unhookable() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.script(nn.Linear(3, 1))
    model = nn.Sequential(nn.Linear(3, 3), scripted)
    report = gcu.check(model, torch.randn(2, 3))
    assert report.unavailable == [
        "module hooks (backward signal, activations) for 1 (RecursiveScriptModule): "
        "register_forward_pre_hook is not supported on ScriptModules"
    ]
    assert report.probe_errors == []


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


class _OwnRegistration(nn.Linear):
    """A class with its own hook registration: it gets torch's methods, not the shortcut."""

    registered = 0

    def register_forward_hook(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        type(self).registered += 1
        return super().register_forward_hook(*args, **kwargs)


class _TakesKeywords(nn.Module):
    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        if scale.sum() < 0:
            raise ValueError("negative scale")
        return x * scale


def test_forward_hooks_behave_as_torchs_and_leave_no_entry_behind() -> None:
    from gradcheckup.probes._hooks import ForwardHooks

    plain, own, keywords = nn.Linear(2, 2), _OwnRegistration(2, 2), _TakesKeywords()
    patched = nn.Linear(2, 2)
    patched_calls = []
    original = patched.register_forward_pre_hook

    def register_forward_pre_hook(*args, **kwargs):  # type: ignore[no-untyped-def]
        patched_calls.append(args)
        return original(*args, **kwargs)

    patched.register_forward_pre_hook = register_forward_pre_hook
    for module in (plain, own):  # the user's hook first: ours must see what it returns
        module.register_forward_pre_hook(lambda module, args: (args[0] * 0,))
    seen: list[tuple[str, float]] = []

    def pre_hook(module, args, kwargs):  # type: ignore[no-untyped-def]
        seen.append(("pre", float(args[0].detach().abs().sum())))
        if "scale" in kwargs:
            return args, {"scale": kwargs["scale"] * 2}
        return None

    def post_hook(module, args, output):  # type: ignore[no-untyped-def]
        seen.append(("post", float(output.detach().abs().sum()) if output is not None else -1.0))

    hooks = ForwardHooks(pre_hook, post_hook)
    ids = [hooks.attach(module) for module in (plain, own, keywords, patched)]
    assert ids[0] == ids[2] != ids[1] != ids[3] != ids[0]
    assert _OwnRegistration.registered == 1 and len(patched_calls) == 1
    plain(torch.ones(1, 2))
    assert seen[0] == ("pre", 0.0)
    assert torch.equal(keywords(torch.ones(1, 2), scale=torch.ones(1, 2)), torch.full((1, 2), 2.0))
    seen.clear()
    with pytest.raises(ValueError, match="negative scale"):
        keywords(torch.ones(1, 2), scale=-torch.ones(1, 2))
    assert [kind for kind, _ in seen] == ["pre", "post"]  # always called
    hooks.remove()
    assert len(hooks) == 0
    for module in (plain, own, keywords, patched):
        remaining = {name: len(getattr(module, name)) for name in _HOOK_DICTS}
        expected = {name: 0 for name in _HOOK_DICTS}
        if module in (plain, own):
            expected["_forward_pre_hooks"] = 1  # the user's own
        assert remaining == expected


def test_fetched_values_keep_their_exact_value_whatever_their_dtypes() -> None:
    from gradcheckup.probes import fetch_to_host

    values = {
        "flag": torch.tensor(True),
        "count": torch.tensor(2**40 + 1, dtype=torch.int64),  # not exact in float32
        "half": torch.tensor([1.5, -2.25], dtype=torch.float16),
        "tiny": torch.tensor([1e-300], dtype=torch.float64),  # 0 in float32
        "plain": torch.tensor(3.0),
    }
    assert fetch_to_host(values) == {
        "flag": 1.0,
        "count": float(2**40 + 1),
        "half": [1.5, -2.25],
        "tiny": [1e-300],
        "plain": 3.0,
    }
    del values["count"]  # floating and boolean only: one conversion for all
    assert fetch_to_host(values)["tiny"] == [1e-300]
