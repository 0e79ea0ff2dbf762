"""The probes' lifecycle: attach, observe any number of passes, detach, report once."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from types import TracebackType

import torch
from torch import nn

from gradcheckup._assemble import (
    build_activation_stats,
    build_layer_stats,
    build_step_stats,
    build_temporal_stats,
    step_device_values,
)
from gradcheckup._version import __version__
from gradcheckup.config import Config
from gradcheckup.probes._accumulators import fetch_to_host
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._tensors import squared_norm
from gradcheckup.probes.activations import ActivationProbe
from gradcheckup.probes.inventory import Inventory, take_inventory
from gradcheckup.probes.layers import LayerSignalProbe
from gradcheckup.probes.parameters import ParameterProbe
from gradcheckup.probes.steps import StepProbe, require_optimizers
from gradcheckup.probes.temporal import TemporalProbe
from gradcheckup.probes.tracker import ModuleTracker
from gradcheckup.report import Report, display_name
from gradcheckup.rules import diagnose

__all__ = ["Monitor", "resolve_config", "watch"]


def resolve_config(config: Config | None) -> Config:
    if config is None:
        return Config()
    if not isinstance(config, Config):
        raise TypeError(
            f"config: expected a gradcheckup.Config or None, got {type(config).__name__}; "
            "build one with gcu.Config(name=value, ...)"
        )
    return config


def require_module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return model


class Monitor:
    """Observes a model's forward and backward passes and builds a ``Report``.

    Use it through ``gcu.watch(model)``; hooks exist only inside the ``with`` block and
    are removed on the way out, also when the block raises. Nothing grows with the
    number of passes: statistics are running sums on the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Config | None = None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
    ) -> None:
        self._model = require_module(model)
        self._config = resolve_config(config)
        self._inventory: Inventory = take_inventory(model)
        self._context = ProbeContext()
        self._hooks = HookSet()
        self._parameters = ParameterProbe(self._context, self._inventory)
        self._signals = LayerSignalProbe(self._context, self._inventory)
        self._activations = ActivationProbe(self._context, self._config.saturation_margin)
        self._temporal = TemporalProbe(self._context, self._config.recurrent_modules)
        _require_known_modules(self._config.recurrent_modules, self._inventory)
        self._tracker = ModuleTracker(
            self._context,
            self._inventory,
            self._signals,
            self._activations,
            self._temporal,
            include_no_grad_passes=self._config.include_no_grad_passes,
        )
        self._steps = (
            StepProbe(self._context, self._inventory, optimizers, self._config.step_history)
            if optimizers
            else None
        )
        self._state = "new"

    @property
    def config(self) -> Config:
        return self._config

    @property
    def inventory(self) -> Inventory:
        """The model's layers and module names, as the probes see them."""
        return self._inventory

    @property
    def pass_leaves(self) -> list[torch.Tensor]:
        """Inputs of recurrent modules given a gradient during the current pass; check()
        asks autograd for their gradient so the time-step hooks fire."""
        return list(self._temporal.pass_leaves)

    @property
    def hook_count(self) -> int:
        """Hooks currently registered by this monitor (0 once closed)."""
        return len(self._hooks)

    def open(self) -> Monitor:
        """Attach the probes. ``with gcu.watch(model)`` calls this for you."""
        if self._state != "new":
            raise RuntimeError("a Monitor can be opened once; call gcu.watch(model) again")
        try:
            self._tracker.attach(self._hooks)
            self._parameters.attach(self._hooks)
            if self._steps is not None:
                self._steps.attach(self._hooks)
        except BaseException:
            self._hooks.remove_all()
            raise
        self._state = "open"
        return self

    def close(self) -> None:
        """Remove every hook; statistics stay available to ``report()``."""
        self._context.active = False
        self._tracker.abandon()
        self._hooks.remove_all()
        self._temporal.pass_leaves.clear()
        self._state = "closed"

    def __enter__(self) -> Monitor:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def report(
        self,
        *,
        loss: torch.Tensor | None = None,
        gradients: Mapping[int, Sequence[torch.Tensor | None]] | None = None,
        notes: Sequence[str] = (),
    ) -> Report:
        """Build the report from everything observed so far (one device sync).

        Args:
            loss: the differentiated loss, when a single known pass was run (check()).
            gradients: per layer index, the gradients of that single pass, used to count
                NaN/inf entries where a norm came out non-finite (check()).
            notes: further statistics that were unavailable, and why.
        """
        weight_squared = {
            ("weight_sq", layer.index): _total_squared_norm([p for _, p in layer.params])
            for layer in self._inventory.layers
        }
        device_values: dict[Hashable, torch.Tensor] = {
            **self._context.sums.values,
            **weight_squared,
        }
        if loss is not None:
            device_values[("loss",)] = loss.detach().reshape(())
        if self._steps is not None:
            device_values.update(step_device_values(list(self._steps.history), self._steps.evicted))
        fetched = fetch_to_host(device_values)

        steps, step_summary = [], None
        if self._steps is not None:
            layer_names = {
                layer.index: display_name(layer.name) for layer in self._inventory.layers
            }
            steps, step_summary = build_step_stats(
                list(self._steps.history), self._steps.evicted, fetched, layer_names
            )

        parameter_totals = self._parameters.totals(fetched)
        nonfinite_count = None
        if gradients is not None:
            nonfinite_count = _count_nonfinite_count(parameter_totals, gradients)
        layers = build_layer_stats(
            self._inventory,
            parameter_totals,
            self._signals.totals(fetched),
            {layer.index: fetched[("weight_sq", layer.index)] for layer in self._inventory.layers},
            nonfinite_count,
            self._zero_since(fetched),
        )
        activations = build_activation_stats(self._activations.sites, fetched)
        temporal = build_temporal_stats(self._temporal.records, fetched, self._config)
        loss_value = fetched.get(("loss",))
        findings = diagnose(
            layers,
            activations,
            self._config,
            loss=loss_value,
            temporal=temporal,
            steps=steps,
            step_summary=step_summary,
        )
        unavailable = [
            f"module hooks (backward signal, activations) for {entry}"
            for entry in self._tracker.unhookable
        ]
        if any(layer.passes for layer in layers) and all(
            layer.depth_index is None for layer in layers
        ):
            unavailable.append(
                "backward signal, gains and activation sites: no layer module ran its own forward "
                "(a torch.export or fx program inlines its submodules); parameter statistics only"
            )
        unavailable += list(notes)
        unavailable += [
            f"activation site {name!r}: calls with a different number of units were skipped"
            for name, site in self._activations.sites.items()
            if site.shape_changes
        ]
        return Report(
            layers=layers,
            activations=activations,
            temporal=temporal,
            steps=steps,
            step_summary=step_summary,
            findings=findings,
            passes=self._tracker.passes,
            loss=loss_value,
            probe_errors=self._context.errors.summary(),
            unavailable=unavailable,
            config=self._config,
            torch_version=torch.__version__,
            gradcheckup_version=__version__,
        )

    def _zero_since(self, fetched: Mapping[Hashable, float | list[float]]) -> dict[int, int]:
        """Layers whose gradient has been exactly zero for the last two or more steps."""
        if self._steps is None:
            return {}
        result = {}
        for layer_index, last_seen in self._steps.layer_last_seen.items():
            last_nonzero = fetched.get(("last_nonzero_step", layer_index), -1.0)
            if (
                isinstance(last_nonzero, float)
                and last_nonzero >= 0
                and last_seen - last_nonzero >= 2
            ):
                result[layer_index] = int(last_nonzero) + 1
        return result


def _require_known_modules(names: Mapping[str, int], inventory: Inventory) -> None:
    known = set(inventory.module_names.values())
    unknown = [name for name in names if name not in known]
    if unknown:
        listed = sorted(known - {""})[:12]
        raise ValueError(
            f"config.recurrent_modules: no module named {unknown[0]!r} in the model; "
            f"module names look like {listed}"
        )


def _total_squared_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        device = params[0].device
        return torch.stack([squared_norm(param.detach()).to(device) for param in params]).sum()


def _count_nonfinite_count(
    totals: Mapping[int, object], gradients: Mapping[int, Sequence[torch.Tensor | None]]
) -> dict[int, int]:
    counts: dict[int, int] = {}
    for index, grads in gradients.items():
        grad_norm = getattr(totals[index], "grad_norm", None)
        if grad_norm is None or math.isfinite(grad_norm):
            counts[index] = 0
            continue
        # Only layers whose norm is already known to be non-finite pay for a count.
        counts[index] = sum(
            int((~torch.isfinite(grad)).sum()) for grad in grads if grad is not None
        )
    return counts


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    config: Config | None = None,
) -> Monitor:
    """Watch a model over any number of your own forward/backward passes.

    Args:
        model: the module to observe; its parameters, ``.grad`` and training behaviour
            are left untouched.
        optimizer: one optimizer or a list of them. Each ``step()`` is then recorded
            (``report.steps``): the global gradient norm it saw, clipping calls, AMP
            skips; ``Config.max_grad_norm`` makes unclipped steps an error.
        config: thresholds; ``gcu.Config()`` by default.

    Returns:
        A ``Monitor`` to use as a context manager; call ``report()`` inside or after
        the block.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``optimizer`` not an optimizer, or
            ``config`` not a ``Config``.
        ValueError: the model has no trainable parameters.

    Example:
        >>> with gcu.watch(model) as monitor:          # doctest: +SKIP
        ...     for x, y in loader:
        ...         loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        >>> monitor.report().ok                         # doctest: +SKIP
        True
    """
    if isinstance(optimizer, Config) and config is None:
        raise TypeError(
            "optimizer: got a gradcheckup.Config; pass it by name: gcu.watch(model, config=...)"
        )
    return Monitor(model, config, require_optimizers(optimizer))
