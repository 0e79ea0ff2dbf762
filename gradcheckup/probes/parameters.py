"""Parameter gradients: per-pass norms from tensor hooks on each trainable parameter.

A hook on the parameter (not ``.grad``) sees the gradient of one backward pass before
it is accumulated, so gradient accumulation and ``zero_grad`` habits do not change the
numbers. The hook takes one norm and hands it to the ledger, which accumulates all of
a backward pass's norms at once (``_ledger``). ``check()`` hooks no parameter: its
``torch.autograd.grad`` returns every gradient of its one pass, and the probe measures
them all in fused kernels afterwards (``record_given``).

A parametrized layer (``weight_norm``, ``orthogonal``, ...) gets its gradient norm over
the parametrization's originals, which are what the optimizer updates, and its weight
norm over the weight it computes with (``LayerInfo.current_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradcheckup.probes._accumulators import Fetched, as_list
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet, stepping_aside
from gradcheckup.probes._ledger import LedgerTotals
from gradcheckup.probes._ownership import counts_gradient
from gradcheckup.probes._reduced import ReducedGradients, data_parallel_of, is_sharded
from gradcheckup.probes._tensors import distributed_tensors_loaded, local_part, norm_vector
from gradcheckup.probes.inventory import Inventory


@dataclass(slots=True)
class ParameterTotals:
    """Host-side results for one layer."""

    grad_norm: float | None
    bias_grad_norm: float | None
    weight_norm: float
    passes: int
    nonfinite_passes: int
    params_without_grad: list[str]
    first_nonfinite_tick: float | None = None
    """Ledger tick of the layer's first NaN/inf parameter gradient, if any."""


class ParameterProbe:
    """Per-layer gradient norms from a tensor hook on every trainable parameter.

    Hooks: ``param.register_hook`` on each parameter of each layer, attached once when
    the monitor opens; each records the gradient's norm in the ledger under the
    parameter's slot. At report time it also measures the weight norms, which are read,
    not accumulated.
    """

    def __init__(
        self,
        context: ProbeContext,
        inventory: Inventory,
        given: bool = False,
        data_parallel: nn.Module | None = None,
    ) -> None:
        """Create the probe and reserve one ledger slot per parameter.

        Args:
            context: state shared with the monitor's other probes.
            inventory: the model's layers and their trainable parameters.
            given: hook nothing; the gradients are handed over after the pass
                (``record_given``: ``check()``, whose ``torch.autograd.grad`` returns
                them). Otherwise every parameter is hooked, except a data-parallel
                wrapper's, which are read once reduced (``_reduced``).
            data_parallel: the DDP wrapper around the model, if the model is watched
                from inside it; else the one in the model is found.
        """
        self._data_parallel = data_parallel
        self._context = context
        self._inventory = inventory
        self._given = given
        self._weight_counts: list[int] = []
        self._weight_square_weights: list[float | None] = []
        first = context.ledger.allocate(sum(len(layer.params) for layer in inventory.layers))
        self._slots: dict[int, list[tuple[str, int]]] = {}
        for layer in inventory.layers:
            names = [name for name, _ in layer.params]
            self._slots[layer.index] = [(name, first + offset) for offset, name in enumerate(names)]
            first += len(names)
        # Per layer: its slots, and its bias's slot if it has one.
        self._slot_ids = {
            index: (
                [slot for _, slot in slots],
                next((slot for name, slot in slots if name == "bias"), None),
            )
            for index, slots in self._slots.items()
        }

    def slot_layers(self) -> dict[int, int]:
        """Ledger slot -> layer index, for every parameter slot."""
        return {slot: index for index, slots in self._slots.items() for _, slot in slots}

    def attach(self, hooks: HookSet) -> None:
        """Register one gradient hook per trainable parameter; a data-parallel wrapper's
        parameters (DDP, FSDP2) are read once reduced, after each backward, instead.
        Nothing when the gradients are given."""
        if self._given:
            return
        root = self._inventory.root
        data_parallel = None if root is None else self._data_parallel or data_parallel_of(root)
        synced = set() if data_parallel is None else {id(p) for p in data_parallel.parameters()}
        reduced = []
        for layer in self._inventory.layers:
            for (param_name, param), (_, slot) in zip(
                layer.params, self._slots[layer.index], strict=True
            ):
                if root is not None and (id(param) in synced or is_sharded(param)):
                    reduced.append((slot, param))
                    continue
                hook = self._make_hook(id(layer.module), slot, f"{layer.name}.{param_name}")
                hooks.add(param.register_hook(hook))
        if reduced and root is not None:
            ReducedGradients(self._context, root, reduced, data_parallel).attach(hooks)

    def record_given(
        self,
        gradients: Mapping[int, Sequence[torch.Tensor | None]],
        follows: Mapping[int, int],
    ) -> None:
        """Record one pass's gradients, handed over after it.

        Args:
            gradients: per layer index, its parameters' gradients in inventory order
                (None: the parameter got none).
            follows: per layer index, the ledger slot of its output gradient, which
                places the layer's parameter gradients in backward order.
        """
        entries: list[tuple[int, torch.Tensor]] = []
        anchors: list[int | None] = []
        for layer in self._inventory.layers:
            layer_gradients = gradients.get(layer.index)
            if layer_gradients is None:
                continue
            anchor = follows.get(layer.index)
            for (_, slot), gradient in zip(self._slots[layer.index], layer_gradients, strict=True):
                if gradient is not None:
                    entries.append((slot, gradient))
                    anchors.append(anchor)
        if entries:
            self._context.parameter_gradient_seen = True
            self._context.ledger.record_given(entries, anchors)

    def _make_hook(self, module_key: int, slot: int, label: str) -> Callable[[torch.Tensor], None]:
        context = self._context
        ledger = context.ledger
        where = f"gradient hook of {label!r}"

        # Guarded inline rather than by ErrorLog.guarded: it runs for every parameter of
        # every backward, and returns at once on the passes between measured ones.
        def observe(grad: torch.Tensor) -> None:
            if not context.active:
                return None
            if not context.sampled:
                if context.counts_backward_passes and counts_gradient(module_key, context):
                    ledger.note_backward()  # only to count this backward pass
                return None
            try:
                # Gradients of another monitor's pass or of an empty batch are not ours;
                # inside a torch.func transform they are wrapped and must not be kept.
                if stepping_aside() or not counts_gradient(module_key, context):
                    return None
                context.parameter_gradient_seen = True
                if torch.is_grad_enabled():  # backward(create_graph=True)
                    with torch.no_grad():
                        ledger.record(slot, grad)
                else:
                    ledger.record(slot, grad)
            except Exception as error:
                context.errors.record(where, error)
            return None  # a returned tensor would replace the gradient

        return observe

    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Each weight tensor's norm, measured now in fused kernels (gradients are in
        the ledger); of a sharded weight (FSDP2), this rank's shard's."""
        with torch.no_grad():
            per_layer = [layer.current_weights() for layer in self._inventory.layers]
            self._weight_counts = [len(weights) for weights in per_layer]
            weights = [weight for layer_weights in per_layer for weight in layer_weights]
            if distributed_tensors_loaded():
                parts = [local_part(weight) for weight in weights]
                self._weight_square_weights = [part.square_weight for part in parts]
                weights = [part.tensor for part in parts]
            else:
                self._weight_square_weights = [None] * len(weights)
            return {"weight_norms": norm_vector(weights)}

    def share(self, fetched: Fetched, since_start: bool = True) -> list[tuple[float, float]]:
        """Per layer: the squared norms of its whole weights, and of its weight shards."""
        weight_norms = as_list(fetched["weight_norms"])
        shared: list[tuple[float, float]] = []
        position = 0
        for count in self._weight_counts:
            whole = sharded = 0.0
            for offset in range(position, position + count):
                square_weight = self._weight_square_weights[offset]
                if square_weight is None:
                    whole += weight_norms[offset] ** 2
                else:
                    sharded += weight_norms[offset] ** 2 * square_weight
            shared.append((whole, sharded))
            position += count
        return shared

    def combined_totals(
        self, shares: Sequence[list[tuple[float, float]]], ledger: LedgerTotals
    ) -> dict[int, ParameterTotals]:
        """Per layer index: root-mean-square gradient norms over the passes, and counts.

        Whole weights are the same on every rank (the first rank's are taken); the
        squares of the ranks' weight shards add up to the whole weight's.
        """
        appearances, squared, nonfinite = ledger.appearances, ledger.squared, ledger.nonfinite
        first_ticks = ledger.first_tick
        result: dict[int, ParameterTotals] = {}
        one_rank = len(shares) == 1
        for position, layer in enumerate(self._inventory.layers):
            whole, sharded = shares[0][position]
            if not one_rank:
                sharded = math.fsum(share[position][1] for share in shares)
            slots = self._slots[layer.index]
            ids, bias = self._slot_ids[layer.index]
            fires = [appearances[slot] for slot in ids]
            passes = max(fires)
            bias_fires = appearances[bias] if bias is not None else 0
            first_tick = min(map(first_ticks.__getitem__, ids))
            result[layer.index] = ParameterTotals(
                grad_norm=math.sqrt(math.fsum(map(squared.__getitem__, ids)) / passes)
                if passes
                else None,
                bias_grad_norm=math.sqrt(squared[bias] / bias_fires)
                if bias is not None and bias_fires
                else None,
                weight_norm=math.sqrt(whole + sharded),
                passes=passes,
                nonfinite_passes=max(map(nonfinite.__getitem__, ids)),
                params_without_grad=[
                    name for (name, _), count in zip(slots, fires, strict=True) if count == 0
                ]
                if 0 in fires
                else [],
                first_nonfinite_tick=None if math.isinf(first_tick) else first_tick,
            )
        return result

    def start_window(self) -> None:
        """Nothing of its own to fold: its gradient norms are in the ledger."""

    def unavailable(self) -> list[str]:
        """Nothing: a parameter hook cannot be refused."""
        return []
