"""Optimizer steps: the gradient norm each optimizer actually sees, clipping, AMP.

Everything global is judged at ``optimizer.step`` time, on the optimizer's own
parameters: there the gradient is reduced (DDP has all-reduced it), accumulated over
micro-batches, and unscaled (``scaler.step`` unscales before calling ``step``; fused
optimizers get ``grad_scale`` and unscale inside ``step``, so the norm is divided by
it here). Clipping is observed where it happens (see ``_patches``), never inferred
from a before/after comparison.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.amp import GradScaler
from torch.optim import Optimizer

from gradcheckup.probes._accumulators import Fetched, as_list
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._ledger import LedgerTotals, StepSlice
from gradcheckup.probes._patches import Subscription
from gradcheckup.probes._tensors import local_part, norm_of_norms, replication, tensor_norms
from gradcheckup.probes.inventory import Inventory


@dataclass(frozen=True)
class LayerSlots:
    """Which ledger slots hold which layer's gradients (parameters and dL/d output)."""

    parameter_layer: Mapping[int, int]
    """Parameter slot -> layer index."""
    output_layer: Mapping[int, int]
    """dL/d(output) slot -> layer index."""

    def parameters_of(self, layers: set[int]) -> list[int]:
        """The parameter slots of ``layers``."""
        return [slot for slot, layer in self.parameter_layer.items() if layer in layers]

    def outputs_of(self, layers: set[int]) -> list[int]:
        """The dL/d(output) slots of ``layers``."""
        return [slot for slot, layer in self.output_layer.items() if layer in layers]


@dataclass
class ClipRecord:
    """One clipping call seen through the patches; device values stay on device."""

    kind: str  # "norm" or "value"
    bound: Any  # float, or a tensor the user passed
    returned_norm: torch.Tensor | None
    before_unscale: bool
    scale: torch.Tensor | None  # the AMP scale when clipping ran on scaled gradients
    partial: bool = False  # returned_norm is this rank's part of a sharded norm


@dataclass
class StepRecord:
    """One optimizer step; device values stay on device until the report."""

    optimizer: int
    index: int
    norm_at_step: torch.Tensor | None
    clips: list[ClipRecord]
    skipped: bool | torch.Tensor
    scale: torch.Tensor | None
    since_last_step: StepSlice | None = None
    sharded_squared: torch.Tensor | None = None
    """This rank's share of the squared step norm from gradient shards (FSDP2)."""
    closure: bool = False
    window: int = 0
    """The report window (``Monitor.snapshot``) the step belongs to."""


@dataclass
class EarlierSteps:
    """Steps that left the history window, reduced on device."""

    steps: int = 0
    clipped_steps: int = 0
    skipped_steps: int = 0
    max_norm_at_step: torch.Tensor | None = None


@dataclass(frozen=True)
class ClipTotals:
    """Host-side record of one clipping call."""

    kind: str
    bound: float
    returned_norm: float | None
    before_unscale: bool
    scale: float | None
    """The AMP scale when clipping ran on scaled gradients."""
    partial: bool = False
    """``returned_norm`` is this rank's part of a norm over sharded gradients (FSDP2):
    across ranks the squares add up."""


@dataclass(frozen=True)
class StepTotals:
    """Host-side record of one optimizer step in the history window."""

    optimizer: int
    index: int
    norm_at_step: float | None
    clips: tuple[ClipTotals, ...]
    skipped: bool
    amp_scale: float | None
    first_nonfinite_layer: int | None
    """The layer index whose gradient turned NaN/inf first in this step, if any."""
    closure: bool
    sharded_squared: float | None = None
    """This rank's share of the squared step norm from gradient shards (FSDP2), not
    yet in ``norm_at_step``; ``StepProbe.combined_totals`` adds the ranks' shares in."""


@dataclass(frozen=True)
class StepHistoryTotals:
    """Everything the step probe measured, on the host."""

    steps: tuple[StepTotals, ...]
    earlier_steps: int
    earlier_clipped_steps: int
    earlier_skipped_steps: int
    earlier_max_norm_at_step: float | None
    zero_since: Mapping[int, int]
    """Layers whose gradient has been exactly zero for the last two or more steps: the
    first such step."""


def _global_norm(optimizer: Optimizer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The norm of all the optimizer's whole gradients, and the squared norm of its
    gradient shards on this rank (FSDP2; across ranks the squares add up), from fused
    per-tensor norms. Nothing is gathered."""
    parts = [
        local_part(p.grad)
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    whole = [part.tensor for part in parts if not part.sharded]
    shards = [part for part in parts if part.sharded]
    sharded = None
    if shards:
        norms = tensor_norms([part.tensor for part in shards])
        weights = [math.sqrt(part.square_weight or 1.0) for part in shards]
        sharded = norm_of_norms(
            [norm * weight for norm, weight in zip(norms, weights, strict=True)]
        )
    return (
        norm_of_norms(tensor_norms(whole)) if whole else None,
        None if sharded is None else sharded.square(),
    )


class StepProbe:
    """Optimizer steps: the global gradient norm each step saw, clipping and AMP skips.

    Hooks: a step pre-hook (and post-hook, for closures) on every watched optimizer,
    and a subscription to the ``clip_grad_*``/``GradScaler`` patches; attached once
    when the monitor opens. Keeps the last ``history`` steps as records whose device
    values stay on device (older ones are reduced into ``EarlierSteps``), and per layer
    the last step in which its gradient was not exactly zero.
    """

    def __init__(
        self,
        context: ProbeContext,
        inventory: Inventory,
        optimizers: Sequence[Optimizer],
        history: int,
        layer_slots: LayerSlots,
    ) -> None:
        """Create the probe; ``attach`` hooks the optimizers.

        Args:
            context: state shared with the monitor's other probes.
            inventory: the model's layers, to know which layers each optimizer steps.
            optimizers: the optimizers to watch.
            history: ``Config.step_history``, steps kept one by one.
            layer_slots: the ledger slots of each layer's gradients.
        """
        self._context = context
        self._optimizers = list(optimizers)
        self._param_ids = [
            {id(p) for group in opt.param_groups for p in group["params"]}
            for opt in self._optimizers
        ]
        self._layers_of = [
            [
                layer.index
                for layer in inventory.layers
                if any(id(p) in ids for _, p in layer.params)
            ]
            for ids in self._param_ids
        ]
        # Per optimizer: the ledger slots of its layers' parameters, then their outputs.
        self._slots = [
            [*layer_slots.parameters_of(set(layers)), *layer_slots.outputs_of(set(layers))]
            for layers in self._layers_of
        ]
        self._parameter_slots = layer_slots.parameter_layer
        self._slot_layer = {**layer_slots.output_layer, **layer_slots.parameter_layer}
        context.ledger.track_steps()
        self._history: deque[StepRecord] = deque()
        self._history_limit = history
        self._earlier = EarlierSteps()
        # The steps of the current report window that left the history already.
        self._earlier_in_window = EarlierSteps()
        self._window = 0
        # Per (optimizer, device): per slot, the last measured step whose gradient was
        # not zero, as (measured-step ordinal, step index).
        self._last_nonzero_step: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._measured_steps = [0] * len(self._optimizers)
        self._step_counts = [0] * len(self._optimizers)
        self._observed_at_step = [-1] * len(self._optimizers)
        self._pending_clips: list[list[ClipRecord]] = [[] for _ in self._optimizers]
        self._unscaled: set[int] = set()
        self._scalers: dict[int, GradScaler] = {}
        self._stepped_inside_scaler: dict[int, bool] = {}
        self._closure_steps: set[int] = set()
        # Per layer: the measured-step ordinal of the last step (of its optimizer) that
        # had its gradient; the device side keeps the last one where it was not zero.
        self._layer_last_seen: dict[int, int] = {}

    def attach(self, hooks: HookSet) -> None:
        """Hook every optimizer's step and subscribe to the clipping/AMP patches."""
        for index, optimizer in enumerate(self._optimizers):
            hooks.add(optimizer.register_step_pre_hook(self._make_pre_hook(index)))
            hooks.add(optimizer.register_step_post_hook(self._make_post_hook(index)))
        hooks.add(Subscription(self))

    # -- optimizer hooks -------------------------------------------------------------
    def _make_pre_hook(self, index: int) -> Callable[..., None]:
        record = self._context.errors.guarded("optimizer step pre-hook", self._record)

        def pre_hook(optimizer: Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not self._context.active:
                return
            self._stepped_inside_scaler[index] = True
            # Optimizer hooks receive the step's arguments with the optimizer first.
            positional = args[1:] if args and args[0] is optimizer else args
            if kwargs.get("closure") is not None or any(callable(arg) for arg in positional):
                # LBFGS-style: gradients are computed inside step(); measure afterwards.
                self._closure_steps.add(index)
                return
            record(index)

        return pre_hook

    def _make_post_hook(self, index: int) -> Callable[..., None]:
        record = self._context.errors.guarded("optimizer step post-hook", self._record)

        def post_hook(optimizer: Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._context.active and index in self._closure_steps:
                self._closure_steps.discard(index)
                record(index, closure=True)

        return post_hook

    def _measures_step(self, index: int) -> bool:
        """Whether a measured pass ran since the optimizer's last step (or no pass was
        ever seen: compiled code is measured at every step)."""
        context = self._context
        measured = context.recorded_passes == 0 or (
            context.observed_passes != self._observed_at_step[index]
        )
        self._observed_at_step[index] = context.observed_passes
        return measured

    def _record(self, index: int, skipped: bool = False, closure: bool = False) -> None:
        optimizer = self._optimizers[index]
        measured = self._measures_step(index)
        norm, sharded = _global_norm(optimizer) if measured else (None, None)
        grad_scale = getattr(optimizer, "grad_scale", None)  # fused optimizers under AMP
        found_inf = getattr(optimizer, "found_inf", None)
        step_skipped: bool | torch.Tensor = skipped
        if isinstance(grad_scale, torch.Tensor):
            if norm is not None:
                norm = norm / grad_scale.to(norm.device)
            if sharded is not None:
                sharded = sharded / grad_scale.to(sharded.device).square()
        if isinstance(found_inf, torch.Tensor):
            step_skipped = found_inf > 0
        clips, self._pending_clips[index] = self._pending_clips[index], []
        record = StepRecord(
            optimizer=index,
            index=self._step_counts[index],
            norm_at_step=norm,
            clips=clips,
            skipped=step_skipped,
            scale=self._current_scale(),
            since_last_step=self._context.ledger.take_since_step(self._slots[index])
            if measured
            else None,
            sharded_squared=sharded,
            closure=closure,
            window=self._window,
        )
        if record.since_last_step is not None:
            self._mark_nonzero(index, record.index, record.since_last_step)
            self._measured_steps[index] += 1
        self._step_counts[index] += 1
        self._unscaled.discard(index)
        self._push(record)

    def _mark_nonzero(self, index: int, step: int, since: StepSlice) -> None:
        """Note the layers that had a gradient in this measured step, and (on device)
        which of their parameters' gradients were not exactly zero."""
        ordinal = self._measured_steps[index]
        for slot in since.fired:
            layer = self._parameter_slots.get(slot)
            if layer is not None:
                self._layer_last_seen[layer] = ordinal
        for position, squared in enumerate(since.squared):
            last = self._last_nonzero_step.get((index, position))
            if last is None:
                unset = torch.full_like(squared, -1.0)
                last = (unset, unset)
            nonzero = squared > 0
            self._last_nonzero_step[(index, position)] = (
                torch.where(nonzero, ordinal, last[0]),
                torch.where(nonzero, step, last[1]),
            )

    def _push(self, record: StepRecord) -> None:
        if len(self._history) >= self._history_limit:
            self._evict(self._history.popleft())
        self._history.append(record)

    def _evict(self, record: StepRecord) -> None:
        _fold(self._earlier, record)
        if record.window == self._window:
            _fold(self._earlier_in_window, record)

    def start_window(self) -> None:
        """Steps from now on belong to a new report window."""
        self._window += 1
        self._earlier_in_window = EarlierSteps()

    def _current_scale(self) -> torch.Tensor | None:
        for scaler in self._scalers.values():
            scale = getattr(scaler, "_scale", None)
            if isinstance(scale, torch.Tensor):
                return scale.detach().clone()
        return None

    def _reported(self, since_start: bool) -> tuple[list[StepRecord], EarlierSteps]:
        """The history records and the folded earlier steps a report covers."""
        if since_start:
            return list(self._history), self._earlier
        in_window = [record for record in self._history if record.window == self._window]
        return in_window, self._earlier_in_window

    # -- report -------------------------------------------------------------------------
    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Every device value of the reported steps, the earlier steps and the zero marks."""
        records, earlier = self._reported(since_start)
        values: dict[Hashable, torch.Tensor] = {}
        for position, record in enumerate(records):
            values.update(_record_values(position, record))
        if earlier.max_norm_at_step is not None:
            values[("earlier", "max_norm")] = earlier.max_norm_at_step.reshape(())
        for key, (ordinals, steps) in self._last_nonzero_step.items():
            values[("last_nonzero_ordinal", key)] = ordinals
            values[("last_nonzero_step", key)] = steps
        return values

    def _last_nonzero_by_layer(self, fetched: Fetched) -> dict[int, tuple[float, float]]:
        """Per layer: (measured-step ordinal, step index) of the last measured step in
        which some parameter gradient was not zero."""
        last: dict[int, tuple[float, float]] = {}
        for key in self._last_nonzero_step:
            ordinals = as_list(fetched[("last_nonzero_ordinal", key)])
            steps = as_list(fetched[("last_nonzero_step", key)])
            for slot, ordinal, step in zip(self._slots[key[0]], ordinals, steps, strict=False):
                layer = self._parameter_slots.get(slot)
                if layer is not None:
                    last[layer] = max(last.get(layer, (-1.0, -1.0)), (ordinal, step))
        return last

    def share(self, fetched: Fetched, since_start: bool = True) -> StepHistoryTotals:
        """The reported steps in the history, the earlier ones reduced, and zero runs: a
        layer whose gradient was exactly zero in its last two or more measured steps."""
        records, earlier = self._reported(since_start)
        zero_since = {}
        last_nonzero_of = self._last_nonzero_by_layer(fetched)
        for layer_index, last_seen in self._layer_last_seen.items():
            ordinal, step = last_nonzero_of.get(layer_index, (-1.0, -1.0))
            if ordinal >= 0 and last_seen - ordinal >= 2:
                zero_since[layer_index] = int(step) + 1
        max_norm = fetched.get(("earlier", "max_norm"))
        return StepHistoryTotals(
            steps=tuple(
                _record_totals(position, record, fetched, self._slot_layer)
                for position, record in enumerate(records)
            ),
            earlier_steps=earlier.steps,
            earlier_clipped_steps=earlier.clipped_steps,
            earlier_skipped_steps=earlier.skipped_steps,
            earlier_max_norm_at_step=max_norm if isinstance(max_norm, float) else None,
            zero_since=zero_since,
        )

    def combined_totals(
        self, shares: Sequence[StepHistoryTotals], ledger: LedgerTotals
    ) -> StepHistoryTotals:
        """The steps of the first rank: the optimizer steps on gradients that are the
        same on every rank (DDP has all-reduced them). A layer's gradient is zero only
        where it was zero on every rank, since the latest of the ranks' first zero steps.
        """
        first = shares[0]
        zero_since = {
            layer: max(share.zero_since[layer] for share in shares)
            for layer in first.zero_since
            if all(layer in share.zero_since for share in shares)
        }
        aligned = [share.steps for share in shares if len(share.steps) == len(first.steps)]
        steps = tuple(_combined_step(ranks) for ranks in zip(*aligned, strict=True))
        return replace(first, steps=steps, zero_since=zero_since)

    def unavailable(self) -> list[str]:
        """Nothing: a step the probe cannot measure is recorded without a norm."""
        return []

    def _optimizer_index(self, optimizer: Optimizer) -> int | None:
        for index, candidate in enumerate(self._optimizers):
            if candidate is optimizer:
                return index
        return None

    # -- StepListener (called from the patches) ---------------------------------------
    def record_error(self, where: str, error: BaseException) -> None:
        """Record a failure inside a patch notification for the report."""
        self._context.errors.record(where, error)

    def on_clip(self, kind: str, params: list[torch.Tensor], bound: Any, total_norm: Any) -> None:
        """A ``clip_grad_norm_``/``clip_grad_value_`` call on some of our parameters."""
        if not self._context.active:
            return
        if isinstance(bound, (int, float)) and math.isinf(bound):
            # clip_grad_norm_(params, inf) only measures the norm (the Hugging Face
            # Trainer does so with max_grad_norm=0): nothing is clipped.
            return
        ids = {id(param) for param in params}
        for index, own in enumerate(self._param_ids):
            if not ids & own:
                continue
            before_unscale = bool(self._scalers) and index not in self._unscaled
            returned, partial = (
                _local_norm(total_norm) if isinstance(total_norm, torch.Tensor) else (None, False)
            )
            self._pending_clips[index].append(
                ClipRecord(
                    kind=kind,
                    bound=bound.detach().clone() if isinstance(bound, torch.Tensor) else bound,
                    returned_norm=returned,
                    before_unscale=before_unscale,
                    scale=self._current_scale() if before_unscale else None,
                    partial=partial,
                )
            )

    def on_scale(self, scaler: GradScaler) -> None:
        """A GradScaler scaled a loss: AMP is in use."""
        if self._context.active and scaler.is_enabled():
            self._scalers[id(scaler)] = scaler

    def on_unscale(self, scaler: GradScaler, optimizer: Optimizer) -> None:
        """The optimizer's gradients were unscaled (later clips see true norms)."""
        index = self._optimizer_index(optimizer)
        if index is not None:
            self._unscaled.add(index)

    def before_scaler_step(self, scaler: GradScaler, optimizer: Optimizer) -> None:
        """``scaler.step`` begins: note whether it goes on to call ``optimizer.step``."""
        index = self._optimizer_index(optimizer)
        if index is not None:
            self._stepped_inside_scaler[index] = False

    def after_scaler_step(self, scaler: GradScaler, optimizer: Optimizer) -> None:
        """``scaler.step`` returned: a step it skipped is recorded as skipped."""
        index = self._optimizer_index(optimizer)
        if index is None or not self._context.active:
            return
        if not self._stepped_inside_scaler.get(index, True):
            # The scaler found inf/NaN and did not call optimizer.step().
            self._record(index, skipped=True)
        self._stepped_inside_scaler.pop(index, None)


def _local_norm(norm: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A returned norm on this rank, and whether it is only this rank's part of it (a
    ``DTensor`` norm over FSDP2 shards is pending a reduction across ranks)."""
    placements = getattr(norm, "placements", None)
    if placements is None or not any(p.is_partial() for p in placements):
        return local_part(norm).tensor.detach().clone(), False
    # Ranks that hold the same part (HSDP) would count it more than once.
    local = norm.to_local().detach() / math.sqrt(replication(norm))
    return local.clone(), True


def _rank_step_norm(record: StepRecord) -> torch.Tensor | None:
    """The step's norm as far as this rank knows it: with gradient shards (FSDP2) only
    its own shards count, so the earlier steps' maximum is then a lower bound."""
    norm = None if record.norm_at_step is None else record.norm_at_step.detach()
    if record.sharded_squared is None:
        return norm
    sharded = record.sharded_squared.detach()
    return sharded.sqrt() if norm is None else (norm.square() + sharded.to(norm.device)).sqrt()


def _fold(summary: EarlierSteps, record: StepRecord) -> None:
    """Count a step that leaves the history into ``summary`` (its maximum stays on device)."""
    summary.steps += 1
    summary.clipped_steps += bool(record.clips)
    if record.skipped is True:
        summary.skipped_steps += 1
    norm = _rank_step_norm(record)
    if norm is not None and record.skipped is False:
        summary.max_norm_at_step = (
            norm.clone()
            if summary.max_norm_at_step is None
            else torch.maximum(summary.max_norm_at_step, norm.to(summary.max_norm_at_step.device))
        )


def _record_values(position: int, record: StepRecord) -> dict[Hashable, torch.Tensor]:
    """The device values of one step record, keyed by its position in the history."""
    values: dict[Hashable, torch.Tensor] = {}
    if record.norm_at_step is not None:
        values[("step", position, "norm")] = record.norm_at_step.reshape(())
    if record.sharded_squared is not None:
        values[("step", position, "sharded_squared")] = record.sharded_squared.reshape(())
    if isinstance(record.skipped, torch.Tensor):
        values[("step", position, "skipped")] = record.skipped.reshape(())
    if record.scale is not None:
        values[("step", position, "scale")] = record.scale.reshape(())
    for clip_index, clip in enumerate(record.clips):
        if clip.returned_norm is not None:
            values[("step", position, "clip", clip_index, "norm")] = clip.returned_norm.reshape(())
        if clip.scale is not None:
            values[("step", position, "clip", clip_index, "scale")] = clip.scale.reshape(())
        if isinstance(clip.bound, torch.Tensor):
            values[("step", position, "clip", clip_index, "bound")] = clip.bound.reshape(())
    if record.since_last_step is not None:
        for device, ticks in enumerate(record.since_last_step.ticks):
            values[("step", position, "first_nonfinite", device)] = ticks
    return values


def _first_nonfinite_layer(
    position: int, record: StepRecord, fetched: Fetched, slot_layer: Mapping[int, int]
) -> int | None:
    """The layer whose gradient turned NaN/inf first (smallest tick) in this step."""
    since = record.since_last_step
    if since is None:
        return None
    first: tuple[float, int] | None = None
    for device in range(len(since.ticks)):
        ticks = as_list(fetched[("step", position, "first_nonfinite", device)])
        for slot, tick in zip(since.slots, ticks, strict=True):
            if tick != math.inf and (first is None or tick < first[0]):
                first = (tick, slot)
    return None if first is None else slot_layer[first[1]]


def _record_totals(
    position: int, record: StepRecord, fetched: Fetched, slot_layer: Mapping[int, int]
) -> StepTotals:
    """Decode what ``_record_values`` sent for the record at ``position``."""
    clips = tuple(
        ClipTotals(
            kind=clip.kind,
            bound=float(fetched.get(("step", position, "clip", clip_index, "bound"), clip.bound)),
            returned_norm=fetched.get(("step", position, "clip", clip_index, "norm")),
            before_unscale=clip.before_unscale,
            scale=fetched.get(("step", position, "clip", clip_index, "scale")),
            partial=clip.partial,
        )
        for clip_index, clip in enumerate(record.clips)
    )
    skipped = record.skipped
    if isinstance(skipped, torch.Tensor):
        skipped = bool(fetched.get(("step", position, "skipped"), 0.0))
    return StepTotals(
        optimizer=record.optimizer,
        index=record.index,
        norm_at_step=fetched.get(("step", position, "norm")),
        clips=clips,
        skipped=bool(skipped),
        amp_scale=fetched.get(("step", position, "scale")),
        first_nonfinite_layer=_first_nonfinite_layer(position, record, fetched, slot_layer),
        closure=record.closure,
        sharded_squared=fetched.get(("step", position, "sharded_squared")),
    )


def _combined_step(ranks: Sequence[StepTotals]) -> StepTotals:
    """One step as every rank saw it: the ranks' shares of a norm over gradient shards
    add up (as squares); the rest is the same everywhere and taken from the first."""
    first = ranks[0]
    clips = tuple(
        _combined_clip([step.clips[position] for step in ranks if len(step.clips) > position])
        for position in range(len(first.clips))
    )
    if first.sharded_squared is None:
        return replace(first, clips=clips)
    squared = math.fsum(step.sharded_squared or 0.0 for step in ranks)
    whole = first.norm_at_step or 0.0
    return replace(
        first, norm_at_step=math.sqrt(whole**2 + squared), sharded_squared=None, clips=clips
    )


def _combined_clip(ranks: Sequence[ClipTotals]) -> ClipTotals:
    """One clipping call as every rank saw it (see ``_combined_step``)."""
    first = ranks[0]
    norms = [clip.returned_norm for clip in ranks]
    if not first.partial or any(norm is None for norm in norms):
        return first
    total = math.sqrt(math.fsum(norm * norm for norm in norms if norm is not None))
    return replace(first, returned_norm=total, partial=False)


def require_optimizers(optimizer: object) -> list[Optimizer]:
    """Normalise ``watch(optimizer=...)``: one optimizer, or a list/tuple of them."""
    if optimizer is None:
        return []
    candidates = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    for position, candidate in enumerate(candidates):
        if not isinstance(candidate, Optimizer):
            where = "optimizer" if len(candidates) == 1 else f"optimizer[{position}]"
            raise TypeError(
                f"{where}: expected a torch.optim.Optimizer (or a list of them), "
                f"got {type(candidate).__name__}"
            )
    return candidates
