"""Follows the model's forward: which module is running, and when a pass starts and ends.

One forward pre-hook and one forward hook per module feed the layer and activation
probes. The post hook is registered with ``always_call=True`` so the module stack (and
the activation mode) unwind even when forward raises.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradcheckup.probes._accumulators import Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes.activations import CHANNELS_FIRST_1D, ActivationProbe
from gradcheckup.probes.inventory import Inventory, is_inside_backward
from gradcheckup.probes.layers import LayerSignalProbe
from gradcheckup.probes.temporal import TemporalProbe

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh)


class _Frame:
    __slots__ = ("calls", "is_activation", "name", "site")

    def __init__(self, name: str, is_activation: bool, site: str) -> None:
        self.name = name
        self.is_activation = is_activation
        self.site = site  # an activation module's site name for this call
        self.calls: dict[str, int] = {}


@dataclass(frozen=True)
class PassTotals:
    """Host-side results of the tracker."""

    passes: int
    """Forward passes recorded (outermost module calls with gradients enabled)."""


class ModuleTracker:
    """Follows every forward: which module runs, and where a pass starts and ends.

    Hooks: a forward pre-hook and an ``always_call`` forward hook on every module,
    attached once when the monitor opens. Keeps a host-side stack of running modules,
    counts passes, and drives the layer, activation and time-step probes around each
    module's forward. Nothing is accumulated on device.
    """

    def __init__(
        self,
        context: ProbeContext,
        inventory: Inventory,
        layer_probe: LayerSignalProbe,
        activation_probe: ActivationProbe,
        temporal_probe: TemporalProbe,
        include_no_grad_passes: bool,
    ) -> None:
        """Create the tracker over the probes it drives.

        Args:
            context: state shared with the monitor's probes.
            inventory: every module's name, and the layers among them.
            layer_probe: told about each layer's inputs and outputs.
            activation_probe: observes activations while a pass is recorded.
            temporal_probe: told about recurrent modules' inputs.
            include_no_grad_passes: ``Config.include_no_grad_passes``.
        """
        self._context = context
        self._inventory = inventory
        self._layer_probe = layer_probe
        self._activation_probe = activation_probe
        self._temporal_probe = temporal_probe
        self._include_no_grad = include_no_grad_passes
        self._layer_index = {id(layer.module): layer.index for layer in inventory.layers}
        self._stack: list[_Frame] = []
        self._activation_calls: dict[str, int] = {}  # per pass
        self._recording = False
        self._passes = 0
        self._unhookable: list[str] = []

    def attach(self, hooks: HookSet) -> None:
        """Hook every module's forward; modules that refuse hooks are noted."""
        for module, name in self._inventory.module_names.items():
            try:
                hooks.add(
                    module.register_forward_pre_hook(
                        self._make_pre_hook(module, name), with_kwargs=True
                    )
                )
                hooks.add(
                    module.register_forward_hook(
                        self._make_post_hook(module, name), always_call=True
                    )
                )
            except RuntimeError as error:  # TorchScript modules accept no Python hooks
                # Spelled here, not with report.display_name: probes never import report.
                self._unhookable.append(f"{name or '(model)'} ({type(module).__name__}): {error}")

    def device_values(self) -> Mapping[Hashable, torch.Tensor]:
        """Nothing: the tracker counts on the host."""
        return {}

    def totals(self, fetched: Fetched) -> PassTotals:
        """The number of recorded passes."""
        return PassTotals(passes=self._passes)

    def unavailable(self) -> list[str]:
        """Modules that accept no Python hooks (TorchScript), with torch's reason."""
        return [
            f"module hooks (backward signal, activations) for {entry}" for entry in self._unhookable
        ]

    # -- frames -------------------------------------------------------------------------
    def next_call(self, function: str) -> tuple[str, str]:
        """Owner name and site name for an activation call.

        An activation module (nn.ReLU at 'features.1') is its own site, 'features.1'; one
        instance reused after several layers ('act') gives 'act', 'act#2', ... by call
        order within the pass, as its units belong to different layers. A functional call
        inside another module's forward is '<owner>:<function>', with '#2', '#3' for later
        calls of the same function in the same forward.
        """
        frame = self._stack[-1]
        index = frame.calls.get(function, 0)
        frame.calls[function] = index + 1
        if frame.is_activation and index == 0:
            return frame.name, frame.site
        base = f"{frame.name}:{function}" if frame.name else function
        return frame.name, base if index == 0 else f"{base}#{index + 1}"

    def _make_pre_hook(self, module: nn.Module, name: str) -> Callable[..., Any]:
        expected = weakref.ref(module)
        layer_index = self._layer_index.get(id(module))
        is_activation = isinstance(module, _ACTIVATION_MODULES)
        is_recurrent = self._temporal_probe.wants(name, module)

        def pre_hook(hooked: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # Hooks travel with copy.deepcopy (EMA/SWA copies): a copy must not feed us.
            if hooked is not expected() or not self._context.active:
                return None
            if not self._stack:
                self._start_pass()
            site = name
            if is_activation:
                call = self._activation_calls.get(name, 0)
                self._activation_calls[name] = call + 1
                site = name if call == 0 else f"{name}#{call + 1}"
            self._stack.append(_Frame(name, is_activation, site))
            if not self._recording or (layer_index is None and not is_recurrent):
                return None
            replaced = None
            try:
                # Time profile first: it may give plain-data input a gradient, which
                # the layer probe can then measure as well.
                if is_recurrent:
                    replaced = self._temporal_probe.before_forward(name, hooked, args, kwargs)
                    if replaced is not None:
                        args, kwargs = replaced
                if layer_index is not None:
                    replaced = (
                        self._layer_probe.before_forward(layer_index, args, kwargs) or replaced
                    )
            except Exception as error:
                self._context.errors.record(f"forward pre-hook of {name!r}", error)
            return replaced

        return pre_hook

    def _make_post_hook(self, module: nn.Module, name: str) -> Callable[..., Any]:
        expected = weakref.ref(module)
        layer_index = self._layer_index.get(id(module))
        channels_first = isinstance(module, CHANNELS_FIRST_1D)

        def observe_output(output: Any) -> None:
            if self._recording and output is not None:
                if layer_index is not None:
                    self._layer_probe.after_forward(layer_index, output)
                if channels_first:
                    self._activation_probe.mark_channels_first(output)

        guarded_observe = self._context.errors.guarded(f"forward hook of {name!r}", observe_output)

        def post_hook(hooked: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if hooked is not expected() or not self._stack:
                return
            try:
                guarded_observe(output)
            finally:
                # The stack unwinds even when forward raised (always_call=True).
                self._stack.pop()
                if not self._stack:
                    self._end_pass()

        return post_hook

    # -- passes -------------------------------------------------------------------------
    def _start_pass(self) -> None:
        self._recording = (
            torch.is_grad_enabled() or self._include_no_grad
        ) and not is_inside_backward()
        self._activation_calls.clear()
        if self._recording:
            self._passes += 1
            self._temporal_probe.start_pass()
            self._activation_probe.start_forward(self.next_call)

    def _end_pass(self) -> None:
        if self._recording:
            self._activation_probe.end_forward()
        self._recording = False

    def abandon(self) -> None:
        """Unwind after an interrupted forward (called when the monitor closes)."""
        if self._stack:
            self._stack.clear()
            self._end_pass()
