"""The backward signal at each layer: dL/d(output), dL/d(input) and their ratio.

The forward hook registers a tensor hook on the layer's output. Unlike
``register_full_backward_hook`` this works when the output is modified in place
afterwards (``nn.ReLU(inplace=True)``; the hook then sees dL/d pre-activation), for
dict/tuple outputs, and with keyword-argument tensors.

For dL/d(input) the forward pre-hook hands the layer an identity view of each input
and hooks that view: a hook on the input tensor itself would also collect the
gradient of every other consumer of it (the skip path of a residual block).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradcheckup.probes._accumulators import Accumulators, Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._tensors import carries_gradient, iter_tensors, squared_norm
from gradcheckup.probes.activations import CHANNELS_FIRST_1D
from gradcheckup.probes.inventory import Inventory


@dataclass(frozen=True)
class SignalTotals:
    """Host-side results for one layer."""

    depth_index: int | None
    output_squared: float | None
    unit_squared: float | None
    """Squared norm of dL/d(output) summed over positions per sample and unit, summed
    over passes (see ``position_summed``)."""
    input_squared: float | None
    first_nonfinite_tick: float | None


class LayerSignalProbe:
    """The backward signal through each layer: dL/d(output) and dL/d(input).

    Hooks: none of its own; the module tracker calls ``before_forward`` and
    ``after_forward`` around each layer's forward, and these register tensor hooks on
    the layer's (aliased) inputs and its outputs, once per call. Accumulates the
    squared norms of both gradients per layer, summed over passes, the squared norm of
    the output gradient summed over positions (the signal per unit), and the order in
    which layers first ran forward (their depth).
    """

    def __init__(self, context: ProbeContext, inventory: Inventory) -> None:
        """Create the probe and each layer's gradient hooks (registered per call).

        Args:
            context: state shared with the monitor's other probes.
            inventory: the model's layers.
        """
        self._context = context
        self._sums = Accumulators()
        self._layer_names = {layer.index: layer.name for layer in inventory.layers}
        self._depth: dict[int, int] = {}
        self._channels_first = {
            layer.index for layer in inventory.layers if isinstance(layer.module, CHANNELS_FIRST_1D)
        }
        self._traced: set[int] = set()
        # Only torch's own layers get stand-in leaves for plain inputs: the forward of a
        # user's module may do anything with its input (Wav2Vec2's feature encoder sets
        # requires_grad on a view of it, which only a plain leaf allows).
        self._torch_layers = {
            layer.index
            for layer in inventory.layers
            if type(layer.module).__module__.startswith("torch.nn.")
        }
        self.pass_leaves: list[torch.Tensor] = []
        # Built once per layer: the hooks do not depend on the call, and forward runs often.
        self._hooks = {
            (index, key): self._gradient_hook(index, key)
            for index in self._layer_names
            for key in ("input_sq", "output_sq")
        }

    def attach(self, hooks: HookSet) -> None:
        """Nothing to attach: the module tracker drives this probe."""

    def before_forward(
        self, layer_index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Swap gradient-carrying input tensors for hooked identity views.

        Returns:
            The new ``(args, kwargs)``, or None when no input carries gradient.
        """
        aliases: dict[int, torch.Tensor] = {}
        hook = self._hooks[(layer_index, "input_sq")]

        def alias(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            # Same tensor passed twice (self-attention's query is key is value) keeps one
            # alias: modules take fast paths on identity.
            view = aliases.get(id(value))
            if view is None:
                if carries_gradient(value):
                    source = value
                elif layer_index in self._torch_layers:
                    source = self._stand_in(value)
                else:
                    return value
                if source is None:
                    return value
                view = source.view_as(source)
                view.register_hook(hook)
                aliases[id(value)] = view
            return view

        new_args = tuple(alias(value) for value in args)
        new_kwargs = {name: alias(value) for name, value in kwargs.items()}
        if not aliases:
            return None
        return new_args, new_kwargs

    def trace(self, tensors: Sequence[torch.Tensor]) -> None:
        """Measure the input gradient of layers fed these plain tensors or views of them.

        ``check()`` hands the model plain copies of its inputs (as the caller's own
        tensors are); a layer consuming one gets a stand-in leaf holding the same data
        instead, whose gradient ``check()`` asks for (``pass_leaves``).
        """
        self._traced = {tensor.untyped_storage().data_ptr() for tensor in tensors}

    def _stand_in(self, tensor: torch.Tensor) -> torch.Tensor | None:
        if not tensor.is_floating_point() or not self._traced:
            return None
        if tensor.untyped_storage().data_ptr() not in self._traced or _saved_tensors_hooked():
            return None
        leaf = tensor.detach().requires_grad_(True)
        self.pass_leaves.append(leaf)
        return leaf

    def after_forward(self, layer_index: int, output: Any) -> None:
        """Hook every gradient-carrying output tensor; note forward order."""
        if layer_index not in self._depth:
            self._depth[layer_index] = len(self._depth)
        hook = self._hooks[(layer_index, "output_sq")]
        seen: set[int] = set()
        for tensor in iter_tensors(output):
            if carries_gradient(tensor) and id(tensor) not in seen:
                seen.add(id(tensor))
                tensor.register_hook(hook)

    def _gradient_hook(self, layer_index: int, key: str) -> Callable[[torch.Tensor], None]:
        context = self._context
        sums = self._sums
        watches_origin = key == "output_sq"
        channels_first = layer_index in self._channels_first

        def observe(grad: torch.Tensor) -> None:
            if not context.active:
                return
            with torch.no_grad():
                squared = squared_norm(grad)
                sums.add((key, layer_index), squared)
                if watches_origin:
                    per_unit = grad if grad.dim() <= 2 else position_summed(grad, channels_first)
                    unit = squared if per_unit is grad else squared_norm(per_unit)
                    sums.add(("unit_sq", layer_index), unit)
                    context.note_nonfinite(layer_index, squared)

        where = f"{key.split('_')[0]} gradient hook of {self._layer_names[layer_index]!r}"
        return context.errors.guarded(where, observe)

    def device_values(self) -> Mapping[Hashable, torch.Tensor]:
        """The signal sums, and the tick at which each layer first saw NaN/inf."""
        ticks = {
            ("first_nonfinite", index): tick
            for index, tick in self._context.first_nonfinite_ticks.items()
        }
        return {**self._sums.values, **ticks}

    def totals(self, fetched: Fetched) -> dict[int, SignalTotals]:
        """Per layer index: depth, summed squared signal norms (whole and per unit),
        first non-finite tick."""
        result = {}
        for layer_index in self._layer_names:
            first = fetched.get(("first_nonfinite", layer_index))
            result[layer_index] = SignalTotals(
                depth_index=self._depth.get(layer_index),
                output_squared=fetched.get(("output_sq", layer_index)),
                unit_squared=fetched.get(("unit_sq", layer_index)),
                input_squared=fetched.get(("input_sq", layer_index)),
                first_nonfinite_tick=first if first is not None and first != float("inf") else None,
            )
        return result

    def unavailable(self) -> list[str]:
        """A note when gradients arrived but no layer module ran its own forward."""
        # Without any recorded pass the module tracker says why (compiled code).
        context = self._context
        if context.parameter_gradient_seen and context.recorded_passes and not self._depth:
            return [
                "backward signal, gains and activation sites: no layer module ran its own "
                "forward (a torch.export or fx program inlines its submodules); parameter "
                "statistics only"
            ]
        return []


def _saved_tensors_hooked() -> bool:
    """True inside non-reentrant activation checkpointing (or CPU offloading).

    Its recomputation in backward runs unobserved; a stand-in that requires grad in the
    forward only would change what the region saves, which checkpointing refuses.
    """
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is not None and top(False) is not None


def position_summed(grad: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """dL/d(output) summed over positions, per sample and unit.

    (N, C, H, W, ...) sums the spatial dimensions and (N, T, F) the time dimension
    (channels-first 1-D modules' (N, C, L): the last one), as the activation probe
    defines units. Average pooling over P positions divides each position's gradient
    by P and a wider resolution spreads it over more positions, but their sum is
    unchanged: this signal does not depend on resolution, pooling or sequence length,
    as the total norm (which shrinks by sqrt(P)) and the per-element RMS (by P) do.
    """
    if grad.dim() == 3:
        return grad.sum(dim=2 if channels_first else 1)
    return grad.sum(dim=tuple(range(2, grad.dim())))
