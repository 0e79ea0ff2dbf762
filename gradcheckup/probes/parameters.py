"""Parameter gradients: per-pass norms from tensor hooks on each trainable parameter.

A hook on the parameter (not ``.grad``) sees the gradient of one backward pass before
it is accumulated, so gradient accumulation and ``zero_grad`` habits do not change the
numbers, and ``torch.autograd.grad`` (used by ``check``) triggers it without touching
``.grad``.

A parametrized layer (``weight_norm``, ``orthogonal``, ...) gets its gradient norm over
the parametrization's originals, which are what the optimizer updates, and its weight
norm over the weight it computes with (``LayerInfo.current_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import torch

from gradcheckup.probes._accumulators import Accumulators, Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet, stepping_aside
from gradcheckup.probes._ownership import counts_gradient
from gradcheckup.probes._tensors import squared_norm, total_squared_norm
from gradcheckup.probes.inventory import Inventory, LayerInfo


@dataclass(frozen=True)
class ParameterTotals:
    """Host-side results for one layer."""

    grad_norm: float | None
    bias_grad_norm: float | None
    weight_norm: float
    passes: int
    nonfinite_passes: int
    params_without_grad: list[str]


class ParameterProbe:
    """Per-layer gradient norms from a tensor hook on every trainable parameter.

    Hooks: ``param.register_hook`` on each parameter of each layer, attached once when
    the monitor opens. Accumulates, per backward pass: the squared gradient norm of the
    layer and of its bias, whether the gradient was non-finite (and the tick when it
    first was, in the shared context), and how often each parameter's hook fired. At
    report time it also measures the weight norms, which are read, not accumulated.
    """

    def __init__(self, context: ProbeContext, inventory: Inventory) -> None:
        """Create the probe; ``attach`` registers its hooks.

        Args:
            context: state shared with the monitor's other probes.
            inventory: the model's layers and their trainable parameters.
        """
        self._context = context
        self._inventory = inventory
        self._sums = Accumulators()
        self._fires: dict[tuple[int, str], int] = {}

    def attach(self, hooks: HookSet) -> None:
        """Register one gradient hook per trainable parameter."""
        for layer in self._inventory.layers:
            for param_name, param in layer.params:
                hook = self._make_hook(layer, f"{layer.name}.{param_name}", param_name)
                hooks.add(param.register_hook(hook))

    def _make_hook(
        self, layer: LayerInfo, label: str, param_name: str
    ) -> Callable[[torch.Tensor], None]:
        context = self._context
        sums = self._sums
        layer_index = layer.index
        module_key = id(layer.module)
        key = (layer_index, param_name)

        def observe(grad: torch.Tensor) -> None:
            # Gradients of another monitor's pass or of an empty batch are not ours;
            # inside a torch.func transform they are wrapped and must not be kept.
            if not context.active or stepping_aside() or not counts_gradient(module_key, context):
                return
            self._fires[key] = self._fires.get(key, 0) + 1
            context.parameter_gradient_seen = True
            with torch.no_grad():
                squared = squared_norm(grad)
                sums.add(("grad_sq", layer_index), squared)
                context.note_layer_gradient(layer_index, squared)
                if param_name == "bias":
                    sums.add(("bias_sq", layer_index), squared)
                not_finite = context.note_nonfinite(layer_index, squared)
                sums.add(("nonfinite", layer_index, param_name), not_finite)

        return context.errors.guarded(f"gradient hook of {label!r}", observe)

    def device_values(self) -> Mapping[Hashable, torch.Tensor]:
        """The gradient sums, and each layer's squared weight norm measured now."""
        weight_squared = {
            ("weight_sq", layer.index): total_squared_norm(layer.current_weights())
            for layer in self._inventory.layers
        }
        return {**self._sums.values, **weight_squared}

    def totals(self, fetched: Fetched) -> dict[int, ParameterTotals]:
        """Per layer index: root-mean-square gradient norms over the passes, and counts."""
        result: dict[int, ParameterTotals] = {}
        for layer in self._inventory.layers:
            fires = [self._fires.get((layer.index, name), 0) for name, _ in layer.params]
            passes = max(fires)
            squared_sum = fetched.get(("grad_sq", layer.index))
            grad_norm = (
                None if squared_sum is None or passes == 0 else (squared_sum / passes) ** 0.5
            )
            nonfinite = [
                int(fetched.get(("nonfinite", layer.index, name), 0.0)) for name, _ in layer.params
            ]
            bias_fires = self._fires.get((layer.index, "bias"), 0)
            bias_sum = fetched.get(("bias_sq", layer.index))
            result[layer.index] = ParameterTotals(
                grad_norm=grad_norm,
                bias_grad_norm=None
                if bias_sum is None or not bias_fires
                else (bias_sum / bias_fires) ** 0.5,
                weight_norm=math.sqrt(fetched[("weight_sq", layer.index)]),
                passes=passes,
                nonfinite_passes=max(nonfinite),
                params_without_grad=[
                    name for (name, _), count in zip(layer.params, fires, strict=True) if count == 0
                ],
            )
        return result

    def unavailable(self) -> list[str]:
        """Nothing: a parameter hook cannot be refused."""
        return []
