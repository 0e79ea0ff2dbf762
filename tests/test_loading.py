"""Loading model files: what a refusal carries, without naming any command-line flag."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from gradcheckup.loading import (
    LoadError,
    build_module,
    load_model,
    load_tensors,
    pickle_needs_trust,
    resolve_callable,
)

FACTORIES = """
from torch import nn

def linear():
    return nn.Linear(3, 2)

def not_a_model():
    return 42

VALUE = 7
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``loading_factories`` importable from the current folder."""
    (tmp_path / "loading_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "loading_factories", raising=False)
    return "loading_factories"


def _no_flag_in(error: LoadError) -> None:
    assert "--" not in str(error)


def test_loading_policy_before_torch_2_10() -> None:
    assert pickle_needs_trust("2.9.1+cu121") and pickle_needs_trust("2.2.0")
    assert not pickle_needs_trust("2.10.0") and not pickle_needs_trust("2.13.0+cpu")


def test_a_state_dict_without_factory_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(LoadError, match=r"holds a state_dict \(2 tensors\)$") as caught:
        load_model(path)
    assert caught.value.needs_factory and not caught.value.needs_trust
    _no_flag_in(caught.value)


def test_code_formats_need_trust(tmp_path: Path) -> None:
    script = tmp_path / "script.pt"
    module = tmp_path / "module.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(script))
    torch.save(nn.Linear(3, 2), module)
    for path, kind in ((script, "TorchScript"), (module, "pickled Python object")):
        with pytest.raises(LoadError, match=kind) as caught:
            load_model(path)
        assert caught.value.needs_trust and not caught.value.needs_factory
        _no_flag_in(caught.value)
    assert isinstance(load_model(module, trust=True).model, nn.Linear)


def test_a_state_dict_loads_into_the_factory_model(tmp_path: Path, factories: str) -> None:
    original = nn.Linear(3, 2)
    path = tmp_path / "weights.pt"
    torch.save(original.state_dict(), path)
    loaded = load_model(path, factory=f"{factories}:linear")
    assert loaded.format == "state_dict"
    assert torch.equal(loaded.model.weight, original.weight)


def test_the_caller_names_its_factory_option(tmp_path: Path, factories: str) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(5, 2).state_dict(), path)
    with pytest.raises(
        LoadError, match="does not fit the model from factory 'loading_factories:linear'"
    ):
        load_model(path, factory=f"{factories}:linear")
    with pytest.raises(LoadError, match="from --make 'loading_factories:linear'"):
        load_model(path, factory=f"{factories}:linear", factory_option="--make")


def test_build_module_checks_what_the_factory_returned(factories: str) -> None:
    assert isinstance(build_module(f"{factories}:linear", "factory"), nn.Linear)
    with pytest.raises(
        LoadError,
        match=r"^factory 'loading_factories:not_a_model': returned int, expected an nn.Module$",
    ):
        build_module(f"{factories}:not_a_model", "factory")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loading_factories", "expected 'package.module:callable'"),
        ("no_such_module:x", "cannot import module 'no_such_module'"),
        ("loading_factories:missing", "has no attribute 'missing'"),
        ("loading_factories:VALUE", "'VALUE' is not callable"),
    ],
)
def test_resolve_callable_errors_name_the_option(factories: str, spec: str, message: str) -> None:
    with pytest.raises(LoadError, match=f"^--opt '{spec}': ") as caught:
        resolve_callable(spec, "--opt")
    assert message in str(caught.value)


def test_load_tensors_is_safe_and_names_the_option(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(2)}, path)
    assert torch.equal(load_tensors(path, "inputs")["a"], torch.ones(2))
    with pytest.raises(LoadError, match=r"^inputs .*missing\.pt: no such file"):
        load_tensors(tmp_path / "missing.pt", "inputs")
    torch.save(nn.Linear(1, 1), path)
    with pytest.raises(LoadError, match="not plain tensors"):
        load_tensors(path, "inputs")
