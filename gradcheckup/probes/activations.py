"""Dead units and saturated outputs of activations, for modules and functional calls.

A ``TorchFunctionMode`` is active only while a watched model runs forward. It sees
``F.relu``, ``torch.relu``, ``x.relu()``, the in-place forms and ``nn.ReLU`` (which calls
``F.relu``) alike, each exactly once per call, so modules and functional calls are
covered by one mechanism and attributed to the enclosing module.

Monitored: the activations whose derivative is exactly 0, or vanishes, over a whole region.
- 'relu' family, judged per unit (dead = never in the active region on any sample):
  ReLU (active y > 0); ReLU6 (0 < y < 6: ``nn.ReLU6`` and ``F.relu6``, and any Hardtanh
  clamped to [0, 6], which is the same function); Hardswish (y != 0, flat for x <= -3).
- 'saturating' family, judged on the fraction of all outputs that are flat: sigmoid and
  tanh (within ``saturation_margin`` of the range ends, where the derivative is nearly 0);
  Hardtanh (bounds from the call's min_val/max_val) and Hardsigmoid (0 and 1) exactly at
  their bounds, where the derivative is exactly 0.
Not monitored: GELU, SiLU/Swish, ELU/SELU/CELU, LeakyReLU/PReLU, Mish, Softplus: their
derivative is 0 at no point or at isolated points only (GELU/SiLU/Mish have one minimum),
or only approaches 0 as x -> -inf without reaching it, so no region of inputs passes
exactly no gradient.

What a unit is (the 'dead' judgement is per unit):
- (N, F) and (N, T, F): a feature (last dimension);
- (N, C, ...) with 4 or more dimensions: a channel (dimension 1);
- 3-D tensors are ambiguous: a channel (dimension 1) when the tensor comes from a
  channels-first 1-D module (Conv1d, BatchNorm1d, pooling 1d, ...), directly or through
  shape-preserving elementwise ops; otherwise a feature (last dimension);
- 1-D tensors: a single unit.

Outputs that are not finite (NaN, inf) are flagged per site: the unit rules do not judge
such a site, whose 'dead' units are only the NaN's downstream trace.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _pop_mode, _push_mode
from torch.overrides import _get_current_function_mode as current_function_mode

from gradcheckup.probes._accumulators import Accumulators, Fetched, as_list
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet, stepping_aside
from gradcheckup.probes._ledger import LedgerTotals
from gradcheckup.probes._ranks import largest, largest_each

Family = Literal["relu", "saturating"]
ActiveRegion = Literal["positive", "inside", "nonzero"]


class ActivationSpec(NamedTuple):
    """What the probe needs to know about one activation function (one call, for Hardtanh)."""

    function: str
    family: Family
    lower: float
    """The lower end of the output range."""
    upper: float
    """The upper end of the output range (inf for ReLU and Hardswish)."""
    clamped: bool = False
    """The output is clamped at its ends (ReLU6, Hardtanh, Hardsigmoid), where the
    derivative is exactly 0: saturated means exactly at an end. Otherwise (sigmoid, tanh)
    the ends are only approached: saturated means within ``saturation_margin`` of one."""
    active: ActiveRegion = "positive"
    """'relu' family: where a unit passes gradient. 'positive': y > 0; 'inside':
    lower < y < upper; 'nonzero': Hardswish, input x > -3, read from the input when the
    call was not in place, else as y != 0 (which takes an input of exactly 0 for flat)."""


_RELU = ActivationSpec("relu", "relu", 0.0, math.inf)
_RELU6 = ActivationSpec("relu6", "relu", 0.0, 6.0, clamped=True, active="inside")
# Hardswish(x) = x * relu6(x + 3) / 6: exactly 0 (and flat) for x <= -3; negative but
# with a non-zero derivative on (-3, 0), so 'active' there.
_HARDSWISH = ActivationSpec("hardswish", "relu", -0.375, math.inf, active="nonzero")
_SIGMOID = ActivationSpec("sigmoid", "saturating", 0.0, 1.0)
_TANH = ActivationSpec("tanh", "saturating", -1.0, 1.0)
_HARDSIGMOID = ActivationSpec("hardsigmoid", "saturating", 0.0, 1.0, clamped=True)

SpecOfCall = Callable[[tuple[Any, ...], Mapping[str, Any]], ActivationSpec | None]
"""Reads an activation's spec from the call's arguments (Hardtanh's bounds)."""


@functools.lru_cache(maxsize=64)
def _hardtanh_with_bounds(lower: float, upper: float) -> ActivationSpec | None:
    if (lower, upper) == (0.0, 6.0):  # nn.ReLU6 calls F.hardtanh(x, 0.0, 6.0)
        return _RELU6
    if not lower < upper:
        return None
    return ActivationSpec("hardtanh", "saturating", lower, upper, clamped=True)


def _hardtanh_spec(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> ActivationSpec | None:
    """Hardtanh's spec from ``(input, min_val=-1.0, max_val=1.0)``, positional or keyword."""
    lower = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    upper = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    try:
        return _hardtanh_with_bounds(float(lower), float(upper))
    except (TypeError, ValueError):  # a tensor bound, or something else unexpected
        return None


def _activation_table() -> dict[Callable[..., Any], ActivationSpec | SpecOfCall]:
    """Every callable the function mode sees for a monitored activation (torch 2.13).

    Modules call the functional form: nn.ReLU6 and nn.Hardtanh call F.hardtanh,
    nn.Hardsigmoid F.hardsigmoid, nn.Hardswish F.hardswish, their in-place forms too
    (``inplace=True`` is an argument; F.hardtanh_ is torch._C._nn.hardtanh_).
    """
    nn_ops = torch._C._nn
    candidates: list[tuple[Any, str, ActivationSpec | SpecOfCall]] = [
        *[(owner, name, _RELU) for owner in (F, torch, torch.Tensor) for name in ("relu", "relu_")],
        (F, "relu6", _RELU6),
        (nn_ops, "relu6", _RELU6),
        (F, "hardtanh", _hardtanh_spec),
        (F, "hardtanh_", _hardtanh_spec),
        (nn_ops, "hardtanh", _hardtanh_spec),
        (nn_ops, "hardtanh_", _hardtanh_spec),
        (F, "hardswish", _HARDSWISH),
        (nn_ops, "hardswish", _HARDSWISH),
        (nn_ops, "hardswish_", _HARDSWISH),
        (F, "hardsigmoid", _HARDSIGMOID),
        (nn_ops, "hardsigmoid", _HARDSIGMOID),
        (nn_ops, "hardsigmoid_", _HARDSIGMOID),
        *[
            (owner, name, spec)
            for owner in (torch, torch.Tensor)
            for stem, spec in (("sigmoid", _SIGMOID), ("tanh", _TANH))
            for name in (stem, f"{stem}_")
        ],
    ]
    return {getattr(owner, name): spec for owner, name, spec in candidates if hasattr(owner, name)}


_ACTIVATIONS = _activation_table()


def spec_of_call(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> ActivationSpec | None:
    """The activation spec of one torch function call, or None if it is not monitored."""
    entry = _ACTIVATIONS.get(func)
    if entry is None or isinstance(entry, ActivationSpec):
        return entry
    return entry(args, kwargs)


def _module_spec_table() -> dict[Callable[..., Any], Callable[[nn.Module], ActivationSpec | None]]:
    """torch's activation modules, by their ``forward``: the spec of the one call it
    makes (Hardtanh's, and so ReLU6's, from the module's bounds)."""

    def hardtanh(module: nn.Module) -> ActivationSpec | None:
        return _hardtanh_spec((None, module.min_val, module.max_val), {})

    fixed = {
        nn.ReLU: _RELU,
        nn.Sigmoid: _SIGMOID,
        nn.Tanh: _TANH,
        nn.Hardswish: _HARDSWISH,
        nn.Hardsigmoid: _HARDSIGMOID,
    }
    table: dict[Callable[..., Any], Callable[[nn.Module], ActivationSpec | None]] = {
        module_type.forward: (lambda module, spec=spec: spec) for module_type, spec in fixed.items()
    }
    table[nn.Hardtanh.forward] = hardtanh  # nn.ReLU6 too: it keeps Hardtanh's forward
    return table


_MODULE_SPECS = _module_spec_table()

# What torch.overrides' _pop_mode/_push_mode call, without their Python frames: the
# mode steps off and on around every quiet module.
pop_function_mode = getattr(torch._C, "_pop_torch_function_stack", _pop_mode)
push_function_mode = getattr(torch._C, "_push_on_torch_function_stack", _push_mode)

# torch's modules whose forward makes no call the probe monitors (nor any call whose
# layout it tracks): while they run, the mode can step off torch's mode stack.
_QUIET_FORWARDS = frozenset(
    module_type.forward
    for module_type in (
        nn.Linear,
        nn.Bilinear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.Embedding,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.Dropout,
        nn.Identity,
        nn.Flatten,
    )
)


def runs_no_monitored_call(module: nn.Module) -> bool:
    """True for a module whose forward is one of torch's own, which calls either no
    monitored activation or exactly one (an activation module, ``module_activation``).

    A subclass with its own ``forward``, a forward patched onto the instance, or a
    parametrized module (whose parametrization runs inside the forward) is not.
    """
    forward = type(module).forward
    return (
        (forward in _QUIET_FORWARDS or forward in _MODULE_SPECS)
        and "forward" not in vars(module)
        and "parametrizations" not in module._modules
    )


def module_activation(
    module: nn.Module,
) -> Callable[[nn.Module], ActivationSpec | None] | None:
    """For a torch activation module running its own forward, the function that gives
    the activation it computes (called with the module at each call: ``nn.Hardtanh``'s
    bounds are its attributes); else None."""
    return None if "forward" in vars(module) else _MODULE_SPECS.get(type(module).forward)


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


@dataclass(slots=True)
class SiteRecord:
    """Host-side bookkeeping of one activation site (device sums live in the context)."""

    owner: str
    function: str
    family: Family
    calls: int = 0
    units: int | None = None
    unit_axis: str | None = None
    samples_per_unit: int = 0
    elements: int = 0
    shape_changes: int = 0

    def combined(self, later: SiteRecord) -> SiteRecord:
        """This window's counts and a later one's, as one record."""
        return SiteRecord(
            owner=self.owner,
            function=self.function,
            family=self.family,
            calls=self.calls + later.calls,
            units=self.units if self.units is not None else later.units,
            unit_axis=self.unit_axis if self.unit_axis is not None else later.unit_axis,
            samples_per_unit=self.samples_per_unit + later.samples_per_unit,
            elements=self.elements + later.elements,
            shape_changes=self.shape_changes + later.shape_changes,
        )

    def emptied(self) -> SiteRecord:
        """The same site with no calls counted (a new window)."""
        return SiteRecord(owner=self.owner, function=self.function, family=self.family)


@dataclass(slots=True)
class SiteTotals:
    """Host-side results for one activation site."""

    owner: str
    function: str
    calls: int
    units: int | None
    unit_axis: str | None
    samples_per_unit: int
    dead_fraction: float | None
    """ReLU family: units never in their active region in any call; None otherwise."""
    saturated_fraction: float | None
    """Saturating family: outputs at (or within the margin of) either end; None otherwise."""
    nonfinite: bool = False
    """Some output was NaN or inf: the fractions describe the NaN, not the units."""


@dataclass(slots=True)
class SiteShare:
    """One rank's counts and fetched values of one activation site."""

    name: str
    record: SiteRecord
    activity: list[float] | None
    """ReLU family: per unit, the largest activity score (dead if <= 0)."""
    saturated: float | None
    """Saturating family: saturated outputs counted."""
    peak: float | None
    """Saturating family: the largest output (NaN if any was NaN)."""

    @staticmethod
    def combined(sites: Sequence[SiteShare]) -> SiteShare:
        """Several ranks' shares of one site as one: counts and saturated outputs add
        up, activity scores and peaks take the largest (a NaN stays)."""
        first = sites[0]
        if len(sites) == 1:
            return first
        record = first.record
        for site in sites[1:]:
            record = record.combined(site.record)
        activities = [site.activity for site in sites if site.activity is not None]
        if first.activity is not None:
            # Ranks that saw another unit count skipped those calls (shape_changes).
            activities = [vector for vector in activities if len(vector) == len(first.activity)]
        saturated = [site.saturated for site in sites if site.saturated is not None]
        peaks = [site.peak for site in sites if site.peak is not None]
        return SiteShare(
            name=first.name,
            record=record,
            activity=largest_each(activities) if activities else None,
            saturated=sum(saturated) if saturated else None,
            peak=largest(peaks) if peaks else None,
        )


def _site_totals(site: SiteShare) -> SiteTotals:
    """The dead and saturated fractions of a site's (combined) share."""
    record = site.record
    dead_fraction = saturated_fraction = None
    nonfinite = False
    if record.family == "relu":
        activity = site.activity
        if activity:
            # 0.0 >= score is score <= 0 (False for NaN), without a Python-level loop.
            dead_fraction = sum(map((0.0).__ge__, activity)) / len(activity)
            nonfinite = not all(map(math.isfinite, activity))
    else:
        if site.saturated is not None and record.elements:
            saturated_fraction = site.saturated / record.elements
        nonfinite = site.peak is not None and not math.isfinite(site.peak)
    return SiteTotals(
        owner=record.owner,
        function=record.function,
        calls=record.calls,
        units=record.units,
        unit_axis=record.unit_axis,
        samples_per_unit=record.samples_per_unit,
        dead_fraction=dead_fraction,
        saturated_fraction=saturated_fraction,
        nonfinite=nonfinite,
    )


class ActivationProbe:
    """Dead units and saturated outputs, per activation site.

    Hooks: a ``TorchFunctionMode`` entered by the module tracker for the length of each
    recorded forward pass (``start_forward``/``end_forward``); it sees every activation
    call, module or functional. Accumulates per site on device: for the ReLU family
    (ReLU, ReLU6, Hardswish), which units were ever active; for the saturating family
    (sigmoid, tanh, Hardtanh, Hardsigmoid), how many outputs were saturated; for both,
    whether any output was not finite. Host-side ``SiteRecord`` keeps the counts of
    calls, units and elements.
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
        self._activity = Accumulators()  # site name -> its units' activity scores
        self._sums = Accumulators()  # (kind, site name) -> saturated counts, peaks
        # Per device, the sites whose scores travel together in device_values' order.
        self._activity_layout: list[list[tuple[str, int]]] = []
        self._sites: dict[str, SiteRecord] = {}
        self._earlier_sites: dict[str, SiteRecord] = {}
        self._channels_first: dict[int, weakref.ref[torch.Tensor]] = {}
        self._mode = _ActivationMode()
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
        self._mode.probe = self
        self._mode.__enter__()

    def end_forward(self) -> None:
        """Stop observing (the pass ended or was abandoned)."""
        self._mode.__exit__(None, None, None)
        self._mode.probe = None  # no cycle between the two outside a pass
        self._channels_first.clear()
        self._name_next_call = None

    def paused(self) -> _Paused:
        """A context in which our mode does not see ops: the probes' own work inside a
        forward (views, hooks) is not the model's, and each op the mode sees costs a
        Python round trip."""
        return _Paused(self._mode)

    def step_off(self) -> bool:
        """Take the mode off torch's mode stack while a module runs that makes no
        monitored call (``runs_no_monitored_call``): every op of it would otherwise
        take a Python round trip through the mode for nothing.

        Returns:
            False, changing nothing, when the mode is not on top of the stack, or when
            some tensor of the pass is marked channels-first (the mode then sees every
            op, to carry the mark).
        """
        if self._channels_first or current_function_mode() is not self._mode:
            return False
        pop_function_mode()
        return True

    def step_on(self) -> None:
        """Put the mode back after ``step_off``."""
        push_function_mode(self._mode)

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
        if (
            not isinstance(output, torch.Tensor)
            or not output.is_floating_point()
            or self._name_next_call is None
        ):
            return
        dim = output.dim()
        elements = output.numel()
        if dim == 0 or elements == 0:  # an empty batch says nothing about dead units
            return
        owner, name = self._name_next_call(spec.function)
        site = self._sites.get(name)
        if site is None:
            site = self._sites[name] = SiteRecord(owner, spec.function, spec.family)

        unit_dim, unit_axis = self._unit_dim(output, source)
        units = output.shape[unit_dim] if unit_dim is not None else 1
        # Everything below computes from detached tensors, so no graph is recorded
        # without the cost of a no_grad block at every activation call.
        values = output.detach()
        if spec.family == "relu":
            reduce_dims = _reduced_dims(dim, unit_dim)
            score = _unit_activity(values, source, reduce_dims, spec)
            if score.dim() != 1:  # one unit: a 0-d score
                score = score.reshape(1)
            if not self._activity.maximum(name, score, fresh=True):
                site.shape_changes += 1
                return
        else:
            # Every saturating output is bounded, so the maximum is finite unless some
            # output is NaN.
            self._sums.maximum(("peak", name), values.amax(), fresh=True)
            self._sums.add(("saturated", name), _flat_outputs(values, spec, self._margin))
        site.calls += 1
        site.units = units
        site.unit_axis = unit_axis
        site.samples_per_unit += elements // max(units, 1)
        site.elements += elements

    def record_error(self, where: str, error: BaseException) -> None:
        """Record a failure inside the activation mode for the report."""
        self._context.errors.record(where, error)

    def start_window(self) -> None:
        """Fold this window's sums and counts into the earlier windows'."""
        self._sums.start_window()
        self._activity.start_window()
        for name, site in self._sites.items():
            earlier = self._earlier_sites.get(name)
            self._earlier_sites[name] = site if earlier is None else earlier.combined(site)
            self._sites[name] = site.emptied()

    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Per site: the units' activity scores (ReLU family) or the saturated count and
        the largest output (saturating family), of all windows or of the current one.

        The activity scores of a device's sites travel as one vector: thousands of sites
        cost one value to fetch, not thousands.
        """
        values = dict(self._sums.since_start() if since_start else self._sums.values)
        activity = self._activity.since_start() if since_start else self._activity.values
        by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
        for name, scores in activity.items():
            by_device.setdefault(scores.device, []).append((name, scores))
        self._activity_layout = []
        for position, sites in enumerate(by_device.values()):
            values[("activity", position)] = torch.cat([scores for _, scores in sites])
            self._activity_layout.append([(name, scores.numel()) for name, scores in sites])
        return values

    def share(self, fetched: Fetched, since_start: bool = True) -> list[SiteShare]:
        """Per site, in order of first call: its counts and fetched values."""
        activity_of: dict[str, list[float]] = {}
        for position, layout in enumerate(self._activity_layout):
            scores = as_list(fetched[("activity", position)])
            offset = 0
            for name, size in layout:
                activity_of[name] = scores[offset : offset + size]
                offset += size
        shared = []
        for name, site in self._sites.items():
            earlier = self._earlier_sites.get(name) if since_start else None
            record = site if earlier is None else earlier.combined(site)
            if since_start or record.calls or record.shape_changes:
                activity = activity_of.get(name)
                saturated = fetched.get(("saturated", name))
                peak = fetched.get(("peak", name))
                shared.append(
                    SiteShare(
                        name,
                        record,
                        activity if isinstance(activity, list) else None,
                        saturated if isinstance(saturated, float) else None,
                        peak if isinstance(peak, float) else None,
                    )
                )
        return shared

    def combined_totals(
        self, shares: Sequence[list[SiteShare]], ledger: LedgerTotals
    ) -> dict[str, SiteTotals]:
        """Per site name, in order of first call: the dead and saturated fractions over
        every rank's calls (a unit is dead only if it is dead on every rank)."""
        if len(shares) == 1:  # one process: nothing to combine
            return {site.name: _site_totals(site) for site in shares[0]}
        by_name: dict[str, list[SiteShare]] = {}
        for share in shares:
            for site in share:
                by_name.setdefault(site.name, []).append(site)
        return {name: _site_totals(SiteShare.combined(sites)) for name, sites in by_name.items()}

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


@functools.cache
def _reduced_dims(dim: int, unit_dim: int | None) -> list[int]:
    """Every dimension of a ``dim``-d output but its unit dimension (the list is shared:
    never change it)."""
    return [d for d in range(dim) if d != unit_dim]


def _unit_activity(
    values: torch.Tensor, source: Any, reduce_dims: list[int], spec: ActivationSpec
) -> torch.Tensor:
    """Per unit, a score that is > 0 exactly when the unit was active on some sample, and
    not finite when any of its outputs was NaN or +inf (ReLU-family outputs are bounded
    below). Scores of several calls combine by ``maximum``, which keeps NaN.

    One ``amax`` per unit, 20-30x cheaper than ``(values > 0).any(dims)``.
    """

    # Each amax makes a new tensor: ``reduce_dims`` is never empty.
    if spec.active == "inside":
        # (y - lower) * (upper - y) > 0 exactly where lower < y < upper; outputs are
        # clamped to [lower, upper], so the product cannot overflow.
        return (values - spec.lower).mul_(spec.upper - values).amax(dim=reduce_dims)
    if spec.active == "nonzero":
        if _is_separate_input(source, values):
            # Hardswish is flat exactly for x <= -3 (at x = 0 it is 0 with slope 1/2).
            return source.detach().amax(dim=reduce_dims).add_(3.0)
        return torch.maximum(values.amax(dim=reduce_dims), values.amin(dim=reduce_dims).neg())
    return values.amax(dim=reduce_dims)


def _is_separate_input(source: Any, output: torch.Tensor) -> bool:
    """The call's input, still holding its values (not overwritten by an in-place call)."""
    return (
        isinstance(source, torch.Tensor)
        and source.shape == output.shape
        and source.data_ptr() != output.data_ptr()
    )


def _flat_outputs(values: torch.Tensor, spec: ActivationSpec, margin: float) -> torch.Tensor:
    """How many outputs are saturated: exactly at a clamped end, or within ``margin`` of
    the range of an end that is only approached (sigmoid, tanh)."""
    if spec.clamped:
        flat = (values <= spec.lower) | (values >= spec.upper)
    else:
        centre = (spec.lower + spec.upper) / 2
        half_range = (spec.upper - spec.lower) / 2
        flat = (values - centre).abs() > half_range * (1 - 2 * margin)
    return flat.sum()


class _Paused:
    """Takes our mode off the top of torch's mode stack, and puts it back."""

    __slots__ = ("_mode", "_popped")

    def __init__(self, mode: TorchFunctionMode) -> None:
        self._mode = mode
        self._popped = False

    def __enter__(self) -> None:
        # Only ours, and only from the top: a mode the user entered inside the forward
        # stays where it is (and then sees our ops, as it would without the pause).
        self._popped = current_function_mode() is self._mode
        if self._popped:
            pop_function_mode()

    def __exit__(self, *exc_info: object) -> None:
        if self._popped:
            push_function_mode(self._mode)


class _ActivationMode(TorchFunctionMode):
    """Calls every torch function unchanged and shows activations to the probe."""

    def __init__(self) -> None:
        super().__init__()
        self.probe: ActivationProbe | None = None
        """The probe shown the activations, while it observes a forward pass."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        probe = self.probe
        monitored = func in _ACTIVATIONS
        # A torch.func transform or a compiled region inside the forward: its tensors
        # must not be kept (they would escape the transform or break the trace).
        if probe is None or (not monitored and not probe.tracks_layouts) or stepping_aside():
            return result
        try:
            spec = spec_of_call(func, args, kwargs) if monitored else None
            if spec is not None:
                probe.observe(spec, args[0] if args else None, result)
            if probe.tracks_layouts:
                probe.propagate_layout(func, args, result)
        except Exception as error:
            probe.record_error(f"activation probe ({getattr(func, '__name__', func)})", error)
        return result
