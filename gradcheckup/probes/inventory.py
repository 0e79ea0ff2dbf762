"""Which modules are layers, and which parameters each layer owns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerInfo:
    """A module that owns trainable parameters directly (not through children)."""

    index: int
    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def param_count(self) -> int:
        """Trainable parameter entries owned by the layer."""
        return sum(param.numel() for _, param in self.params)


@dataclass
class Inventory:
    """Names of all modules and the layers among them, in ``named_modules()`` order."""

    module_names: dict[nn.Module, str]
    layers: list[LayerInfo]


def take_inventory(model: nn.Module) -> Inventory:
    """List the model's layers; each trainable parameter belongs to its first owner.

    Tied weights (an embedding shared with an output projection) are therefore counted
    once, under the module that ``named_modules()`` lists first.

    Raises:
        ValueError: the model has no trainable parameters, or lazy parameters that
            were never initialised.
    """
    module_names: dict[nn.Module, str] = {}
    layers: list[LayerInfo] = []
    owned: set[int] = set()
    for name, module in model.named_modules():
        module_names[module] = name
        own: list[tuple[str, nn.Parameter]] = []
        for param_name, param in module.named_parameters(recurse=False):
            if isinstance(param, nn.parameter.UninitializedParameter):
                label = f"{name}.{param_name}" if name else param_name
                raise ValueError(
                    f"model: parameter {label!r} is an uninitialised lazy parameter; run one "
                    "forward pass (or torch.nn.modules.lazy materialisation) before checking"
                )
            if param.requires_grad and id(param) not in owned:
                owned.add(id(param))
                own.append((param_name, param))
        if own:
            layers.append(LayerInfo(index=len(layers), name=name, module=module, params=own))
    if not layers:
        total = sum(1 for _ in model.parameters())
        detail = (
            "it has no parameters"
            if total == 0
            else f"all {total} of its parameters have requires_grad=False"
        )
        raise ValueError(f"model: expected at least one trainable parameter, but {detail}")
    return Inventory(module_names=module_names, layers=layers)


def is_inside_backward() -> bool:
    """True while autograd runs a backward pass.

    Activation checkpointing recomputes forwards there; those must not count as new
    passes.
    """
    current_task = getattr(torch._C, "_current_graph_task_id", None)
    return current_task is not None and current_task() != -1
