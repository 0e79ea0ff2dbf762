"""Which modules are layers, and which parameters each layer owns.

A parametrized module (``torch.nn.utils.parametrizations.weight_norm``, ``orthogonal``,
``spectral_norm``, any ``parametrize.register_parametrization``) is one layer: it owns
the originals its parametrizations hold (``parametrizations.weight.original0``, ...),
so its gradient norm is taken over them, and its weight norm over the tensors it
computes with (``module.weight``, the parametrization's value).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
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

    @functools.cached_property
    def param_count(self) -> int:
        """Trainable parameter entries owned by the layer."""
        return sum(param.numel() for _, param in self.params)

    def current_weights(self) -> list[torch.Tensor]:
        """The tensors the layer computes with, detached (the parameters themselves
        under ``torch.no_grad()``, where nothing records a graph).

        Its own parameters; for a parametrized tensor the value the parametrization
        gives (``module.weight`` of a weight-normed layer), not its originals. The
        parametrizations run in eval mode, so measuring changes nothing (training-mode
        ``spectral_norm`` would take a power-iteration step).
        """
        if not _is_parametrized(self.module):
            if not torch.is_grad_enabled():  # nothing records a graph: no detaching
                return [param for _, param in self.params]
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


def _is_parametrized(module: nn.Module) -> bool:
    """``parametrize.is_parametrized(module)``, without its failing attribute lookup on
    the modules that have no parametrizations (every parametrization registers the
    ``parametrizations`` child)."""
    return _PARAMETRIZATIONS in module._modules and parametrize.is_parametrized(module)


def torchs_own_checker(*methods: str) -> Callable[[nn.Module], bool]:
    """A test of whether a module's ``methods`` are all ``nn.Module``'s own: neither its
    class nor the instance replaced one, so that what they do may be done more
    directly. For one walk over a model's modules: each class is looked up once."""
    originals = [getattr(nn.Module, method) for method in methods]
    by_class: dict[type, bool] = {}

    def runs_all_of_torchs_own(module: nn.Module) -> bool:
        cls = type(module)
        plain = by_class.get(cls)
        if plain is None:
            plain = by_class[cls] = all(
                getattr(cls, method) is original
                for method, original in zip(methods, originals, strict=True)
            )
        return plain and vars(module).keys().isdisjoint(methods)

    return runs_all_of_torchs_own


def _own_parameters(
    module: nn.Module, plain: Callable[[nn.Module], bool]
) -> Iterator[tuple[str, nn.Parameter]]:
    """The module's direct parameters, and those of its parametrizations.

    ``plain`` says whether the module's ``named_parameters`` is torch's own.
    """
    if plain(module):
        # What named_parameters(recurse=False) lists, without its generator machinery;
        # a parameter registered twice comes twice (take_inventory keeps the first).
        yield from (
            (name, param) for name, param in module._parameters.items() if param is not None
        )
    else:
        yield from module.named_parameters(recurse=False)
    if _is_parametrized(module):
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
    owns the parameters of its parametrizations. Modules are named as in the unwrapped
    model (``_unwrapped_names``).

    Raises:
        ValueError: the model has no trainable parameters, or lazy parameters that
            were never initialised.
    """
    module_names = _unwrapped_names(model)
    layers: list[LayerInfo] = []
    owned: set[int] = set()
    plain = torchs_own_checker("named_parameters")
    for module, name in module_names.items():
        own: list[tuple[str, nn.Parameter]] = []
        # A parametrized module comes before its parametrizations in named_modules(),
        # so it owns their parameters, and they never form layers of their own.
        if plain(module) and _PARAMETRIZATIONS not in module._modules:
            # The common module, as _own_parameters would list it, without a generator.
            candidates: Iterable[tuple[str, nn.Parameter | None]] = module._parameters.items()
        else:
            candidates = _own_parameters(module, plain)
        for param_name, param in candidates:
            if param is None:
                continue
            # Parameter's metaclass makes isinstance slow: the exact type needs none.
            if type(param) is not nn.Parameter and isinstance(
                param, nn.parameter.UninitializedParameter
            ):
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


def _unwrapped_names(model: nn.Module) -> dict[nn.Module, str]:
    """Every module's name as in the unwrapped model, in ``named_modules()`` order.

    'fc1', not 'module.fc1' or '_orig_mod.fc1' (``wrapper_prefix``; the wrappers
    themselves are named '' like the model), and 'block.lin', not
    'block._orig_mod.lin', for a submodule compiled with ``torch.compile``: its wrapper
    forwards attribute lookups, so ``model.get_submodule('block.lin')`` finds the layer.
    """
    prefix = wrapper_prefix(model)
    compiled_type = _compiled_module_type()
    if not prefix and compiled_type is _NeverWrapped:  # nothing to unwrap anywhere
        return {module: path for path, module in model.named_modules()}
    names: dict[nn.Module, str] = {}
    by_path: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        by_path[path] = module
        if not path or not path.startswith(prefix):
            names[module] = ""
            continue
        parent_path, _, last = path.rpartition(".")
        parent = by_path[parent_path]
        if last == "_orig_mod" and isinstance(parent, compiled_type):
            names[module] = names[parent]
        else:
            names[module] = f"{names[parent]}.{last}" if names[parent] else last
    return names


def wrapper_prefix(model: nn.Module) -> str:
    """What wrappers put before every name of the model they wrap: ``'module.'`` for
    DataParallel/DistributedDataParallel, ``'_orig_mod.'`` for ``torch.compile``, in any
    nesting (``'module._orig_mod.'``); ``''`` for a model that is not wrapped."""
    return "".join(part for _, part in _wrappers(model)[0])


def _wrappers(model: nn.Module) -> tuple[list[tuple[nn.Module, str]], nn.Module]:
    """The wrappers around the model, outermost first, each with what it puts before
    the names of the model it wraps; and the unwrapped model."""
    wrappers: list[tuple[nn.Module, str]] = []
    current = model
    while True:
        if isinstance(current, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            wrappers.append((current, "module."))
            current = current.module
        elif isinstance(current, _compiled_module_type()):
            wrappers.append((current, "_orig_mod."))
            current = current._orig_mod
        else:
            return wrappers, current


def compiler_loaded() -> bool:
    """Whether dynamo was imported: nothing can have been compiled before it is."""
    return "torch._dynamo" in sys.modules


def is_compiled(module: nn.Module) -> bool:
    """True if calling ``module`` runs compiled code: ``torch.compile``'s wrapper, or a
    module compiled in place (``module.compile()``)."""
    return isinstance(module, _compiled_module_type()) or (
        getattr(module, "_compiled_call_impl", None) is not None
    )


def unhooked_wrappers(model: nn.Module) -> tuple[set[nn.Module], nn.Module]:
    """The wrappers whose forward hooks must not run (around compiled code, or a DDP
    wrapper), and the module whose call starts a forward pass of the model.

    Dynamo traces every module call inside compiled code (the hooks there step aside),
    but the hooks of a ``torch.compile`` wrapper, and of the wrappers (DDP,
    DataParallel) around a compiled model, run outside it: a pass counted there would
    see none of the model's modules. The pass starts at the outermost module that is
    not one of these: the compiled model itself, whose hooks run (and see every module
    call) when dynamo runs it eagerly (``torch.compiler.set_stance('force_eager')``,
    ``check()``).

    A ``DistributedDataParallel`` wrapper is never hooked either: its forward runs
    collectives before the model's (a bucket rebuild, buffer broadcasts), and gloo
    keeps the thread state they were issued in, activation mode included, until its
    worker thread drops them; one dropped while the process group is destroyed (the
    destructor holds the GIL and joins that thread) hangs the process.
    """
    wrappers, unwrapped = _wrappers(model)
    chain = [module for module, _ in wrappers] + [unwrapped]
    innermost = max((at for at, module in enumerate(chain) if is_compiled(module)), default=0)
    compiled_type = _compiled_module_type()
    around = set(chain[:innermost])
    around.update(
        module for module, _ in wrappers if isinstance(module, nn.parallel.DistributedDataParallel)
    )
    if compiled_type is not _NeverWrapped:
        around.update(module for module in model.modules() if isinstance(module, compiled_type))
    return around, next(module for module in chain if module not in around)


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
