"""Parameter gradients: per-pass norms from tensor hooks on each trainable parameter.

A hook on the parameter (not ``.grad``) sees the gradient of one backward pass before
it is accumulated, so gradient accumulation and ``zero_grad`` habits do not change the
numbers, and ``torch.autograd.grad`` (used by ``check``) triggers it without touching
``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._tensors import squared_norm
from gradcheckup.probes.inventory import Inventory


@dataclass(frozen=True)
class ParameterTotals:
    """Host-side results for one layer."""

    grad_norm: float | None
    bias_grad_norm: float | None
    passes: int
    nonfinite_passes: int
    params_without_grad: list[str]


class ParameterProbe:
    def __init__(self, context: ProbeContext, inventory: Inventory) -> None:
        self._context = context
        self._inventory = inventory
        self._fires: dict[tuple[int, str], int] = {}

    def attach(self, hooks: HookSet) -> None:
        for layer in self._inventory.layers:
            for param_name, param in layer.params:
                hook = self._make_hook(layer.index, f"{layer.name}.{param_name}", param_name)
                hooks.add(param.register_hook(hook))

    def _make_hook(
        self, layer_index: int, label: str, param_name: str
    ) -> Callable[[torch.Tensor], None]:
        context = self._context
        key = (layer_index, param_name)

        def observe(grad: torch.Tensor) -> None:
            if not context.active:
                return
            self._fires[key] = self._fires.get(key, 0) + 1
            with torch.no_grad():
                squared = squared_norm(grad)
                context.add_per_layer(("grad_sq", layer_index), squared)
                if param_name == "bias":
                    context.sums.add(("bias_sq", layer_index), squared)
                not_finite = context.note_nonfinite(layer_index, squared)
                context.sums.add(("nonfinite", layer_index, param_name), not_finite)

        guarded = context.errors.guarded(f"gradient hook of {label!r}", observe)

        def hook(grad: torch.Tensor) -> None:
            guarded(grad)

        return hook

    def totals(self, fetched: dict) -> dict[int, ParameterTotals]:
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
                passes=passes,
                nonfinite_passes=max(nonfinite),
                params_without_grad=[
                    name for (name, _), count in zip(layer.params, fires, strict=True) if count == 0
                ],
            )
        return result
