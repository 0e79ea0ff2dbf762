"""Gradient norms from every hook of a backward pass, accumulated on device in one batch.

A gradient hook does the least it can: one norm of the gradient it sees, appended with
its slot to a host-side list. When the backward pass ends (an autograd engine callback,
queued by the first hook of the pass), ``flush`` turns the whole list into a dozen
vector operations, whatever the number of hooks: the squared norms are added into one
per-slot vector, non-finite norms are counted, and the order in which they first turned
non-finite is kept as a tick (position in backward order plus a host clock), so that
"which layer went NaN first" needs no device read. Per-hook arithmetic was ~8 tiny
tensor operations; on a GPU each was a kernel launch.

Slots are handed out once (``allocate``) by the probes that record into the ledger;
each probe decodes its own slots from ``LedgerTotals``. Nothing is held beyond one
backward pass: the pending list is emptied at its end.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

from gradcheckup.probes._accumulators import Fetched, as_list
from gradcheckup.probes._hooks import ErrorLog
from gradcheckup.probes._ranks import smallest_each, summed
from gradcheckup.probes._tensors import (
    SMALL_TENSOR_ELEMENTS,
    norm_dtype,
    norm_vector,
    tensor_norm,
)

_CACHED_INDEXES = 32
# A deferred ledger measures the gradients it holds once they have this many elements
# (64 MiB of float32).
_DEFERRED_ELEMENTS = 1 << 24
_vector_norm = torch.linalg.vector_norm

_queue_callback = getattr(
    getattr(torch.autograd.Variable, "_execution_engine", None), "queue_callback", None
)
# The autograd node being run on this thread (None outside backward, and in the final
# callbacks of an outermost backward run).
_running_node = getattr(torch._C, "_current_autograd_node", None)


def sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums of squared norms, where the device has it."""
    # Apple's MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class _DeviceSums:
    """The per-slot vectors on one device."""

    def __init__(self, size: int, device: torch.device, since_step: bool) -> None:
        dtype = sum_dtype(device)
        self.squared = torch.zeros(size, dtype=dtype, device=device)
        self.nonfinite = torch.zeros(size, dtype=dtype, device=device)
        self.first_tick = torch.full((size,), math.inf, dtype=dtype, device=device)
        self.since_squared = torch.zeros(size, dtype=dtype, device=device) if since_step else None
        self.since_tick = (
            torch.full((size,), math.inf, dtype=dtype, device=device) if since_step else None
        )


@dataclass(frozen=True)
class StepSlice:
    """One optimizer step's share of the since-last-step vectors, on device.

    ``squared`` and ``ticks`` hold, per device, the values of ``slots`` (in that order)
    accumulated since the optimizer's previous step.
    """

    slots: tuple[int, ...]
    squared: tuple[torch.Tensor, ...]
    ticks: tuple[torch.Tensor, ...]
    fired: frozenset[int]
    """Slots that received any gradient since the previous step."""


@dataclass(frozen=True)
class LedgerTotals:
    """Host-side per-slot results, devices combined."""

    squared: Sequence[float]
    """Sum over backward passes of each slot's squared norm."""
    nonfinite: Sequence[int]
    """Backward passes in which the slot's norm was NaN or inf."""
    first_tick: Sequence[float]
    """Tick of the slot's first non-finite norm (inf if none)."""
    appearances: Sequence[int]
    """Backward passes in which the slot received a gradient."""


class GradientLedger:
    """Per-slot squared gradient norms, batched per backward pass (see the module doc)."""

    def __init__(self, errors: ErrorLog, precise: bool = False, deferred: bool = False) -> None:
        """Create an empty ledger.

        Args:
            errors: where a failure while accumulating is recorded (never raised: the
                flush runs inside the user's backward call).
            precise: take norms in float64 (see ``tensor_norm``); the device has it.
            deferred: keep the small recorded gradients themselves
                (``SMALL_TENSOR_ELEMENTS``) until the flush, which measures them together
                (``norm_vector``), at most ``_DEFERRED_ELEMENTS`` elements at a time
                (``check()``'s one pass). Holding a gradient only keeps autograd from
                accumulating into it in place.
        """
        self._errors = errors
        self._precise = precise
        self._deferred = deferred
        self._deferred_elements = 0
        # Dense real dtypes -> the dtype their norms accumulate in, looked up in every hook.
        self._accumulate_in = {
            dtype: norm_dtype(dtype, precise)
            for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
        }
        self._size = 0
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._queued = False
        self._devices: dict[torch.device, _DeviceSums] = {}
        self._appearances: Counter[int] = Counter()
        # Earlier windows (``start_window``): per device, squared / nonfinite / first tick.
        self._earlier: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._earlier_appearances: Counter[int] = Counter()
        self._indexes: OrderedDict[tuple[torch.device, tuple[int, ...]], torch.Tensor] = (
            OrderedDict()
        )
        self._positions: dict[torch.device, torch.Tensor] = {}
        self._since_step = False
        self._fired_since_step: set[int] = set()
        self._fired_in_pass: set[int] = set()
        self._sharded: set[int] = set()
        self._replicated: set[int] = set()
        self._latest_ticks: dict[int, int] | None = None
        self.clock = 0
        """Ticks handed out so far: one per recorded gradient, in backward order."""
        self.on_backward_end: Callable[[], None] | None = None
        """Called when a backward pass in which a hook noted itself ends."""

    # -- set-up --------------------------------------------------------------------------
    def allocate(self, count: int) -> int:
        """Reserve ``count`` consecutive slots; returns the first one.

        Raises:
            RuntimeError: a gradient was already recorded (the vectors have their size).
        """
        if self._devices or self._pending:
            raise RuntimeError("slots must be allocated before the first gradient")
        first = self._size
        self._size += count
        return first

    def mark_reduced(self, sharded: Sequence[int], replicated: Sequence[int]) -> None:
        """Slots that record gradients already reduced across ranks: ``sharded`` ones
        this rank's shard (FSDP2; across ranks the squares add up to the whole
        gradient's), ``replicated`` ones a gradient that is the same on every rank
        (DDP). Either way every rank records the same passes."""
        self._sharded.update(sharded)
        self._replicated.update(replicated)

    @property
    def records_shards(self) -> bool:
        """Whether some slots record gradient shards (``mark_reduced``)."""
        return bool(self._sharded)

    def keep_order(self) -> None:
        """Remember the tick of each slot's latest record, so that gradients handed over
        after their pass (``record_given``) take their place in backward order."""
        self._latest_ticks = {}

    def track_steps(self) -> None:
        """Keep since-last-step vectors as well (an optimizer is watched)."""
        if self._devices:
            raise RuntimeError("step tracking must start before the first gradient")
        self._since_step = True

    # -- hot path ------------------------------------------------------------------------
    def norm(self, gradient: torch.Tensor) -> torch.Tensor:
        """The norm the ledger records for ``gradient`` (0-d, on its device)."""
        accumulate_in = self._accumulate_in.get(gradient.dtype)
        if accumulate_in is None or gradient.layout != torch.strided or gradient.is_mps:
            return tensor_norm(gradient, self._precise and gradient.device.type != "mps")
        # The common case, as tensor_norm takes it, in one call: it runs in every hook.
        return _vector_norm(gradient, dtype=accumulate_in)

    def record(self, slot: int, gradient: torch.Tensor) -> None:
        """Note the norm of ``gradient`` under ``slot``; accumulated when backward ends."""
        if self._deferred and gradient.numel() <= SMALL_TENSOR_ELEMENTS:
            self._defer(((slot, gradient),), gradient.numel())
        else:
            self._pending.append((slot, self.norm(gradient)))
        if not self._queued:
            self.note_backward()

    def record_twice(self, first: int, second: int, gradient: torch.Tensor) -> None:
        """Note the norm of ``gradient`` under two slots, in this order."""
        if self._deferred and gradient.numel() <= SMALL_TENSOR_ELEMENTS:
            self._defer(((first, gradient), (second, gradient)), 2 * gradient.numel())
        else:
            norm = self.norm(gradient)
            self._pending += ((first, norm), (second, norm))
        if not self._queued:
            self.note_backward()

    def _defer(self, entries: tuple[tuple[int, torch.Tensor], ...], elements: int) -> None:
        self._pending += entries
        self._deferred_elements += elements
        if self._deferred_elements > _DEFERRED_ELEMENTS:  # bounded memory: measure now
            self._drain()

    def record_after_backward(self, gradients: Sequence[tuple[int, torch.Tensor, float]]) -> None:
        """Record and accumulate at once gradients read after their backward pass ended
        (reduced gradients), each as (slot, gradient, weight of its squared norm); no end
        of pass is marked for them."""
        for slot, gradient, weight in gradients:
            norm = self.norm(gradient)
            self._pending.append((slot, norm if weight == 1.0 else norm * math.sqrt(weight)))
        self.flush()

    def record_given(
        self, gradients: Sequence[tuple[int, torch.Tensor]], follows: Sequence[int | None]
    ) -> None:
        """Record and accumulate at once gradients handed over after their backward
        pass ended (``check()``'s ``torch.autograd.grad`` results), measured in fused
        kernels.

        Each takes its place in backward order right after the latest record of the
        slot it ``follows`` (a parameter's layer's output gradient: autograd produces
        the parameter's gradient from it, before the layer's input gradient). One that
        follows no recorded slot comes after every record so far, the last given first
        (later layers get their gradients first). Needs ``keep_order``.
        """
        latest = self._latest_ticks if self._latest_ticks is not None else {}
        self.flush()
        try:
            with torch.no_grad():
                norms = norm_vector([gradient for _, gradient in gradients], self._precise)
            last = self.clock + len(gradients) - 1
            ticks = []
            for position, anchor in enumerate(follows):
                tick = None if anchor is None else latest.get(anchor)
                ticks.append(last - position if tick is None else tick + 0.5)
            slots = [slot for slot, _ in gradients]
            self._advance(slots, record_ticks=False)
            positions = torch.tensor(ticks, dtype=torch.float64)
            self._accumulate(norms.device, slots, norms, positions)
            self._count_pass()
        except Exception as error:
            self._errors.record("gradient ledger", error)

    def note_backward(self) -> None:
        """Make sure the end of the running backward pass is marked (``flush`` and then
        ``on_backward_end``), also when nothing is recorded in it."""
        if self._queued or _queue_callback is None:
            return
        try:
            _queue_callback(self._backward_ended)
            self._queued = True
        except RuntimeError:
            # Not inside an autograd engine run: the next flush point takes it.
            pass

    def after_backward(self, action: Callable[[], None], where: str) -> None:
        """Run ``action`` once the running backward pass is over: after every engine
        callback queued during it (a data-parallel wrapper's reduction among them), as a
        callback queued by a callback. A failure is recorded under ``where``."""
        if _queue_callback is None:
            return
        queue = _queue_callback
        guarded = self._errors.guarded(where, action)
        try:
            queue(self._errors.guarded(where, lambda: queue(guarded)))
        except RuntimeError as error:  # not inside an autograd engine run
            self._errors.record(where, error)

    def _backward_ended(self) -> None:
        self.flush()
        if self.on_backward_end is None or self._ends_with_outer_backward():
            return
        self.on_backward_end()

    def _ends_with_outer_backward(self) -> bool:
        """True when the backward run that ended was nested in the node of an outer one
        (reentrant activation checkpointing runs its own backward inside its node): the
        pass goes on. A post hook on that node marks the pass's end in the outer run,
        where an engine callback can be queued again."""
        node = _running_node() if _running_node is not None else None
        register = getattr(node, "register_hook", None)
        if register is None:
            return False
        try:
            register(self._outer_node_done)
        except RuntimeError:
            return False
        return True

    def _outer_node_done(self, grad_inputs: object, grad_outputs: object) -> None:
        self.note_backward()

    def flush(self) -> None:
        """Accumulate everything recorded since the last flush (a few ops per device)."""
        self._queued = False
        self._drain()
        self._count_pass()

    def _drain(self) -> None:
        self._deferred_elements = 0
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self._flush(pending)
        except Exception as error:
            self._errors.record("gradient ledger", error)

    def _advance(self, slots: list[int], record_ticks: bool = True) -> int:
        """Count ``slots`` as recorded, in this order; returns the clock before them."""
        base = self.clock
        self.clock += len(slots)
        self._fired_in_pass.update(slots)
        if self._latest_ticks is not None and record_ticks:
            self._latest_ticks.update(zip(slots, range(base, base + len(slots)), strict=True))
        return base

    def _count_pass(self) -> None:
        """The slots recorded since the last count appeared in one more pass."""
        fired, self._fired_in_pass = self._fired_in_pass, set()
        self._appearances.update(fired)
        if self._since_step:
            self._fired_since_step |= fired

    def _flush(self, pending: list[tuple[int, torch.Tensor]]) -> None:
        """Accumulate ``pending`` (norms, or gradients when deferred); its ticks are its
        positions after the clock's."""
        slots = [slot for slot, _ in pending]
        base = self._advance(slots)
        devices = {norm.device for _, norm in pending}
        for device in devices:
            if len(devices) == 1:
                chosen = list(enumerate(pending))
                positions = self._positions_on(device, len(pending)) + base
            else:
                chosen = [
                    (position, item)
                    for position, item in enumerate(pending)
                    if item[1].device == device
                ]
                positions = torch.tensor([position + base for position, _ in chosen])
            values = [value for _, (_, value) in chosen]
            self._accumulate(
                device,
                [slot for _, (slot, _) in chosen],
                self._deferred_norms(values) if self._deferred else torch.stack(values),
                positions,
            )

    def _deferred_norms(self, gradients: list[torch.Tensor]) -> torch.Tensor:
        """Their norms in one vector; a gradient recorded under several slots (a layer's
        output and per-unit signal) is measured once."""
        first_of: dict[int, int] = {}
        unique: list[torch.Tensor] = []
        places = []
        for gradient in gradients:
            place = first_of.get(id(gradient))
            if place is None:
                place = first_of[id(gradient)] = len(unique)
                unique.append(gradient)
            places.append(place)
        norms = norm_vector(unique, self._precise)
        if len(unique) == len(gradients):
            return norms
        return norms[torch.tensor(places).to(norms.device, non_blocking=True)]

    def _accumulate(
        self,
        device: torch.device,
        slots: list[int],
        norms: torch.Tensor,
        ticks: torch.Tensor,
    ) -> None:
        """Add a 1-d vector of ``norms`` on ``device`` into the slots' sums; ``ticks``
        (of any dtype, on any device) are their places in backward order."""
        sums = self._sums_on(device)
        index = self._index_on(device, slots)
        with torch.no_grad():
            dtype = sums.squared.dtype
            squared = norms.to(dtype).square_()
            ticks = ticks.to(device=device, dtype=dtype, non_blocking=True)
            bad = squared.isfinite().logical_not_()
            sums.squared.index_add_(0, index, squared)
            sums.nonfinite.index_add_(0, index, bad.to(squared.dtype))
            first = torch.where(bad, ticks, math.inf)
            sums.first_tick.scatter_reduce_(0, index, first, "amin")
            if sums.since_squared is not None and sums.since_tick is not None:
                sums.since_squared.index_add_(0, index, squared)
                sums.since_tick.scatter_reduce_(0, index, first, "amin")

    def _sums_on(self, device: torch.device) -> _DeviceSums:
        sums = self._devices.get(device)
        if sums is None:
            sums = self._devices[device] = _DeviceSums(self._size, device, self._since_step)
        return sums

    def _index_on(self, device: torch.device, slots: Sequence[int]) -> torch.Tensor:
        """The slots as a device index; the same backward order each pass hits the cache."""
        key = (device, tuple(slots))
        index = self._indexes.get(key)
        if index is None:
            index = torch.tensor(key[1], dtype=torch.long).to(device, non_blocking=True)
            self._indexes[key] = index
            if len(self._indexes) > _CACHED_INDEXES:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(key)
        return index

    def _positions_on(self, device: torch.device, count: int) -> torch.Tensor:
        positions = self._positions.get(device)
        if positions is None or positions.numel() < count:
            size = max(count, 2 * (0 if positions is None else positions.numel()))
            positions = torch.arange(size, dtype=sum_dtype(device), device=device)
            self._positions[device] = positions
        return positions[:count]

    # -- steps ---------------------------------------------------------------------------
    def take_since_step(self, slots: Sequence[int]) -> StepSlice:
        """Move the since-last-step values of ``slots`` out (they restart from zero)."""
        self.flush()
        squared, ticks = [], []
        for device, sums in self._devices.items():
            if sums.since_squared is None or sums.since_tick is None:
                continue
            index = self._index_on(device, slots)
            squared.append(sums.since_squared.index_select(0, index))
            ticks.append(sums.since_tick.index_select(0, index))
            sums.since_squared.index_fill_(0, index, 0.0)
            sums.since_tick.index_fill_(0, index, math.inf)
        wanted = set(slots)
        fired = frozenset(self._fired_since_step & wanted)
        self._fired_since_step -= wanted
        return StepSlice(tuple(slots), tuple(squared), tuple(ticks), fired)

    # -- windows -------------------------------------------------------------------------
    def start_window(self) -> None:
        """Fold the current window into the earlier windows' totals; a new one starts."""
        self.flush()
        for device, sums in self._devices.items():
            earlier = self._earlier.get(device)
            if earlier is None:
                self._earlier[device] = (
                    sums.squared.clone(),
                    sums.nonfinite.clone(),
                    sums.first_tick.clone(),
                )
            else:
                earlier[0].add_(sums.squared)
                earlier[1].add_(sums.nonfinite)
                torch.minimum(earlier[2], sums.first_tick, out=earlier[2])
            sums.squared.zero_()
            sums.nonfinite.zero_()
            sums.first_tick.fill_(math.inf)
        self._earlier_appearances.update(self._appearances)
        self._appearances = Counter()

    # -- report --------------------------------------------------------------------------
    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """Every per-slot vector, per device (after a flush): of all windows so far, or
        of the current one."""
        self.flush()
        values: dict[Hashable, torch.Tensor] = {}
        for position, (device, sums) in enumerate(self._devices.items()):
            vectors = (sums.squared, sums.nonfinite, sums.first_tick)
            earlier = self._earlier.get(device) if since_start else None
            if earlier is not None:
                vectors = (
                    vectors[0] + earlier[0],
                    vectors[1] + earlier[1],
                    torch.minimum(vectors[2], earlier[2]),
                )
            values[("squared", position)] = vectors[0]
            values[("nonfinite", position)] = vectors[1]
            values[("first_tick", position)] = vectors[2]
        return values

    def totals(self, fetched: Fetched, since_start: bool = True) -> LedgerTotals:
        """Combine the devices' fetched vectors (``device_values`` with the same
        ``since_start``) into host-side per-slot lists."""
        size = self._size
        per_device = [
            [as_list(fetched[(key, position)]) for key in ("squared", "nonfinite", "first_tick")]
            for position in range(len(self._devices))
        ]
        if not per_device:  # nothing recorded yet
            squared, nonfinite, first_tick = [0.0] * size, [0.0] * size, [math.inf] * size
        elif len(per_device) == 1:
            squared, nonfinite, first_tick = per_device[0]
        else:
            squared = summed([vectors[0] for vectors in per_device])
            nonfinite = summed([vectors[1] for vectors in per_device])
            first_tick = smallest_each([vectors[2] for vectors in per_device])
        seen = self._appearances
        if since_start and self._earlier_appearances:
            seen = seen + self._earlier_appearances
        appearances = [seen.get(slot, 0) for slot in range(size)]
        counts = [round(value) for value in nonfinite]
        return LedgerTotals(squared, counts, first_tick, appearances)

    def combined(self, ranks: Sequence[LedgerTotals]) -> LedgerTotals:
        """Every rank's totals as the job's: squared norms, non-finite passes and
        appearances add up (each rank's passes are passes of the job), the first
        non-finite tick is the earliest. Slots of reduced gradients (``mark_reduced``)
        are the same passes on every rank: their counts are the most any rank saw, and a
        replicated gradient's squared norms are the first rank's."""
        if len(ranks) == 1:
            return ranks[0]
        squared = summed([totals.squared for totals in ranks])
        appearances = summed([totals.appearances for totals in ranks])
        nonfinite = summed([totals.nonfinite for totals in ranks])
        for slot in self._sharded | self._replicated:
            appearances[slot] = max(totals.appearances[slot] for totals in ranks)
            nonfinite[slot] = max(totals.nonfinite[slot] for totals in ranks)
        for slot in self._replicated:
            squared[slot] = ranks[0].squared[slot]
        return LedgerTotals(
            squared=squared,
            nonfinite=[round(value) for value in nonfinite],
            first_tick=smallest_each([totals.first_tick for totals in ranks]),
            appearances=[round(value) for value in appearances],
        )
