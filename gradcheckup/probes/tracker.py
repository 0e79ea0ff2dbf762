"""Follows the model's forward: which module is running, and when a pass starts and ends.

One forward pre-hook and one forward hook per module feed the layer and activation
probes. The post hook is registered with ``always_call=True`` so the module stack (and
the activation mode) unwind even when forward raises. Every module gets the same two
hook functions, under one id per monitor (``ForwardHooks``); what they need to know
about a module (its name, layer index, kind) is found once and kept in a table by
module, so that opening a monitor on 10,000 modules makes no closure per module.

The hooks never get in the user's way: they do nothing while dynamo compiles the
model or a ``torch.func`` transform runs it (``stepping_aside``), they are left out of
copies and pickles of the model (``HiddenFromCopies``), and a pass that belongs to
another open monitor, or has an empty batch, is not recorded (``_ownership``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradcheckup.probes._accumulators import Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._copies import HiddenFromCopies
from gradcheckup.probes._hooks import ForwardHooks, HookSet, stepping_aside
from gradcheckup.probes._ledger import LedgerTotals
from gradcheckup.probes._ownership import (
    claim,
    close_owner,
    drop_claims,
    may_start_pass,
    open_owner,
    others_open,
)
from gradcheckup.probes._site_names import names_sites_after_it, numbered, site_base_name
from gradcheckup.probes._tensors import iter_tensors
from gradcheckup.probes.activations import (
    CHANNELS_FIRST_1D,
    ActivationProbe,
    ActivationSpec,
    module_activation,
    runs_no_monitored_call,
)
from gradcheckup.probes.inventory import (
    Inventory,
    compiler_loaded,
    is_compiled,
    is_inside_backward,
    unhooked_wrappers,
)
from gradcheckup.probes.layers import LayerSignalProbe
from gradcheckup.probes.temporal import TemporalProbe

_NOTHING_TO_PAUSE = contextlib.nullcontext()

# Activation modules are their own sites (nn.ReLU6 is an nn.Hardtanh).
_ACTIVATION_MODULES = (nn.ReLU, nn.Hardtanh, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid)


class _Frame:
    """A running module of a measured pass (what names its activation sites)."""

    __slots__ = ("is_activation", "name")

    def __init__(self, name: str, is_activation: bool) -> None:
        self.name = name
        self.is_activation = is_activation


_UNOBSERVED = _Frame("", False)
"""The one frame pushed for every module of a pass that is not measured."""


@dataclass(slots=True)
class _Watched:
    """What the hooks need to know about one module of the model, found once."""

    frame: _Frame
    """Pushed for each observed call: its name names sites."""
    layer_index: int | None
    is_recurrent: bool
    measures_signal: bool
    names_sites: bool
    channels_first: bool
    quiet: bool
    """torch's own forward, with no monitored call in it (or only its own activation):
    the activation mode steps off while it runs."""
    activation: Callable[[nn.Module], ActivationSpec | None] | None
    """For a torch activation module, what gives the activation its one call computes."""


@dataclass(frozen=True)
class PassTotals:
    """Host-side results of the tracker."""

    passes: int
    """Forward passes recorded (outermost module calls with gradients enabled and a
    non-empty batch)."""


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
        private: bool = False,
        forward_probes: Collection[str] = ("signal", "activations", "time"),
    ) -> None:
        """Create the tracker over the probes it drives.

        Args:
            context: state shared with the monitor's probes.
            inventory: every module's name, and the layers among them.
            layer_probe: told about each layer's inputs and outputs.
            activation_probe: observes activations while a pass is recorded.
            temporal_probe: told about recurrent modules' inputs.
            include_no_grad_passes: ``Config.include_no_grad_passes``.
            private: other monitors start no pass on this model's modules while this
                one is open (``check()``'s pass is invisible to open watches).
            forward_probes: ``Config.forward_probes``, the probes it drives at all.
        """
        self._context = context
        self._inventory = inventory
        self._layer_probe = layer_probe
        self._activation_probe = activation_probe
        self._temporal_probe = temporal_probe
        self._include_no_grad = include_no_grad_passes
        self._private = private
        self._layer_index = {id(layer.module): layer.index for layer in inventory.layers}
        self._unhooked_wrappers, self._root = unhooked_wrappers(next(iter(inventory.module_names)))
        # Layers whose forward the hooks saw (in a measured pass): the rest ran compiled.
        self._layers_seen: set[int] = set()
        self._stack: list[_Frame] = []
        # Stack depth of the quiet module the activation mode stepped off for, if any.
        self._stepped_off_at: int | None = None
        self._site_calls: dict[str, int] = {}  # per pass, by site base name
        self._last_layer: str | None = None  # per pass: what sites are named after
        self._recording = False
        # True in the recorded passes that the forward-pass probes observe (sampled).
        self._observing = False
        self._signal = "signal" in forward_probes
        self._activations = "activations" in forward_probes
        self._time = "time" in forward_probes
        # While another monitor is open, a pass with gradients enabled claims the layers
        # it runs, so that their parameter gradients count for this monitor only, and
        # only if it records.
        self._claiming = False
        self._claimed = False
        self._window_start = 0
        self._unhookable: list[str] = []
        self._root_hooked = False
        # id(module) -> its constants, for the modules whose hooks are attached.
        self._watched: dict[int, _Watched] = {}
        # Module class -> (activation module, channels-first 1-d module).
        self._kinds: dict[type, tuple[bool, bool]] = {}

    # -- PassOwner ------------------------------------------------------------------------
    @property
    def root(self) -> nn.Module:
        """The module whose call starts a pass: the model the monitor was opened on, or
        the model inside its ``torch.compile`` or DDP wrapper (``unhooked_wrappers``)."""
        return self._root

    @property
    def private(self) -> bool:
        """True if other monitors pause on this model's modules while it is open."""
        return self._private

    @property
    def in_pass(self) -> bool:
        """True while one of this tracker's passes runs."""
        return self._context.in_pass

    @property
    def sees_passes(self) -> bool:
        """False when the model itself refused hooks (TorchScript): no pass can be seen."""
        return self._root_hooked

    def contains(self, module: nn.Module) -> bool:
        """True if ``module`` is one of the model's modules."""
        return module in self._inventory.module_names

    def attach(self, hooks: HookSet) -> None:
        """Hook every module's forward; modules that refuse hooks are noted.

        Without forward-pass probes nothing is hooked (the cheapest watch): the context
        counts passes by backward pass instead. Nor are the wrappers whose hooks would
        run around compiled code, or around a DDP wrapper's collectives
        (``unhooked_wrappers``).
        """
        if not (self._signal or self._activations or self._time) and not self._private:
            self._context.count_backward_passes()
            open_owner(self)
            hooks.add(_Ownership(self, self._context))
            return
        # One pair of hook functions for every module, which finds what it needs to know
        # about the module in a table: no closures per module. Plain functions, not
        # bound methods: a class's own __deepcopy__ copying the hook dicts must not
        # copy the tracker.
        forward_hooks = ForwardHooks(*self._hook_functions())
        hooks.add(forward_hooks)
        hidden = HiddenFromCopies()
        hooks.add(hidden)
        for module, name in self._inventory.module_names.items():
            if module in self._unhooked_wrappers:
                continue
            try:
                hook_ids = forward_hooks.attach(module)
            except RuntimeError as error:  # TorchScript modules accept no Python hooks
                # Spelled here, not with report.display_name: probes never import report.
                self._unhookable.append(f"{name or '(model)'} ({type(module).__name__}): {error}")
                continue
            self._watched[id(module)] = self._watched_module(module, name)
            self._root_hooked = self._root_hooked or module is self._root
            hidden.add(module, hook_ids)
        open_owner(self)
        hooks.add(_Ownership(self, self._context))

    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Nothing: the tracker counts on the host."""
        return {}

    def share(self, fetched: Fetched, since_start: bool = True) -> int:
        """The number of recorded passes (forward, or backward without forward probes),
        since the start or in the current window."""
        passes = self._context.recorded_passes
        return passes if since_start else passes - self._window_start

    def combined_totals(self, shares: Sequence[int], ledger: LedgerTotals) -> PassTotals:
        """Every rank's passes are passes of the job: they add up."""
        return PassTotals(passes=sum(shares))

    def start_window(self) -> None:
        """Passes from now on belong to a new window."""
        self._window_start = self._context.recorded_passes

    def unavailable(self) -> list[str]:
        """Modules that accept no Python hooks (TorchScript), with torch's reason, and
        forward passes that ran where the hooks could not see them."""
        notes = [
            f"module hooks (backward signal, activations) for {entry}" for entry in self._unhookable
        ]
        switched_off = [
            description
            for enabled, description in (
                (self._signal, "backward signal per layer (depth profile, gains)"),
                (self._activations, "dead and saturated units"),
                (self._time, "gradient through time"),
            )
            if not enabled
        ]
        if switched_off:
            notes.append(
                f"{', '.join(switched_off)}: switched off by Config.forward_probes "
                "(findings that need them cannot appear)"
            )
        return [*notes, *self._compiled_code_notes()]

    def _compiled_code_notes(self) -> list[str]:
        """Where the model ran as compiled code, which no module hook sees: all of it (no
        forward pass was seen), or compiled submodules none of whose layers was seen."""
        context = self._context
        if not (self._root_hooked and context.parameter_gradient_seen):
            return []
        probes = "forward-pass probes (backward signal, gains, activation sites, time steps)"
        if not context.recorded_passes:
            return [
                f"{probes}: parameters received gradients but no forward pass was seen; the "
                "model ran as compiled code (torch.compile, whose tracing the hooks step "
                "aside from, or a model compiled before the watch opened); parameter "
                "statistics only (gradient and weight norms, optimizer steps)"
            ]
        unseen: dict[str, None] = {}
        compiled = self._inventory.module_names if compiler_loaded() else {}
        for module, name in compiled.items():
            if not is_compiled(module):
                continue
            inside = (self._layer_index.get(id(child)) for child in module.modules())
            layers = {index for index in inside if index is not None}
            if layers and self._layers_seen.isdisjoint(layers):
                unseen[name or "(model)"] = None
        if not unseen:
            return []
        return [
            f"{probes} inside {', '.join(unseen)}: compiled with torch.compile, whose code "
            "runs no module hooks; parameter statistics only for the layers there"
        ]

    # -- frames -------------------------------------------------------------------------
    def next_call(self, function: str) -> tuple[str, str]:
        """Owner name and site name for an activation call: ``<layer>/<function>`` after
        the layer that began last in this pass (``probes/_site_names.py``)."""
        frame = self._stack[-1]
        base = site_base_name(
            function, self._last_layer, frame.name if frame.is_activation else None, frame.name
        )
        earlier = self._site_calls.get(base, 0)
        self._site_calls[base] = earlier + 1
        return frame.name, numbered(base, earlier)

    def _watched_module(self, module: nn.Module, name: str) -> _Watched:
        layer_index = self._layer_index.get(id(module))
        cls = type(module)
        kind = self._kinds.get(cls)
        if kind is None:
            kind = self._kinds[cls] = (
                issubclass(cls, _ACTIVATION_MODULES),
                self._activations and issubclass(cls, CHANNELS_FIRST_1D),
            )
        is_activation, channels_first = kind
        return _Watched(
            frame=_Frame(name, is_activation),
            layer_index=layer_index,
            is_recurrent=self._time and self._temporal_probe.wants(name, module),
            measures_signal=self._signal and layer_index is not None,
            names_sites=names_sites_after_it(module, name),
            channels_first=channels_first,
            quiet=self._activations and runs_no_monitored_call(module),
            activation=module_activation(module) if is_activation else None,
        )

    def _hook_functions(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The forward pre-hook and forward hook that every module gets."""
        watched_modules = self._watched

        def pre_hook(hooked: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if stepping_aside():
                return None
            # A copy made by a class's own __deepcopy__ may still carry this hook; it is
            # not in the table (the table's modules are alive, so their ids are theirs).
            watched = watched_modules.get(id(hooked))
            if watched is None or not self._context.active:
                return None
            return self._before_module(hooked, watched, args, kwargs)

        def post_hook(hooked: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if stepping_aside() or not self._stack:
                return
            watched = watched_modules.get(id(hooked))
            if watched is not None:
                self._after_module(hooked, watched, args, output)

        return pre_hook, post_hook

    def _before_module(
        self,
        module: nn.Module,
        watched: _Watched,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """A module of the model starts its forward: the pass, its frame, its inputs."""
        if not self._stack:
            if not may_start_pass(self, module):
                return None
            self._start_pass(args, kwargs)
        layer_index = watched.layer_index
        if self._claiming and layer_index is not None:
            claim(module, self._context, counts=self._recording, private=self._private)
        if not self._observing:
            # The cheap path of the passes between measured ones: only depth is kept.
            self._stack.append(_UNOBSERVED)
            return None
        frame = watched.frame
        self._stack.append(frame)
        if layer_index is not None:
            self._layers_seen.add(layer_index)
        if watched.names_sites:
            self._last_layer = frame.name
        if watched.quiet and self._stepped_off_at is None and self._activation_probe.step_off():
            self._stepped_off_at = len(self._stack)
        if not (watched.measures_signal or watched.is_recurrent):
            return None
        replaced = None
        try:
            if (
                self._stepped_off_at is not None
                and not watched.is_recurrent
                and layer_index is not None
            ):
                # A layer while the mode is off (most, in check()): nothing to pause.
                replaced = self._layer_probe.before_forward(layer_index, args, kwargs)
            else:
                with self._probes_own_work():
                    replaced = self._before_forward(
                        frame.name, module, layer_index, watched.is_recurrent, args, kwargs
                    )
        except Exception as error:
            self._context.errors.record(f"forward pre-hook of {frame.name!r}", error)
        return replaced

    def _probes_own_work(self) -> AbstractContextManager[object]:
        """A context for the probes' own ops inside a forward: the activation mode
        paused, unless it already stepped off for a quiet module."""
        if self._stepped_off_at is not None:
            return _NOTHING_TO_PAUSE
        return self._activation_probe.paused()

    def _before_forward(
        self,
        name: str,
        module: nn.Module,
        layer_index: int | None,
        is_recurrent: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Hand the layer and time-step probes the module's inputs; their replacements."""
        replaced = None
        # Time profile first: it may give plain-data input a gradient, which the layer
        # probe can then measure as well.
        if is_recurrent:
            replaced = self._temporal_probe.before_forward(name, module, args, kwargs)
            if replaced is not None:
                args, kwargs = replaced
        if layer_index is not None and self._signal:
            replaced = self._layer_probe.before_forward(layer_index, args, kwargs) or replaced
        return replaced

    def _after_module(
        self, module: nn.Module, watched: _Watched, args: tuple[Any, ...], output: Any
    ) -> None:
        """A module of the model ended its forward (or raised: ``always_call``)."""
        try:
            if self._observing and output is not None:
                self._observe_output(watched, output)
        finally:
            if self._stepped_off_at == len(self._stack):
                self._step_back_on(module, watched, args, output)
            # The stack unwinds even when forward raised (always_call=True).
            self._stack.pop()
            if not self._stack:
                self._end_pass()

    def _observe_output(self, watched: _Watched, output: Any) -> None:
        layer_index = watched.layer_index if self._signal else None
        if layer_index is None and not watched.channels_first:
            return  # most modules: nothing to see, and pausing the mode costs two calls
        try:
            with self._probes_own_work():
                if layer_index is not None:
                    self._layer_probe.after_forward(layer_index, output)
                if watched.channels_first:
                    self._activation_probe.mark_channels_first(output)
        except Exception as error:
            self._context.errors.record(f"forward hook of {watched.frame.name!r}", error)

    # -- passes -------------------------------------------------------------------------
    def _start_pass(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        context = self._context
        gradient_pass = (
            torch.is_grad_enabled() or self._include_no_grad
        ) and not is_inside_backward()
        # An empty batch measures nothing: counting it would dilute every average.
        self._recording = gradient_pass and not _is_empty_batch(args, kwargs)
        self._claiming = gradient_pass and others_open(self)
        if gradient_pass and not self._claiming and self._claimed:
            drop_claims(context)  # claims from a time another monitor was open
            self._claimed = False
        self._claimed = self._claimed or self._claiming
        self._site_calls.clear()
        self._last_layer = None
        context.in_pass = True
        # Gradients of the previous pass whose end no engine callback marked.
        context.ledger.flush()
        if not self._recording:
            if gradient_pass:
                context.sampled = False  # the empty batch's gradients are not measured
            return
        self._observing = context.start_recorded_pass() and (
            self._signal or self._activations or self._time
        )
        if not self._observing:
            return
        if self._time:
            self._temporal_probe.start_pass()
        if self._activations:
            self._activation_probe.start_forward(self.next_call)

    def _step_back_on(
        self, module: nn.Module, watched: _Watched, args: tuple[Any, ...], output: Any
    ) -> None:
        """The quiet module the mode stepped off for ended: what the mode would have
        seen of it (an activation module's one call) is observed, and the mode is back."""
        self._stepped_off_at = None
        try:
            spec_of = watched.activation
            spec = spec_of(module) if spec_of is not None and output is not None else None
            if spec is not None:
                self._activation_probe.observe(spec, args[0] if args else None, output)
        except Exception as error:
            self._context.errors.record(f"forward hook of {self._stack[-1].name!r}", error)
        finally:
            self._activation_probe.step_on()

    def _end_pass(self) -> None:
        if self._stepped_off_at is not None:  # abandoned inside a quiet module
            self._stepped_off_at = None
            self._activation_probe.step_on()
        if self._observing and self._activations:
            self._activation_probe.end_forward()
        self._recording = self._claiming = self._observing = self._context.in_pass = False

    def abandon(self) -> None:
        """Unwind after an interrupted forward (called when the monitor closes)."""
        if self._stack:
            self._stack.clear()
            self._end_pass()


def _is_empty_batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True when the first input tensor (the batch) has no elements.

    Only the first: other inputs may be empty on purpose (an empty key/value cache at
    the first step of generation).
    """
    first = next(iter_tensors((args, kwargs)), None)
    return first is not None and first.numel() == 0


class _Ownership:
    """Takes the tracker out of the ownership rules when the monitor closes."""

    def __init__(self, tracker: ModuleTracker, context: ProbeContext) -> None:
        self._tracker = tracker
        self._context = context

    def remove(self) -> None:
        close_owner(self._tracker, self._context)
