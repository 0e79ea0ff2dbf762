"""Gradient through time: ||dL/d(input at step t)|| for every step of recurrent layers.

The forward pre-hook hands the recurrent module a hooked stand-in for its input
sequence: an identity view when the input already carries gradient, or a fresh leaf
that shares its data when it is plain data (token features, a dataset tensor). Either
way the gradient the model's parameters receive is unchanged; the leaf only makes
autograd compute dL/d(input) too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from gradcheckup.probes._accumulators import Accumulators, Fetched
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._ledger import LedgerTotals
from gradcheckup.probes._ranks import summed_aligned

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


@dataclass(frozen=True)
class TemporalTotals:
    """Host-side results for one recurrent module."""

    module_type: str
    gated: bool
    time_axis: str
    step_grad_norms: tuple[float, ...]
    """Per time step: root-mean-square over the passes that had the step."""
    passes: int


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
    """The gradient reaching each time step of a recurrent module's input sequence.

    Hooks: none of its own; the module tracker calls ``before_forward`` for recurrent
    modules (``nn.RNNBase`` and ``Config.recurrent_modules``), which hands the module a
    hooked stand-in for its input, once per call. Accumulates per module on device the
    squared gradient norm of every time step, summed over passes (aligned from step
    0), and on the host how many passes had each sequence length.
    """

    def __init__(self, context: ProbeContext, configured: dict[str, int]) -> None:
        """Create the probe; the tracker hands it the recurrent modules' inputs.

        Args:
            context: state shared with the monitor's other probes.
            configured: ``Config.recurrent_modules``, module name -> time dimension.
        """
        self._context = context
        self._configured = configured
        self._sums = Accumulators()
        self._records: dict[str, TemporalRecord] = {}
        self._earlier_lengths: dict[str, dict[int, int]] = {}
        # Leaves made for plain-data inputs during the current pass: check() asks
        # autograd for their gradient explicitly. Cleared at every pass.
        self.pass_leaves: list[torch.Tensor] = []

    def attach(self, hooks: HookSet) -> None:
        """Nothing to attach: the module tracker drives this probe."""

    def wants(self, name: str, module: nn.Module) -> bool:
        """Whether the module at ``name`` is observed as recurrent."""
        return name in self._configured or isinstance(module, nn.RNNBase)

    def start_pass(self) -> None:
        """Forget the previous pass's stand-in leaves."""
        self.pass_leaves.clear()

    def before_forward(
        self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Swap the input sequence for a hooked stand-in.

        Returns:
            The new ``(args, kwargs)``, or None when the input cannot be observed.
        """
        if args:
            sequence, replace = args[0], lambda new: ((new, *args[1:]), kwargs)
        elif "input" in kwargs:
            sequence, replace = kwargs["input"], lambda new: (args, {**kwargs, "input": new})
        else:
            return None
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = TemporalRecord(
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
            if not self._context.active:
                return
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
            if not self._context.active:
                return
            with torch.no_grad():
                per_row = grad.float().square().reshape(grad.shape[0], -1).sum(dim=1)
                per_step = per_row.new_zeros(steps).index_add_(0, step_of_row, per_row)
                self._add(record, per_step, steps)

        return self._guarded(record, observe)

    def _guarded(
        self, record: TemporalRecord, observe: Callable[[torch.Tensor], None]
    ) -> Callable[[torch.Tensor], None]:
        where = f"time-step gradient hook of {record.name!r}"
        return self._context.errors.guarded(where, observe)

    def _add(self, record: TemporalRecord, per_step: torch.Tensor, steps: int) -> None:
        self._sums.add_aligned(record.name, per_step)
        record.passes_by_length[steps] = record.passes_by_length.get(steps, 0) + 1

    def start_window(self) -> None:
        """Fold this window's sums and pass counts into the earlier windows'."""
        self._sums.start_window()
        for name, record in self._records.items():
            lengths = self._earlier_lengths.setdefault(name, {})
            for length, passes in record.passes_by_length.items():
                lengths[length] = lengths.get(length, 0) + passes
            record.passes_by_length = {}

    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Per module name: the per-step sums of squared gradient norms, of all windows
        or of the current one."""
        return self._sums.since_start() if since_start else self._sums.values

    def share(
        self, fetched: Fetched, since_start: bool = True
    ) -> list[tuple[TemporalRecord, list[float]]]:
        """Per module that received a gradient: its record (passes by sequence length)
        and its per-step sums of squared gradient norms."""
        shared = []
        for name, window in self._records.items():
            sums = fetched.get(name)
            if sums is None:
                continue
            record = window
            if since_start and name in self._earlier_lengths:
                lengths = dict(self._earlier_lengths[name])
                for length, passes in window.passes_by_length.items():
                    lengths[length] = lengths.get(length, 0) + passes
                record = replace(window, passes_by_length=lengths)
            shared.append((record, [sums] if isinstance(sums, float) else sums))
        return shared

    def combined_totals(
        self, shares: Sequence[list[tuple[TemporalRecord, list[float]]]], ledger: LedgerTotals
    ) -> dict[str, TemporalTotals]:
        """Per module: its per-step gradient norms over every rank's passes."""
        by_name: dict[str, list[tuple[TemporalRecord, list[float]]]] = {}
        for share in shares:
            for record, sums in share:
                by_name.setdefault(record.name, []).append((record, sums))
        result = {}
        for name, parts in by_name.items():
            lengths: dict[int, int] = {}
            for record, _ in parts:
                for length, passes in record.passes_by_length.items():
                    lengths[length] = lengths.get(length, 0) + passes
            record = replace(parts[0][0], passes_by_length=lengths)
            per_step = summed_aligned(sums for _, sums in parts)
            counts = record.passes_at_step(len(per_step))
            result[name] = TemporalTotals(
                module_type=record.module_type,
                gated=record.gated,
                time_axis=record.time_axis,
                step_grad_norms=tuple(
                    math.sqrt(total / count) if count else 0.0
                    for total, count in zip(per_step, counts, strict=True)
                ),
                passes=sum(lengths.values()),
            )
        return result

    def unavailable(self) -> list[str]:
        """Nothing is reported: a module whose input cannot be observed is left out."""
        return []
