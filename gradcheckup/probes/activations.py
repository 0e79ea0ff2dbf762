"""Dead ReLU units and saturated sigmoid/tanh outputs, for modules and functional calls.

A ``TorchFunctionMode`` is active only while a watched model runs forward. It sees
``F.relu``, ``torch.relu``, ``x.relu()``, the in-place forms and ``nn.ReLU`` (which calls
``F.relu``) alike, each exactly once per call, so modules and functional calls are
covered by one mechanism and attributed to the enclosing module.

What a unit is (the 'dead' judgement is per unit):
- (N, F) and (N, T, F): a feature (last dimension);
- (N, C, ...) with 4 or more dimensions: a channel (dimension 1);
- 3-D tensors are ambiguous: a channel (dimension 1) when the tensor comes from a
  channels-first 1-D module (Conv1d, BatchNorm1d, pooling 1d, ...), directly or through
  shape-preserving elementwise ops; otherwise a feature (last dimension);
- 1-D tensors: a single unit.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gradcheckup.probes._accumulators import Accumulators, Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet, stepping_aside


class ActivationSpec(NamedTuple):
    """What the probe needs to know about one activation function."""

    function: str
    family: Literal["relu", "saturating"]
    centre: float
    """The centre of the output range."""
    half_range: float
    """Half the width of the output range; saturated is near either end."""


_RELU = ActivationSpec("relu", "relu", 0.0, 0.0)
_RELU6 = ActivationSpec("relu6", "relu", 0.0, 0.0)
_SIGMOID = ActivationSpec("sigmoid", "saturating", 0.5, 0.5)
_TANH = ActivationSpec("tanh", "saturating", 0.0, 1.0)


def _activation_table() -> dict[Callable[..., Any], ActivationSpec]:
    candidates = [
        (F, "relu", _RELU),
        (F, "relu_", _RELU),
        (torch, "relu", _RELU),
        (torch, "relu_", _RELU),
        (torch.Tensor, "relu", _RELU),
        (torch.Tensor, "relu_", _RELU),
        (F, "relu6", _RELU6),
        (torch, "sigmoid", _SIGMOID),
        (torch, "sigmoid_", _SIGMOID),
        (torch.Tensor, "sigmoid", _SIGMOID),
        (torch.Tensor, "sigmoid_", _SIGMOID),
        (torch, "tanh", _TANH),
        (torch, "tanh_", _TANH),
        (torch.Tensor, "tanh", _TANH),
        (torch.Tensor, "tanh_", _TANH),
    ]
    return {getattr(owner, name): spec for owner, name, spec in candidates if hasattr(owner, name)}


_ACTIVATIONS = _activation_table()

CHANNELS_FIRST_1D: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.GroupNorm,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveAvgPool1d,
)

# Same shape in and out, but the dimensions mean something else afterwards.
_LAYOUT_CHANGING = {
    getattr(torch.Tensor, name)
    for name in ("transpose", "permute", "swapaxes", "swapdims", "movedim", "t")
    if hasattr(torch.Tensor, name)
} | {
    getattr(torch, name)
    for name in ("transpose", "permute", "swapaxes", "swapdims", "movedim", "t")
    if hasattr(torch, name)
}

FEATURES_LAST = "features (last dim)"
CHANNELS_DIM1 = "channels (dim 1)"
SCALAR = "scalar"


@dataclass
class SiteRecord:
    """Host-side bookkeeping of one activation site (device sums live in the context)."""

    owner: str
    function: str
    family: Literal["relu", "saturating"]
    calls: int = 0
    units: int | None = None
    unit_axis: str | None = None
    samples_per_unit: int = 0
    elements: int = 0
    shape_changes: int = 0


@dataclass(frozen=True)
class SiteTotals:
    """Host-side results for one activation site."""

    owner: str
    function: str
    calls: int
    units: int | None
    unit_axis: str | None
    samples_per_unit: int
    dead_fraction: float | None
    """ReLU family: units never positive in any call; None for other functions."""
    saturated_fraction: float | None
    """Sigmoid/tanh: outputs within the margin of either end; None for ReLU."""


class ActivationProbe:
    """Dead ReLU units and saturated sigmoid/tanh outputs, per activation site.

    Hooks: a ``TorchFunctionMode`` entered by the module tracker for the length of each
    recorded forward pass (``start_forward``/``end_forward``); it sees every activation
    call, module or functional. Accumulates per site on device: for the ReLU family,
    which units were ever positive; for sigmoid/tanh, how many outputs were saturated.
    Host-side ``SiteRecord`` keeps the counts of calls, units and elements.
    """

    def __init__(self, context: ProbeContext, saturation_margin: float) -> None:
        """Create the probe; the tracker starts and ends its observation.

        Args:
            context: state shared with the monitor's other probes.
            saturation_margin: ``Config.saturation_margin``, the fraction of the output
                range at either end that counts as saturated.
        """
        self._context = context
        self._margin = saturation_margin
        self._sums = Accumulators()
        self._sites: dict[str, SiteRecord] = {}
        self._channels_first: dict[int, weakref.ref[torch.Tensor]] = {}
        self._mode = _ActivationMode(self)
        self._name_next_call: Callable[[str], tuple[str, str]] | None = None

    def attach(self, hooks: HookSet) -> None:
        """Nothing to attach: the module tracker enters the mode around each pass."""

    # -- lifecycle, driven by the module tracker ------------------------------------
    def start_forward(self, next_call: Callable[[str], tuple[str, str]]) -> None:
        """Observe activations until ``end_forward``.

        Args:
            next_call: names an activation call: function name -> (owner, site name).
        """
        self._name_next_call = next_call
        self._channels_first.clear()
        self._mode.__enter__()

    def end_forward(self) -> None:
        """Stop observing (the pass ended or was abandoned)."""
        self._mode.__exit__(None, None, None)
        self._channels_first.clear()
        self._name_next_call = None

    def mark_channels_first(self, output: Any) -> None:
        """Remember a 3-d output as channels-first (it comes from a 1-d conv, norm, pool)."""
        if isinstance(output, torch.Tensor) and output.dim() == 3:
            self._channels_first[id(output)] = weakref.ref(output)

    # -- called from the mode ---------------------------------------------------------
    def _is_channels_first(self, tensor: Any) -> bool:
        if not isinstance(tensor, torch.Tensor):
            return False
        ref = self._channels_first.get(id(tensor))
        return ref is not None and ref() is tensor

    def propagate_layout(
        self, func: Callable[..., Any], args: tuple[Any, ...], result: Any
    ) -> None:
        """Carry the channels-first mark through shape-preserving elementwise ops."""
        if not isinstance(result, torch.Tensor) or result.dim() != 3 or func in _LAYOUT_CHANGING:
            return
        for value in args[:2]:
            if self._is_channels_first(value) and value.shape == result.shape:
                self.mark_channels_first(result)
                return

    @property
    def tracks_layouts(self) -> bool:
        """True while some tensor of this pass is marked channels-first."""
        return bool(self._channels_first)

    def observe(self, spec: ActivationSpec, source: Any, output: Any) -> None:
        """Account one activation call's output to its site."""
        function, family, centre, half_range = spec
        if (
            not isinstance(output, torch.Tensor)
            or not output.is_floating_point()
            or output.dim() == 0
            or output.numel() == 0  # an empty batch says nothing about dead units
            or self._name_next_call is None
        ):
            return
        owner, name = self._name_next_call(function)
        site = self._sites.get(name)
        if site is None:
            site = self._sites[name] = SiteRecord(owner=owner, function=function, family=family)

        unit_dim, unit_axis = self._unit_dim(output, source)
        units = output.shape[unit_dim] if unit_dim is not None else 1
        with torch.no_grad():
            if family == "relu":
                reduce_dims = [d for d in range(output.dim()) if d != unit_dim]
                active = output.amax(dim=reduce_dims) > 0 if reduce_dims else output > 0
                if not self._sums.logical_or(("ever_active", name), active.reshape(-1)):
                    site.shape_changes += 1
                    return
            else:
                saturated = (output.detach() - centre).abs() > half_range * (1 - 2 * self._margin)
                self._sums.add(("saturated", name), saturated.sum())
        site.calls += 1
        site.units = units
        site.unit_axis = unit_axis
        site.samples_per_unit += output.numel() // max(units, 1)
        site.elements += output.numel()

    def record_error(self, where: str, error: BaseException) -> None:
        """Record a failure inside the activation mode for the report."""
        self._context.errors.record(where, error)

    def device_values(self) -> Mapping[Hashable, torch.Tensor]:
        """Per site: the ever-active mask (ReLU) or the saturated count (sigmoid/tanh)."""
        return self._sums.values

    def totals(self, fetched: Fetched) -> dict[str, SiteTotals]:
        """Per site name, in order of first call: the dead and saturated fractions."""
        return {name: self._site_totals(name, site, fetched) for name, site in self._sites.items()}

    def _site_totals(self, name: str, site: SiteRecord, fetched: Fetched) -> SiteTotals:
        dead_fraction = saturated_fraction = None
        if site.family == "relu":
            ever_active = fetched.get(("ever_active", name))
            if isinstance(ever_active, list) and ever_active:
                dead_fraction = 1.0 - sum(ever_active) / len(ever_active)
        else:
            saturated = fetched.get(("saturated", name))
            if isinstance(saturated, float) and site.elements:
                saturated_fraction = saturated / site.elements
        return SiteTotals(
            owner=site.owner,
            function=site.function,
            calls=site.calls,
            units=site.units,
            unit_axis=site.unit_axis,
            samples_per_unit=site.samples_per_unit,
            dead_fraction=dead_fraction,
            saturated_fraction=saturated_fraction,
        )

    def unavailable(self) -> list[str]:
        """Sites whose calls with a different number of units were skipped."""
        return [
            f"activation site {name!r}: calls with a different number of units were skipped"
            for name, site in self._sites.items()
            if site.shape_changes
        ]

    def _unit_dim(self, output: torch.Tensor, source: Any) -> tuple[int | None, str]:
        if output.dim() == 1:
            return None, SCALAR
        if output.dim() == 2:
            return 1, FEATURES_LAST
        if output.dim() == 3:
            if self._is_channels_first(source) or self._is_channels_first(output):
                return 1, CHANNELS_DIM1
            return 2, FEATURES_LAST
        return 1, CHANNELS_DIM1


class _ActivationMode(TorchFunctionMode):
    """Calls every torch function unchanged and shows activations to the probe."""

    def __init__(self, probe: ActivationProbe) -> None:
        super().__init__()
        self._probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        result = func(*args, **(kwargs or {}))
        probe = self._probe
        spec = _ACTIVATIONS.get(func)
        # A torch.func transform or a compiled region inside the forward: its tensors
        # must not be kept (they would escape the transform or break the trace).
        if (spec is None and not probe.tracks_layouts) or stepping_aside():
            return result
        try:
            if spec is not None:
                probe.observe(spec, args[0] if args else None, result)
            if probe.tracks_layouts:
                probe.propagate_layout(func, args, result)
        except Exception as error:
            probe.record_error(f"activation probe ({getattr(func, '__name__', func)})", error)
        return result
