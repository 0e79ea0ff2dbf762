"""Independent computations the tests compare gradcheckup against."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from pytest_gradcheckup.session import GradcheckupSession


def hook_count(model: nn.Module) -> int:
    """Every module and parameter hook currently registered on ``model``."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    for param in model.parameters():
        total += len(param._backward_hooks or {})
    return total


def param_grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return dict(zip(names, grads, strict=False))


def layer_norm_of(tensors: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum(t.detach().double().pow(2).sum() for t in tensors)))


def he_relu_mlp_source(name: str) -> str:
    """Source of ``def name()`` building a healthy He-initialised 16-64-64-4 ReLU MLP.

    For the model modules the CLI and plugin integration tests write to disk; the
    module that receives it imports ``nn`` from torch.
    """
    return f"""
def {name}():
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model
"""


def make_session(
    layers: list[tuple[str, dict[str, Any]]] | None = None, json_path: Path | None = None
) -> GradcheckupSession:
    """A plugin session as ``pytest_configure`` makes it, without pytest."""
    return GradcheckupSession(
        settings_layers=layers or [],
        seed=0,
        json_path=json_path,
        baseline_dir=None,
        update_baseline=False,
        baseline_factor=10.0,
    )


def finding_dict(kind: str, severity: str, where: str) -> dict[str, Any]:
    """A finding as a report's JSON holds it (the fields the session reads)."""
    return {"kind": kind, "severity": severity, "where": where}


def stand_in_report(*findings: dict[str, Any]) -> SimpleNamespace:
    """A stand-in for ``gcu.Report``: the session only calls ``model_dump_json()``."""
    document = {"findings": list(findings)}
    return SimpleNamespace(model_dump_json=lambda: json.dumps(document))


def probe_totals(probe: Any, context: Any) -> Any:
    """A probe's host totals as the monitor builds them: its own device values and the
    gradient ledger's, fetched together."""
    from gradcheckup.probes import fetch_each, local_totals

    fetched, ledger = fetch_each([probe.device_values(), context.ledger.device_values()])
    return local_totals(probe, fetched, context.ledger.totals(ledger))


def report_with_findings(*findings: tuple[str, str, str]) -> Any:
    """A real ``gcu.Report`` (of a one-layer model) holding hand-made findings, each
    given as ``(kind, severity, where)``, with message 'm' and hint 'h'."""
    import gradcheckup as gcu

    report = gcu.check(nn.Linear(2, 2), torch.ones(1, 2))
    made = [
        gcu.Finding(
            kind=kind,
            severity=severity,
            where=where,
            value=None,
            threshold=None,
            message="m",
            hint="h",
        )
        for kind, severity, where in findings
    ]
    return report.model_copy(update={"findings": made})


def bytes_kept_by(monitor: Any) -> int:
    """Bytes of every tensor the monitor holds between passes, the model's own excluded."""
    import gc
    import types

    # Only the monitor's own objects: not functions (their globals lead everywhere), not
    # modules or classes.
    opaque = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    model = monitor._model
    skip = {id(module) for module in model.modules()} | {id(p) for p in model.parameters()}
    seen: set[int] = set()
    storages: set[int] = set()
    total = 0
    stack: list[object] = [monitor]
    while stack:
        item = stack.pop()
        if id(item) in seen or id(item) in skip or isinstance(item, opaque):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            key = item.untyped_storage().data_ptr()
            if key not in storages:
                storages.add(key)
                total += item.untyped_storage().nbytes()
            continue
        stack.extend(gc.get_referents(item))
    return total


def importable_module(folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    """Write module ``name`` into ``folder``, make that the current folder, and let
    ``import name`` find it there (freshly, also after an earlier test imported one)."""
    (folder / f"{name}.py").write_text(source)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name
