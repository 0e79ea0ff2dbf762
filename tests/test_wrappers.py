"""Layers of a wrapped model are named as in the unwrapped model and its state_dict."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes.inventory import wrapper_prefix


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


UNWRAPPED = ["0", "2"]


def _watched_names(model: nn.Module) -> tuple[list[str], list[str]]:
    with gcu.watch(model) as monitor:
        model(torch.randn(5, 3)).sum().backward()
    report = monitor.report()
    return [layer.name for layer in report.layers], [site.name for site in report.activations]


def test_data_parallel_layers_are_named_without_module() -> None:
    wrapped = nn.DataParallel(_model())
    assert wrapper_prefix(wrapped) == "module."
    assert _watched_names(wrapped) == (UNWRAPPED, ["0/relu"])
    report = gcu.check(wrapped, torch.randn(5, 3))
    assert [layer.name for layer in report.layers] == UNWRAPPED
    assert set(wrapped.module.state_dict()) == {
        f"{n}.{p}" for n in UNWRAPPED for p in ("weight", "bias")
    }


def test_compiled_model_layers_are_named_without_orig_mod() -> None:
    compiled = torch.compile(_model(), backend="eager")
    assert wrapper_prefix(compiled) == "_orig_mod."
    names, _ = _watched_names(compiled)
    assert names == UNWRAPPED
    nested = nn.DataParallel(torch.compile(_model(), backend="eager"))
    assert wrapper_prefix(nested) == "module._orig_mod."
    assert _watched_names(nested)[0] == UNWRAPPED


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_layers_are_named_without_module(tmp_path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        wrapped = nn.parallel.DistributedDataParallel(_model())
        assert _watched_names(wrapped) == (UNWRAPPED, ["0/relu"])
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_collectives_run_outside_the_activation_mode(tmp_path, monkeypatch) -> None:
    """gloo keeps the thread state a collective was issued in (the torch-function mode
    stack with it) until a worker thread drops it: a mode of ours kept there could hang
    the process when the process group is destroyed."""
    ddp = nn.parallel.DistributedDataParallel
    modes_seen: list[int] = []
    pre_forward = ddp._pre_forward

    def counting_pre_forward(self, *args, **kwargs):
        modes_seen.append(torch._C._len_torch_function_stack())
        return pre_forward(self, *args, **kwargs)

    monkeypatch.setattr(ddp, "_pre_forward", counting_pre_forward)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        wrapped = ddp(_model())
        names = _watched_names(wrapped)  # the first pass; the second rebuilds buckets
        report = gcu.check(wrapped, torch.randn(5, 3))
    finally:
        dist.destroy_process_group()
    assert modes_seen == [0, 0]
    assert names == (UNWRAPPED, ["0/relu"])
    assert [site.name for site in report.activations] == ["0/relu"]
    assert report.activations[0].calls == 1


def test_an_unwrapped_model_keeps_its_names() -> None:
    outer = nn.Sequential(nn.Sequential(nn.Linear(3, 4)), nn.Linear(4, 1))
    assert wrapper_prefix(outer) == ""
    assert _watched_names(outer)[0] == ["0.0", "1"]
