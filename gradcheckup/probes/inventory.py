"""Which modules are layers, and which parameters each layer owns.

A parametrized module (``torch.nn.utils.parametrizations.weight_norm``, ``orthogonal``,
``spectral_norm``, any ``parametrize.register_parametrization``) is one layer: it owns
the originals its parametrizations hold (``parametrizations.weight.original0``, ...),
so its gradient norm is taken over them, and its weight norm over the tensors it
computes with (``module.weight``, the parametrization's value).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

_PARAMETRIZATIONS = "parametrizations"


@dataclass
class LayerInfo:
    """A module that owns trainable parameters directly (not through children).

    The parameters of its parametrizations count as its own.
    """

    index: int
    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def param_count(self) -> int:
        """Trainable parameter entries owned by the layer."""
        return sum(param.numel() for _, param in self.params)

    def current_weights(self) -> list[torch.Tensor]:
        """The tensors the layer computes with, detached.

        Its own parameters; for a parametrized tensor the value the parametrization
        gives (``module.weight`` of a weight-normed layer), not its originals. The
        parametrizations run in eval mode, so measuring changes nothing (training-mode
        ``spectral_norm`` would take a power-iteration step).
        """
        if not parametrize.is_parametrized(self.module):
            return [param.detach() for _, param in self.params]
        prefix = f"{_PARAMETRIZATIONS}."
        plain = [param.detach() for name, param in self.params if not name.startswith(prefix)]
        parametrizations = getattr(self.module, _PARAMETRIZATIONS)
        with torch.no_grad(), _in_eval_mode(parametrizations):
            computed = [getattr(self.module, name) for name in parametrizations]
        return [*plain, *(tensor.detach() for tensor in computed)]


@contextmanager
def _in_eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` and its children in eval mode, restoring each one's flag."""
    flags = [(child, child.training) for child in module.modules()]
    try:
        for child, _ in flags:
            child.training = False
        yield
    finally:
        for child, training in flags:
            child.training = training


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The module's direct parameters, and those of its parametrizations."""
    yield from module.named_parameters(recurse=False)
    if parametrize.is_parametrized(module):
        parametrizations = getattr(module, _PARAMETRIZATIONS)
        yield from parametrizations.named_parameters(prefix=_PARAMETRIZATIONS)


@dataclass
class Inventory:
    """Names of all modules and the layers among them, in ``named_modules()`` order."""

    module_names: dict[nn.Module, str]
    layers: list[LayerInfo]
    root: nn.Module | None = None
    """The model the inventory was taken of."""


def take_inventory(model: nn.Module) -> Inventory:
    """List the model's layers; each trainable parameter belongs to its first owner.

    Tied weights (an embedding shared with an output projection) are therefore counted
    once, under the module that ``named_modules()`` lists first. A parametrized module
    owns the parameters of its parametrizations.

    Raises:
        ValueError: the model has no trainable parameters, or lazy parameters that
            were never initialised.
    """
    module_names: dict[nn.Module, str] = {}
    layers: list[LayerInfo] = []
    owned: set[int] = set()
    prefix = wrapper_prefix(model)
    for wrapped_name, module in model.named_modules():
        # Names as in the unwrapped model and its state_dict: 'fc1', not 'module.fc1'.
        name = wrapped_name[len(prefix) :] if wrapped_name.startswith(prefix) else ""
        module_names[module] = name
        own: list[tuple[str, nn.Parameter]] = []
        # A parametrized module comes before its parametrizations in named_modules(),
        # so it owns their parameters, and they never form layers of their own.
        for param_name, param in _own_parameters(module):
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
    return Inventory(module_names=module_names, layers=layers, root=model)


def wrapper_prefix(model: nn.Module) -> str:
    """What wrappers put before every name of the model they wrap: ``'module.'`` for
    DataParallel/DistributedDataParallel, ``'_orig_mod.'`` for ``torch.compile``, in any
    nesting (``'module._orig_mod.'``); ``''`` for a model that is not wrapped."""
    prefix = ""
    current = model
    while True:
        if isinstance(current, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            current, prefix = current.module, prefix + "module."
        elif isinstance(current, _compiled_module_type()):
            current, prefix = current._orig_mod, prefix + "_orig_mod."
        else:
            return prefix


def _compiled_module_type() -> type:
    """``torch.compile``'s wrapper class, imported only when needed (dynamo is heavy)."""
    module = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(module, "OptimizedModule", _NeverWrapped) if module else _NeverWrapped


class _NeverWrapped:
    """Stands for the compile wrapper class while dynamo was never imported (nothing can
    be compiled then)."""


def is_inside_backward() -> bool:
    """True while autograd runs a backward pass.

    Activation checkpointing recomputes forwards there; those must not count as new
    passes.
    """
    current_task = getattr(torch._C, "_current_graph_task_id", None)
    return current_task is not None and current_task() != -1
