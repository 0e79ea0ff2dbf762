"""Activation sites are named after the layer they follow (probes/_site_names.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import gradcheckup as gcu
from gradcheckup.examples import SigmoidChain
from gradcheckup.probes._site_names import names_sites_after_it, numbered, site_base_name


def _names(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    return [site.name for site in gcu.check(model, inputs).activations]


def test_activation_modules_in_a_sequential_are_named_after_the_layer_they_follow() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.Dropout(0.1),  # no parameters: not what a site is named after
        nn.ReLU(),
        nn.Linear(8, 2),
        nn.Sigmoid(),
    )
    report = gcu.check(model, torch.randn(16, 4))
    assert [site.name for site in report.activations] == ["0/relu", "2/relu", "5/sigmoid"]
    assert [site.owner for site in report.activations] == ["1", "4", "6"]  # the modules
    assert {layer.name for layer in report.layers} >= {"0", "2", "5"}  # in the layer table


def test_functional_calls_are_named_after_the_layer_they_follow() -> None:
    names = _names(SigmoidChain(depth=3, width=8), torch.randn(16, 8))
    assert names == ["layers.0/sigmoid", "layers.1/sigmoid", "layers.2/sigmoid"]


def test_names_stay_unique_and_the_same_on_every_pass() -> None:
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
            self.fc = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(self.block(x))  # the same block twice
            hidden = self.fc(x)
            return torch.sigmoid(F.relu(hidden)) + F.relu(hidden - 1.0)  # two ReLUs after fc

    model = Reused()
    with gcu.watch(model) as monitor:
        for _ in range(2):
            model(torch.randn(8, 6)).sum().backward()
    report = monitor.report()
    names = [site.name for site in report.activations]
    assert names == ["block.0/tanh", "block.0/tanh#2", "fc/relu", "fc/sigmoid", "fc/relu#2"]
    assert all(site.calls == 2 for site in report.activations)  # one call per pass each


def test_a_frozen_layer_and_a_parametrized_layer_name_the_sites_after_them() -> None:
    frozen = nn.Linear(4, 8)
    frozen.requires_grad_(False)
    normed = parametrizations.weight_norm(nn.Linear(8, 8, bias=False))
    model = nn.Sequential(frozen, nn.ReLU(), normed, nn.ReLU(), nn.Linear(8, 1))
    # Freezing a layer does not rename the sites after it; a parametrization, which runs
    # inside its layer's forward, is no layer of its own.
    assert _names(model, torch.randn(16, 4)) == ["0/relu", "2/relu"]


def test_an_activation_inside_a_layers_own_forward_is_named_after_that_layer() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8) / 8**0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x @ self.weight)

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Gate(), nn.Linear(8, 1))
    assert _names(model, torch.randn(16, 4)) == ["0/relu", "2/sigmoid"]


def test_before_any_layer_a_site_keeps_its_module_or_function_name() -> None:
    class InputSquash(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.Tanh()
            self.fc = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(torch.sigmoid(x)))

    assert _names(InputSquash(), torch.randn(16, 4)) == ["sigmoid", "act"]


def test_site_base_name_and_numbering() -> None:
    assert site_base_name("relu", "features.0", "features.1", "features.1") == "features.0/relu"
    assert site_base_name("relu", None, "act", "act") == "act"
    assert site_base_name("relu", "", None, "block") == "block:relu"  # '' is the model
    assert site_base_name("sigmoid", None, None, "") == "sigmoid"
    assert [numbered("0/relu", earlier) for earlier in range(3)] == [
        "0/relu",
        "0/relu#2",
        "0/relu#3",
    ]


def test_which_modules_name_sites() -> None:
    normed = parametrizations.weight_norm(nn.Linear(2, 2, bias=False))
    assert names_sites_after_it(nn.Linear(2, 2).requires_grad_(False), "fc")
    assert names_sites_after_it(normed, "fc")
    assert not names_sites_after_it(normed.parametrizations.weight, "fc.parametrizations.weight")
    assert not names_sites_after_it(nn.ReLU(), "act")
    assert not names_sites_after_it(nn.Linear(2, 2), "")  # the model itself
