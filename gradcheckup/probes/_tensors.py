"""Small tensor utilities shared by the probes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

_MAX_NESTING = 4


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


def squared_norm(tensor: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm as a real 0-d tensor on the tensor's device.

    float64 for float64 (and complex128) tensors, float32 for everything narrower,
    because fp16 norms overflow at 65504 and bf16 sums stall. A complex tensor's norm is
    the norm of its entries' magnitudes. Sparse gradients (``nn.Embedding(sparse=True)``)
    are coalesced first so repeated indices add up.
    """
    if tensor.is_sparse:
        tensor = tensor.coalesce().values()
    return torch.linalg.vector_norm(tensor, dtype=_norm_dtype(tensor.dtype)).square()


def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``vector_norm`` accumulates in: never narrower than ``dtype``, at least
    32-bit; complex inputs need a complex one (the norm itself comes back real)."""
    wide = dtype in (torch.float64, torch.complex128)
    if dtype.is_complex:
        return torch.complex128 if wide else torch.complex64
    return torch.float64 if wide else torch.float32


def total_squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the tensors' squared norms, a float32 0-d tensor on the first one's device."""
    with torch.no_grad():
        device = tensors[0].device
        return torch.stack([squared_norm(tensor.detach()).to(device) for tensor in tensors]).sum()
