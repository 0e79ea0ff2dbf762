"""Gradients that a data-parallel wrapper reduces across ranks, read once reduced.

Under DDP each rank's hooks see its own micro-batch gradient; DDP then averages the
gradients into ``.grad``, and that average is what the optimizer applies and what a
single process would compute on the whole global batch. Under FSDP2 (``fully_shard``)
a parameter is a ``DTensor`` shard the forward never uses: a hook on it never fires,
and the reduced gradient arrives in the shard's ``.grad``. For both, the parameter
probe hooks nothing; at the end of each measured backward pass, after the wrapper's
own end-of-backward callback has reduced the gradients, each rank takes the norm of its
``.grad`` (its local shard under FSDP2). The ledger knows which slots these are: a
replicated (DDP) gradient is the same on every rank and counts once; the squares of
the ranks' shards add up to the whole gradient's (``GradientLedger.mark_reduced``).
Nothing is gathered.

What is measured is the reduced gradient as the wrapper leaves it in ``.grad``:
accumulated over micro-batches if they are not zeroed in between, as the optimizer
will see it. A pass the wrapper does not reduce (``no_sync()``,
``set_requires_gradient_sync(False)``) is not read.

The end of backward is found through a gradient hook on the model's output (one per
pass), which asks the ledger to run the read after every callback queued during the
backward pass, the wrapper's included (``GradientLedger.after_backward``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet, stepping_aside
from gradcheckup.probes._tensors import carries_gradient, iter_tensors, local_part


def is_sharded(param: torch.Tensor) -> bool:
    """True for a parameter that holds only this rank's shard (FSDP2)."""
    return local_part(param).sharded


def data_parallel_of(model: nn.Module) -> nn.Module | None:
    """The ``DistributedDataParallel`` module in ``model`` (itself or wrapped), if any."""
    parallel = getattr(nn.parallel, "DistributedDataParallel", None)
    if parallel is None:
        return None
    return next((module for module in model.modules() if isinstance(module, parallel)), None)


class ReducedGradients:
    """Reads the reduced gradients (or gradient shards) of parameters after backward."""

    def __init__(
        self,
        context: ProbeContext,
        root: nn.Module,
        slots: Sequence[tuple[int, nn.Parameter]],
        data_parallel: nn.Module | None,
    ) -> None:
        """Mark ``slots`` in the ledger as reduced: sharded or replicated.

        Args:
            context: state shared with the monitor's other probes.
            root: the watched model, whose output marks the start of backward.
            slots: (ledger slot, parameter) of each parameter read after backward.
            data_parallel: the DDP module whose ``no_sync()`` skips a reduction.
        """
        self._context = context
        self._root = root
        self._slots = list(slots)
        self._data_parallel = data_parallel
        # Per slot: the local gradient last read and its version; unchanged means the
        # wrapper did not reduce into it this pass.
        self._seen: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        context.ledger.mark_reduced(
            sharded=[slot for slot, param in self._slots if is_sharded(param)],
            replicated=[slot for slot, param in self._slots if not is_sharded(param)],
        )

    def attach(self, hooks: HookSet) -> None:
        """Hook the model's forward, to find each backward pass through its output."""
        if self._slots:
            hooks.add(self._root.register_forward_hook(self._on_output))

    def _reduces_this_pass(self) -> bool:
        return self._data_parallel is None or bool(
            getattr(self._data_parallel, "require_backward_grad_sync", True)
        )

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        context = self._context
        if not context.active or stepping_aside() or not torch.is_grad_enabled():
            return
        try:
            tensors = [tensor for tensor in iter_tensors(output) if carries_gradient(tensor)]
            if tensors:
                reads = context.sampled and self._reduces_this_pass()
                # Backward may start from any of the outputs (a loss inside a
                # ModelOutput, one head of several): the first to get its gradient acts.
                hook = _FirstGradient(self._read_after_backward if reads else self._count_only)
                for tensor in tensors:
                    tensor.register_hook(hook)
        except Exception as error:
            context.errors.record("reduced-gradient output hook", error)

    def _count_only(self) -> None:
        self._context.ledger.note_backward()  # the pass counts without parameter hooks

    def _read_after_backward(self) -> None:
        ledger = self._context.ledger
        ledger.note_backward()
        ledger.after_backward(self._read, "reduced-gradient read")

    def _read(self) -> None:
        reduced = []
        with torch.no_grad():
            for slot, param in self._slots:
                grad = param.grad
                if grad is None:
                    continue
                local, square_weight = local_part(grad)
                seen = self._seen.get(slot)
                if seen is None or seen[0]() is not local or seen[1] != local._version:
                    self._seen[slot] = (weakref.ref(local), local._version)
                    reduced.append((slot, local, square_weight or 1.0))
            if reduced:
                self._context.parameter_gradient_seen = True
                self._context.ledger.record_after_backward(reduced)


class _FirstGradient:
    """A gradient hook that calls ``action`` for the first gradient it sees, once."""

    __slots__ = ("action",)

    def __init__(self, action: Callable[[], None]) -> None:
        self.action: Callable[[], None] | None = action

    def __call__(self, grad: torch.Tensor) -> None:
        action, self.action = self.action, None
        if action is not None:
            action()
