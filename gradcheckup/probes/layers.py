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

import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradcheckup.probes._accumulators import Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import ClearedOnRemove, HookSet, add_gradient_hook
from gradcheckup.probes._ledger import LedgerTotals
from gradcheckup.probes._tensors import carries_gradient, iter_tensors
from gradcheckup.probes.activations import CHANNELS_FIRST_1D
from gradcheckup.probes.inventory import Inventory

_SLOT_KINDS = ("output", "unit", "input")
_UNIT, _INPUT = _SLOT_KINDS.index("unit"), _SLOT_KINDS.index("input")


@dataclass(slots=True)
class SignalTotals:
    """Host-side results for one layer."""

    depth_index: int | None
    output_squared: float | None
    unit_squared: float | None
    """Squared norm of dL/d(output) summed over positions per sample and unit, summed
    over passes (see ``position_summed``)."""
    input_squared: float | None
    first_nonfinite_tick: float | None
    passes: int = 0
    """Backward passes in which dL/d(output) was measured (sampled passes only)."""
    input_passes: int = 0
    """Backward passes in which dL/d(input) was measured."""


class LayerSignalProbe:
    """The backward signal through each layer: dL/d(output) and dL/d(input).

    Hooks: none of its own; the module tracker calls ``before_forward`` and
    ``after_forward`` around each layer's forward in the passes it observes, and these
    register tensor hooks on the layer's (aliased) inputs and its outputs, once per
    call. The hooks record in the ledger, per layer, the norms of both gradients and of
    the output gradient summed over positions (the signal per unit); the probe keeps
    the order in which layers first ran forward (their depth).
    """

    def __init__(
        self, context: ProbeContext, inventory: Inventory, node_hooks: bool = False
    ) -> None:
        """Create the probe and each layer's gradient hooks (registered per call).

        Args:
            context: state shared with the monitor's other probes.
            inventory: the model's layers.
            node_hooks: read both gradients of a single-op layer (``nn.Linear`` on a
                matrix, a convolution on a batch) from one hook on its autograd node,
                without an identity view (``check()``; see ``_single_op_layers``).
        """
        self._context = context
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
        first = context.ledger.allocate(len(_SLOT_KINDS) * len(self._layer_names))
        # Each layer's three ledger slots are consecutive, in _SLOT_KINDS order: its
        # output slot, then +1 (per unit), +2 (input).
        self._output_slots = {
            index: first + position * len(_SLOT_KINDS)
            for position, index in enumerate(self._layer_names)
        }
        # Built once per layer, when it first runs: the hooks do not depend on the call,
        # and forward runs often.
        self._hooks: dict[tuple[int, str], Callable[[torch.Tensor], None]] = {}
        self._single_op = _single_op_layers(inventory) if node_hooks else {}
        # Per single-op layer running now: its input, whose edge its node hook reads.
        self._direct_inputs: dict[int, torch.Tensor] = {}

    def attach(self, hooks: HookSet) -> None:
        """Nothing to attach (the module tracker drives this probe); its hooks, which
        refer to it, are forgotten when the monitor closes: no reference cycle outlives
        the monitor's hooks, and nothing waits for the collector."""
        hooks.add(ClearedOnRemove(self._hooks, self._direct_inputs))

    def before_forward(
        self, layer_index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Swap gradient-carrying input tensors for hooked identity views.

        Returns:
            The new ``(args, kwargs)``, or None when no input carries gradient.
        """
        if not kwargs and len(args) == 1:
            # The common call, one gradient-carrying tensor, without the general walk.
            value = args[0]
            if isinstance(value, torch.Tensor) and carries_gradient(value):
                if self._reads_node(layer_index, value):
                    self._direct_inputs[layer_index] = value
                    return None
                view = value.view_as(value)
                add_gradient_hook(view, self._hook(layer_index, "input_sq"))
                return (view,), kwargs
        aliases: dict[int, torch.Tensor] = {}
        hook = self._hook(layer_index, "input_sq")

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
                add_gradient_hook(view, hook)
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
        direct_input = self._direct_inputs.pop(layer_index, None) if self._single_op else None
        if direct_input is not None and self._hook_node(layer_index, direct_input, output):
            return
        hook = self._hook(layer_index, "output_sq")
        if isinstance(output, torch.Tensor):
            if carries_gradient(output):
                add_gradient_hook(output, hook)
            return
        seen: set[int] = set()
        for tensor in iter_tensors(output):
            if carries_gradient(tensor) and id(tensor) not in seen:
                seen.add(id(tensor))
                add_gradient_hook(tensor, hook)

    def _reads_node(self, layer_index: int, value: torch.Tensor) -> bool:
        """Whether the layer's one op will consume ``value`` directly, so that its
        autograd node's hook can read both gradients (``_single_op_layers``)."""
        expected_dim = self._single_op.get(layer_index)
        return (
            expected_dim is not None
            and value.dim() == expected_dim
            and type(value) is torch.Tensor
            and value.grad_fn is not None
            and not _autocasting(value.device.type)
        )

    def _hook_node(self, layer_index: int, layer_input: torch.Tensor, output: Any) -> bool:
        """Hook the autograd node that made ``output`` from ``layer_input``: its grad
        outputs are dL/d(output), and the grad input along the edge to the layer's input
        is dL/d(input) through this layer alone (a residual path's share is not on it).

        Returns:
            False when the output was not made by one node consuming the input once;
            the output is then hooked as usual, and this pass's input gradient is not
            measured.
        """
        if not isinstance(output, torch.Tensor) or not carries_gradient(output):
            return False
        node = output.grad_fn
        register = getattr(node, "register_hook", None)
        if register is None:
            return False
        source = (layer_input.grad_fn, layer_input.output_nr)
        edges = [
            position
            for position, (following, number) in enumerate(node.next_functions)
            if following is source[0] and number == source[1]
        ]
        if len(edges) != 1:
            return False
        output_slot = self._output_slots[layer_index]
        register(
            functools.partial(
                self._observe_node,
                layer_index,
                output_slot,
                output_slot + _UNIT,
                output_slot + _INPUT,
                edges[0],
                output.output_nr,
            )
        )
        return True

    def _observe_node(
        self,
        layer_index: int,
        output_slot: int,
        unit_slot: int,
        input_slot: int,
        edge: int,
        output_number: int,
        grad_inputs: Sequence[torch.Tensor | None],
        grad_outputs: Sequence[torch.Tensor | None],
    ) -> None:
        """Records dL/d(output), then dL/d(input), of a single-op layer (backward order)."""
        if not self._context.active:
            return
        try:
            _without_graph(
                self._record_node,
                layer_index,
                output_slot,
                unit_slot,
                input_slot,
                grad_inputs[edge],
                grad_outputs[output_number],
            )
        except Exception as error:
            self._hook_failed("node", layer_index, error)

    def _record_node(
        self,
        layer_index: int,
        output_slot: int,
        unit_slot: int,
        input_slot: int,
        grad_input: torch.Tensor | None,
        grad_output: torch.Tensor | None,
    ) -> None:
        if grad_output is not None:
            self._record_output(layer_index, output_slot, unit_slot, grad_output)
        if grad_input is not None:
            self._context.ledger.record(input_slot, grad_input)

    def output_slot_layers(self) -> dict[int, int]:
        """Ledger slot of each layer's dL/d(output) norm -> layer index."""
        return {slot: index for index, slot in self._output_slots.items()}

    def output_slots(self) -> dict[int, int]:
        """Layer index -> ledger slot of its dL/d(output) norm."""
        return dict(self._output_slots)

    def _hook(self, layer_index: int, key: str) -> Callable[[torch.Tensor], None]:
        """The gradient hook of the layer's inputs ('input_sq') or outputs ('output_sq'),
        made when the layer first runs (a partial: no closure per layer)."""
        hook = self._hooks.get((layer_index, key))
        if hook is None:
            output_slot = self._output_slots[layer_index]
            if key == "input_sq":
                hook = functools.partial(self._observe_input, layer_index, output_slot + _INPUT)
            else:
                hook = functools.partial(
                    self._observe_output, layer_index, output_slot, output_slot + _UNIT
                )
            self._hooks[(layer_index, key)] = hook
        return hook

    # Guarded inline rather than by ErrorLog.guarded: these run for every layer of every
    # backward. Each returns None: a returned tensor would replace the gradient.
    def _observe_input(self, layer_index: int, slot: int, grad: torch.Tensor) -> None:
        """Records dL/d(input) of the layer in the ledger."""
        if not self._context.active:
            return
        try:
            _without_graph(self._context.ledger.record, slot, grad)
        except Exception as error:
            self._hook_failed("input", layer_index, error)

    def _observe_output(
        self, layer_index: int, output_slot: int, unit_slot: int, grad: torch.Tensor
    ) -> None:
        """Records dL/d(output) of the layer, whole and summed over positions."""
        if not self._context.active:
            return
        try:
            _without_graph(self._record_output, layer_index, output_slot, unit_slot, grad)
        except Exception as error:
            self._hook_failed("output", layer_index, error)

    def _record_output(
        self, layer_index: int, output_slot: int, unit_slot: int, grad: torch.Tensor
    ) -> None:
        ledger = self._context.ledger
        if grad.dim() > 2:
            channels_first = layer_index in self._channels_first
            ledger.record(output_slot, grad)
            ledger.record(unit_slot, position_summed(grad, channels_first))
        else:
            ledger.record_twice(output_slot, unit_slot, grad)

    def _hook_failed(self, kind: str, layer_index: int, error: Exception) -> None:
        where = f"{kind} gradient hook of {self._layer_names[layer_index]!r}"
        self._context.errors.record(where, error)

    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Nothing of its own: the gradient norms are in the ledger."""
        return {}

    def share(self, fetched: Fetched, since_start: bool = True) -> None:
        """Nothing of its own: the gradient norms are in the ledger."""
        return None

    def combined_totals(
        self, shares: Sequence[None], ledger: LedgerTotals
    ) -> dict[int, SignalTotals]:
        """Per layer index: depth, summed squared signal norms (whole and per unit),
        first non-finite tick of dL/d(output)."""
        result = {}
        for layer_index in self._layer_names:
            output = self._output_slots[layer_index]
            unit, inputs = output + _UNIT, output + _INPUT
            passes = ledger.appearances[output]
            input_passes = ledger.appearances[inputs]
            first = ledger.first_tick[output]
            result[layer_index] = SignalTotals(
                depth_index=self._depth.get(layer_index),
                output_squared=ledger.squared[output] if passes else None,
                unit_squared=ledger.squared[unit] if passes else None,
                input_squared=ledger.squared[inputs] if input_passes else None,
                first_nonfinite_tick=None if math.isinf(first) else first,
                passes=passes,
                input_passes=input_passes,
            )
        return result

    def start_window(self) -> None:
        """Nothing of its own to fold: its gradient norms are in the ledger."""

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


_CONVOLUTIONS = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}


def _single_op_layers(inventory: Inventory) -> dict[int, int]:
    """Layers whose forward is one autograd op on their input, by index: the number of
    dimensions the input has when it is (``nn.Linear``: 2, its addmm or mm; a
    convolution with zero padding: a batch).

    Only torch's own forward, on a module that no parametrization computes a weight
    for: then the output's node consumes the input directly (``_hook_node`` checks it).
    """
    single_op: dict[int, int] = {}
    for layer in inventory.layers:
        module = layer.module
        cls = type(module)
        if (
            isinstance(module, torch.jit.ScriptModule)  # its class refuses a forward lookup
            or "forward" in vars(module)
            or "parametrizations" in module._modules
        ):
            continue
        if cls.forward is nn.Linear.forward:
            single_op[layer.index] = 2
        for conv, dims in _CONVOLUTIONS.items():
            if cls.forward is conv.forward and getattr(module, "padding_mode", None) == "zeros":
                single_op[layer.index] = dims
    return single_op


def _without_graph(record: Callable[..., None], *args: Any) -> None:
    """``record(*args)`` recording no graph; the no_grad block only where backward
    records one (``create_graph=True``): it would cost every hook of every backward."""
    if torch.is_grad_enabled():
        with torch.no_grad():
            record(*args)
    else:
        record(*args)


def _autocasting(device_type: str) -> bool:
    """Whether autocast is on for the device: it casts a layer's input (a node of its
    own) before the layer's op."""
    return torch.is_autocast_enabled(device_type)


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
