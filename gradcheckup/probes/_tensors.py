"""Small tensor utilities shared by the probes."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch

_MAX_NESTING = 4
SMALL_TENSOR_ELEMENTS = 1 << 12
"""A tensor this small costs more in per-call overhead than in arithmetic to measure:
``norm_vector`` stacks such tensors, and ``check()``'s ledger keeps them until the end of
the pass to measure them together (larger ones gain nothing from either: the copy, or
the memory held, costs more)."""
# ``norm_vector`` stacks small tensors in groups of at least ``_STACKED_GROUP``; one
# stack holds at most ``_STACKED_CHUNK_ELEMENTS`` (a bounded copy, 32 MiB in float32).
_STACKED_GROUP = 4
_STACKED_CHUNK_ELEMENTS = 1 << 23
# Subclasses (DTensor, quantised wrappers) may stack to something else.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def iter_tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Yield the tensors inside nested containers.

    Tuples, lists, mappings (Hugging Face ``ModelOutput`` too) and dataclass instances
    are searched up to a few levels deep.
    """
    if isinstance(value, torch.Tensor):
        yield value
    elif depth >= _MAX_NESTING or isinstance(value, (str, bytes)):
        return
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from iter_tensors(item, depth + 1)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from iter_tensors(item, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from iter_tensors(getattr(value, field.name), depth + 1)


def carries_gradient(tensor: torch.Tensor) -> bool:
    """True for a floating tensor that takes part in autograd."""
    return tensor.requires_grad and (tensor.is_floating_point() or tensor.is_complex())


def tensor_norm(tensor: torch.Tensor, precise: bool = False) -> torch.Tensor:
    """L2 norm as a real 0-d tensor on the tensor's device.

    float64 for float64 (and complex128) tensors, float32 for everything narrower,
    because fp16 norms overflow at 65504 and bf16 sums stall. A float32 sum of squares
    still underflows for entries below ~1e-19 and overflows above ~1e19: ``precise``
    accumulates in float64 whatever the dtype (exact over float32's whole range, and
    ~6x slower on a CPU, so ``check()`` uses it and ``watch()`` does not). A complex
    tensor's norm is the norm of its entries' magnitudes. Sparse tensors
    (``nn.Embedding(sparse=True)`` gradients) are coalesced first so repeated indices
    add up.
    """
    if tensor.is_sparse:
        tensor = tensor.coalesce().values()
    return torch.linalg.vector_norm(tensor, dtype=norm_dtype(tensor.dtype, precise))


def norm_dtype(dtype: torch.dtype, precise: bool = False) -> torch.dtype:
    """The dtype ``vector_norm`` accumulates in: never narrower than ``dtype``, at least
    32-bit; complex inputs need a complex one (the norm itself comes back real)."""
    wide = precise or dtype in (torch.float64, torch.complex128)
    if dtype.is_complex:
        return torch.complex128 if wide else torch.complex64
    return torch.float64 if wide else torch.float32


def tensor_norms(tensors: Sequence[torch.Tensor], precise: bool = False) -> list[torch.Tensor]:
    """``tensor_norm`` of each tensor, in order, fused where torch can fuse.

    Dense real tensors go through one ``torch._foreach_norm`` per accumulation dtype:
    float64 for float64 tensors, and for every tensor when ``precise`` (except on Apple's
    MPS, which has no float64), else float32. Complex and sparse ones are measured one by
    one.
    """
    if tensors and (precise or not any(tensor.dtype == torch.float64 for tensor in tensors)):
        # Many parameters: one fused call when every tensor takes it (torch refuses
        # complex and sparse ones, and float64 on MPS; those are then measured below).
        chosen = tensors if not torch.is_grad_enabled() else [t.detach() for t in tensors]
        try:
            return list(
                torch._foreach_norm(chosen, 2, dtype=torch.float64 if precise else torch.float32)
            )
        except (RuntimeError, NotImplementedError, TypeError):
            pass
    norms: list[torch.Tensor | None] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for position, tensor in enumerate(tensors):
        if tensor.layout != torch.strided or not tensor.is_floating_point():
            continue
        wide = tensor.dtype == torch.float64 or (precise and tensor.device.type != "mps")
        by_dtype.setdefault(torch.float64 if wide else torch.float32, []).append(position)
    for dtype, positions in by_dtype.items():
        # Under no_grad (every caller but a user's create_graph backward) the tensors
        # need no detaching: nothing records a graph.
        chosen = [tensors[p] for p in positions]
        if torch.is_grad_enabled():
            chosen = [tensor.detach() for tensor in chosen]
        fused = torch._foreach_norm(chosen, 2, dtype=dtype)
        for position, norm in zip(positions, fused, strict=True):
            norms[position] = norm
    return [
        norm
        if norm is not None
        else tensor_norm(tensor.detach(), precise and tensor.device.type != "mps")
        for norm, tensor in zip(norms, tensors, strict=True)
    ]


def norm_vector(tensors: Sequence[torch.Tensor], precise: bool = False) -> torch.Tensor:
    """``tensor_norm`` of each tensor, as one 1-d vector on the first tensor's device
    (float64 when any norm is, else float32).

    Small tensors of one shape, dtype and device (the weights of 10,000 identical
    blocks) are stacked, a bounded chunk at a time, and measured in one reduction:
    torch's fused ``_foreach_norm`` still loops over the tensors one by one on a CPU,
    about six times slower. Everything else goes through ``tensor_norms``.
    """
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    groups: dict[tuple[type, torch.Size, torch.dtype], list[int]] = {}
    for position, tensor in enumerate(tensors):
        groups.setdefault((type(tensor), tensor.shape, tensor.dtype), []).append(position)
    pieces: list[torch.Tensor] = []
    placed: list[int] = []
    with torch.no_grad():  # no per-tensor detach: nothing records a graph
        for (kind, shape, dtype), positions in groups.items():
            first = tensors[positions[0]]
            if (
                len(positions) < _STACKED_GROUP
                or kind not in _PLAIN_TENSORS
                or not dtype.is_floating_point
                or not 0 < shape.numel() <= SMALL_TENSOR_ELEMENTS
                or first.layout != torch.strided
                or (precise and first.is_mps)
            ):
                continue
            per_chunk = max(1, _STACKED_CHUNK_ELEMENTS // shape.numel())
            for start in range(0, len(positions), per_chunk):
                chunk = positions[start : start + per_chunk]
                try:
                    stacked = torch.stack([tensors[position] for position in chunk])
                except (RuntimeError, NotImplementedError):  # devices or layouts differ
                    continue
                # One row per tensor (a 0-d one too), reduced along the row.
                rows = stacked.reshape(len(chunk), -1)
                norms = torch.linalg.vector_norm(rows, dim=1, dtype=norm_dtype(dtype, precise))
                pieces.append(norms.to(device))
                placed += chunk
    if len(placed) < len(tensors):
        taken = set(placed)
        rest = [position for position in range(len(tensors)) if position not in taken]
        norms = tensor_norms([tensors[position] for position in rest], precise)
        pieces.append(torch.stack([norm.to(device) for norm in norms]))
        placed += rest
    dtype = torch.float64 if any(piece.dtype == torch.float64 for piece in pieces) else None
    joined = torch.cat([piece.to(dtype) if dtype else piece for piece in pieces])
    if all(position == expected for expected, position in enumerate(placed)):
        return joined
    index = torch.tensor(placed, dtype=torch.long).to(device, non_blocking=True)
    return torch.empty_like(joined).index_copy_(0, index, joined)


def norm_of_norms(norms: Sequence[torch.Tensor]) -> torch.Tensor:
    """The norm of the tensors whose norms these are, on the first one's device
    (float64 where the device has it)."""
    device = norms[0].device
    stacked = torch.stack([norm.to(device) for norm in norms])
    if device.type != "mps":  # Apple's MPS has no float64
        stacked = stacked.to(torch.float64)
    return torch.linalg.vector_norm(stacked)


class LocalPart(NamedTuple):
    """This rank's part of a tensor (see ``local_part``)."""

    tensor: torch.Tensor
    square_weight: float | None
    """None for a whole tensor. For a shard, what its squared norm weighs in the sum
    over every rank that adds up to the whole tensor's: 1 over the number of ranks that
    hold the same shard (HSDP replicates shards)."""

    @property
    def sharded(self) -> bool:
        """Whether this is a shard of the whole rather than a full replica."""
        return self.square_weight is not None


def local_part(tensor: torch.Tensor) -> LocalPart:
    """A distributed tensor's (``DTensor``, FSDP2's parameters and gradients) local
    part, and whether that part is a shard; any other tensor itself, whole. Nothing is
    gathered."""
    if not _is_distributed_tensor(tensor):
        return LocalPart(tensor, None)
    placements = tensor.placements  # type: ignore[attr-defined]
    to_local = tensor.to_local  # type: ignore[attr-defined]
    if not any(placement.is_shard() for placement in placements):
        return LocalPart(to_local(), None)
    return LocalPart(to_local(), 1.0 / replication(tensor))


def distributed_tensors_loaded() -> bool:
    """Whether a ``DTensor`` can exist: none can before its module is imported."""
    return "torch.distributed.tensor" in sys.modules


def _is_distributed_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor``; none can exist before its module is imported,
    and the common case costs one dictionary lookup."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None) if module is not None else None
    return dtensor is not None and isinstance(tensor, dtensor)


def replication(tensor: torch.Tensor) -> int:
    """How many ranks hold the same local part of a ``DTensor`` (1 for others): the
    sizes of the mesh dimensions it is replicated along, multiplied."""
    placements = getattr(tensor, "placements", None)
    mesh = getattr(tensor, "device_mesh", None)
    if placements is None or mesh is None:
        return 1
    copies = 1
    for dim, placement in enumerate(placements):
        if placement.is_replicate():
            copies *= mesh.size(dim)
    return copies
