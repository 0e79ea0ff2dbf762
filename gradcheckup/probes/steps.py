"""Optimizer steps: the gradient norm each optimizer actually sees, clipping, AMP.

Everything global is judged at ``optimizer.step`` time, on the optimizer's own
parameters: there the gradient is reduced (DDP has all-reduced it), accumulated over
micro-batches, and unscaled (``scaler.step`` unscales before calling ``step``; fused
optimizers get ``grad_scale`` and unscale inside ``step``, so the norm is divided by
it here). Clipping is observed where it happens (see ``_patches``), never inferred
from a before/after comparison.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.amp import GradScaler
from torch.optim import Optimizer

from gradcheckup.probes._accumulators import Accumulators
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._patches import Subscription
from gradcheckup.probes._tensors import squared_norm
from gradcheckup.probes.inventory import Inventory


@dataclass
class ClipRecord:
    kind: str  # "norm" or "value"
    bound: Any  # float, or a tensor the user passed
    returned_norm: torch.Tensor | None
    before_unscale: bool
    scale: torch.Tensor | None  # the AMP scale when clipping ran on scaled gradients


@dataclass
class StepRecord:
    """One optimizer step; device values stay on device until the report."""

    optimizer: int
    index: int
    norm_at_step: torch.Tensor | None
    clips: list[ClipRecord]
    skipped: bool | torch.Tensor
    scale: torch.Tensor | None
    window: dict = field(default_factory=dict)
    closure: bool = False


@dataclass
class EvictedSummary:
    """Steps that left the history window, reduced on device."""

    steps: int = 0
    clipped_steps: int = 0
    skipped_steps: int = 0
    max_norm_at_step: torch.Tensor | None = None


def _global_norm(optimizer: Optimizer) -> torch.Tensor | None:
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if not grads:
        return None
    device = grads[0].device
    with torch.no_grad():
        return torch.stack([squared_norm(grad).to(device) for grad in grads]).sum().sqrt()


class StepProbe:
    def __init__(
        self,
        context: ProbeContext,
        inventory: Inventory,
        optimizers: Sequence[Optimizer],
        history: int,
    ) -> None:
        self._context = context
        self.optimizers = list(optimizers)
        self._param_ids = [
            {id(p) for group in opt.param_groups for p in group["params"]}
            for opt in self.optimizers
        ]
        self.layers_of = [
            [
                layer.index
                for layer in inventory.layers
                if any(id(p) in ids for _, p in layer.params)
            ]
            for ids in self._param_ids
        ]
        self.history: deque[StepRecord] = deque()
        self._history_limit = history
        self.evicted = EvictedSummary()
        self._step_counts = [0] * len(self.optimizers)
        self._pending_clips: list[list[ClipRecord]] = [[] for _ in self.optimizers]
        self._unscaled: set[int] = set()
        self._scalers: dict[int, GradScaler] = {}
        self._stepped_inside_scaler: dict[int, bool] = {}
        self._closure_steps: set[int] = set()
        # Per layer: the last step (of its optimizer) whose window had its gradient; the
        # device side keeps the last step where that gradient was not exactly zero.
        self.layer_last_seen: dict[int, int] = {}

    def attach(self, hooks: HookSet) -> None:
        for index, optimizer in enumerate(self.optimizers):
            hooks.add(optimizer.register_step_pre_hook(self._make_pre_hook(index)))
            hooks.add(optimizer.register_step_post_hook(self._make_post_hook(index)))
        hooks.add(Subscription(self))
        if self._context.window is None:
            self._context.window = Accumulators()

    # -- optimizer hooks -------------------------------------------------------------
    def _make_pre_hook(self, index: int) -> Callable[..., None]:
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
            self._guarded("optimizer step pre-hook", self._record, index)

        return pre_hook

    def _make_post_hook(self, index: int) -> Callable[..., None]:
        def post_hook(optimizer: Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._context.active and index in self._closure_steps:
                self._closure_steps.discard(index)
                self._guarded("optimizer step post-hook", self._record, index, closure=True)

        return post_hook

    def _record(self, index: int, skipped: bool = False, closure: bool = False) -> None:
        optimizer = self.optimizers[index]
        norm = _global_norm(optimizer)
        grad_scale = getattr(optimizer, "grad_scale", None)  # fused optimizers under AMP
        found_inf = getattr(optimizer, "found_inf", None)
        step_skipped: bool | torch.Tensor = skipped
        if isinstance(grad_scale, torch.Tensor) and norm is not None:
            norm = norm / grad_scale.to(norm.device)
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
            window=self._take_window(index),
            closure=closure,
        )
        for key, value in record.window.items():
            if key[0] == "grad_sq":
                self.layer_last_seen[key[1]] = record.index
                self._context.sums.latest(
                    ("last_nonzero_step", key[1]), value > 0, float(record.index)
                )
        self._step_counts[index] += 1
        self._unscaled.discard(index)
        self._push(record)

    def _take_window(self, index: int) -> dict:
        window = self._context.window
        if window is None:
            return {}
        mine = set(self.layers_of[index])
        taken = {key: value for key, value in window.values.items() if key[1] in mine}
        for key in taken:
            del window.values[key]
        return taken

    def _push(self, record: StepRecord) -> None:
        if len(self.history) >= self._history_limit:
            self._evict(self.history.popleft())
        self.history.append(record)

    def _evict(self, record: StepRecord) -> None:
        summary = self.evicted
        summary.steps += 1
        summary.clipped_steps += bool(record.clips)
        if record.skipped is True:
            summary.skipped_steps += 1
        if record.norm_at_step is not None and record.skipped is False:
            norm = record.norm_at_step.detach()
            summary.max_norm_at_step = (
                norm.clone()
                if summary.max_norm_at_step is None
                else torch.maximum(
                    summary.max_norm_at_step, norm.to(summary.max_norm_at_step.device)
                )
            )

    def _current_scale(self) -> torch.Tensor | None:
        for scaler in self._scalers.values():
            scale = getattr(scaler, "_scale", None)
            if isinstance(scale, torch.Tensor):
                return scale.detach().clone()
        return None

    def _guarded(
        self, where: str, function: Callable[..., None], *args: Any, **kwargs: Any
    ) -> None:
        try:
            function(*args, **kwargs)
        except Exception as error:
            self._context.errors.record(where, error)

    def _optimizer_index(self, optimizer: Optimizer) -> int | None:
        for index, candidate in enumerate(self.optimizers):
            if candidate is optimizer:
                return index
        return None

    # -- StepListener (called from the patches) ---------------------------------------
    def record_error(self, where: str, error: BaseException) -> None:
        self._context.errors.record(where, error)

    def on_clip(self, kind: str, params: list[torch.Tensor], bound: Any, total_norm: Any) -> None:
        if not self._context.active:
            return
        ids = {id(param) for param in params}
        for index, own in enumerate(self._param_ids):
            if not ids & own:
                continue
            before_unscale = bool(self._scalers) and index not in self._unscaled
            self._pending_clips[index].append(
                ClipRecord(
                    kind=kind,
                    bound=bound.detach().clone() if isinstance(bound, torch.Tensor) else bound,
                    returned_norm=total_norm.detach().clone()
                    if isinstance(total_norm, torch.Tensor)
                    else None,
                    before_unscale=before_unscale,
                    scale=self._current_scale() if before_unscale else None,
                )
            )

    def on_scale(self, scaler: GradScaler) -> None:
        if self._context.active and scaler.is_enabled():
            self._scalers[id(scaler)] = scaler

    def on_unscale(self, scaler: GradScaler, optimizer: Optimizer) -> None:
        index = self._optimizer_index(optimizer)
        if index is not None:
            self._unscaled.add(index)

    def before_scaler_step(self, scaler: GradScaler, optimizer: Optimizer) -> None:
        index = self._optimizer_index(optimizer)
        if index is not None:
            self._stepped_inside_scaler[index] = False

    def after_scaler_step(self, scaler: GradScaler, optimizer: Optimizer) -> None:
        index = self._optimizer_index(optimizer)
        if index is None or not self._context.active:
            return
        if not self._stepped_inside_scaler.get(index, True):
            # The scaler found inf/NaN and did not call optimizer.step().
            self._record(index, skipped=True)
        self._stepped_inside_scaler.pop(index, None)


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
