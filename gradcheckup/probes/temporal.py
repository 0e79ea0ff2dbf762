"""Gradient through time: ||dL/d(input at step t)|| for every step of recurrent layers.

The forward pre-hook hands the recurrent module a hooked stand-in for its input
sequence: an identity view when the input already carries gradient, or a fresh leaf
that shares its data when it is plain data (token features, a dataset tensor). Either
way the gradient the model's parameters receive is unchanged; the leaf only makes
autograd compute dL/d(input) too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from gradcheckup.probes._context import ProbeContext

PACKED = "packed"


@dataclass
class TemporalRecord:
    """Host-side bookkeeping of one recurrent module (per-step sums live on device)."""

    name: str
    module_type: str
    gated: bool
    time_axis: str = "dim 0"
    passes_by_length: dict[int, int] = field(default_factory=dict)

    def passes_at_step(self, steps: int) -> list[int]:
        """How many passes had each step (a pass of length L has steps 0..L-1)."""
        counts = [0] * steps
        for length, passes in self.passes_by_length.items():
            for step in range(min(length, steps)):
                counts[step] += passes
        return counts


def time_dim_of(module: nn.Module, tensor: torch.Tensor, configured: int | None) -> int | None:
    """The time dimension of a recurrent module's input, or None if it cannot be told."""
    if configured is not None:
        return configured if configured >= 0 else tensor.dim() + configured
    if isinstance(module, nn.RNNBase):
        if tensor.dim() == 2:  # unbatched (T, F)
            return 0
        return 1 if module.batch_first else 0
    return None


class TemporalProbe:
    def __init__(self, context: ProbeContext, configured: dict[str, int]) -> None:
        self._context = context
        self._configured = configured
        self.records: dict[str, TemporalRecord] = {}
        # Leaves made for plain-data inputs during the current pass: check() asks
        # autograd for their gradient explicitly. Cleared at every pass.
        self.pass_leaves: list[torch.Tensor] = []

    def wants(self, name: str, module: nn.Module) -> bool:
        return name in self._configured or isinstance(module, nn.RNNBase)

    def start_pass(self) -> None:
        self.pass_leaves.clear()

    def before_forward(
        self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if args:
            sequence, replace = args[0], lambda new: ((new, *args[1:]), kwargs)
        elif "input" in kwargs:
            sequence, replace = kwargs["input"], lambda new: (args, {**kwargs, "input": new})
        else:
            return None
        record = self.records.get(name)
        if record is None:
            record = self.records[name] = TemporalRecord(
                name=name,
                module_type=type(module).__name__,
                gated=isinstance(module, (nn.LSTM, nn.GRU)),
            )
        if isinstance(sequence, PackedSequence):
            stand_in = self._stand_in(sequence.data)
            if stand_in is None:
                return None
            steps = len(sequence.batch_sizes)
            # batch_sizes lives on the CPU: the row -> step map costs no device sync.
            step_of_row = torch.repeat_interleave(torch.arange(steps), sequence.batch_sizes)
            stand_in.register_hook(
                self._packed_hook(record, step_of_row.to(stand_in.device), steps)
            )
            record.time_axis = PACKED
            return replace(sequence._replace(data=stand_in))
        if not isinstance(sequence, torch.Tensor):
            return None
        time_dim = time_dim_of(module, sequence, self._configured.get(name))
        if time_dim is None or not 0 <= time_dim < sequence.dim():
            return None
        stand_in = self._stand_in(sequence)
        if stand_in is None:
            return None
        stand_in.register_hook(self._padded_hook(record, time_dim, sequence.shape[time_dim]))
        record.time_axis = f"dim {time_dim}"
        return replace(stand_in)

    def _stand_in(self, tensor: torch.Tensor) -> torch.Tensor | None:
        if not tensor.is_floating_point():
            return None
        if tensor.requires_grad:
            return tensor.view_as(tensor)
        leaf = tensor.detach().requires_grad_(True)
        self.pass_leaves.append(leaf)
        return leaf

    def _padded_hook(
        self, record: TemporalRecord, time_dim: int, steps: int
    ) -> Callable[[torch.Tensor], None]:
        def observe(grad: torch.Tensor) -> None:
            with torch.no_grad():
                other_dims = [d for d in range(grad.dim()) if d != time_dim]
                per_step = (
                    grad.float().square().sum(dim=other_dims)
                    if other_dims
                    else grad.float().square()
                )
                self._add(record, per_step, steps)

        return self._guarded(record, observe)

    def _packed_hook(
        self, record: TemporalRecord, step_of_row: torch.Tensor, steps: int
    ) -> Callable[[torch.Tensor], None]:
        def observe(grad: torch.Tensor) -> None:
            with torch.no_grad():
                per_row = grad.float().square().reshape(grad.shape[0], -1).sum(dim=1)
                per_step = per_row.new_zeros(steps).index_add_(0, step_of_row, per_row)
                self._add(record, per_step, steps)

        return self._guarded(record, observe)

    def _add(self, record: TemporalRecord, per_step: torch.Tensor, steps: int) -> None:
        self._context.sums.add_aligned(("temporal", record.name), per_step)
        record.passes_by_length[steps] = record.passes_by_length.get(steps, 0) + 1

    def _guarded(
        self, record: TemporalRecord, observe: Callable[[torch.Tensor], None]
    ) -> Callable[[torch.Tensor], None]:
        context = self._context
        guarded = context.errors.guarded(f"time-step gradient hook of {record.name!r}", observe)

        def hook(grad: torch.Tensor) -> None:
            if context.active:
                guarded(grad)

        return hook
