"""What the command line feeds a model: the model itself, a batch per pass, the loss
``--loss`` names, all moved to ``--device``.

A batch is ``(inputs, target)``; ``make_batch(step)`` gives the one for each pass.
"""

from __future__ import annotations

import argparse
import math
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradcheckup._check import raised_by_the_model
from gradcheckup._inputs import (
    LossFn,
    check_devices,
    cross_entropy_loss,
    describe,
    mse_loss,
    primary_output,
    split_inputs,
)
from gradcheckup.examples import build_example
from gradcheckup.loading import build_module, load_model, load_tensors, resolve_callable

__all__ = [
    "MakeBatch",
    "forward_failures",
    "model_and_batches",
    "named_loss",
    "require_values",
    "to_device",
]

Batch = tuple[Any, Any]
MakeBatch = Callable[[int], Batch]
"""``make_batch(step) -> (inputs, target)``."""


def model_and_batches(args: argparse.Namespace) -> tuple[nn.Module, str, list[str], MakeBatch]:
    """The model the command names, its display name, loading notes, and its batches.

    Raises:
        LoadError: a model file, factory or tensor file that cannot be loaded.
        ValueError: no model or no inputs given, both a file and an example, or an
            ``--int-high`` the ``--dtype`` cannot hold.
    """
    _check_int_high(args)
    model, name, notes, example_shape = _model(args)
    return model, name, notes, _batches(args, example_shape)


def _model(args: argparse.Namespace) -> tuple[nn.Module, str, list[str], tuple[int, ...] | None]:
    """The model, its name, notes, and the input shape of a bundled example."""
    if args.command == "check":
        return build_module(args.factory, "factory"), args.factory, [], None
    if args.example and args.model_file:
        raise ValueError("report: give a MODEL_FILE or --example, not both")
    if args.example:
        model, shape = build_example(args.example)
        return model, f"example {args.example}", [], shape
    if args.model_file:
        loaded = load_model(
            args.model_file, factory=args.factory, trust=args.trust, factory_option="--factory"
        )
        return loaded.model, f"{args.model_file} ({loaded.format})", loaded.notes, None
    raise ValueError("report: give a MODEL_FILE (or --example NAME)")


def _batches(args: argparse.Namespace, example_shape: tuple[int, ...] | None) -> MakeBatch:
    """Batches from ``--batch``, else ``--input``, else random ``--input-shape`` tensors."""
    batch_factory = resolve_callable(args.batch, "--batch") if _has_batch(args) else None
    given_target = load_tensors(args.target, "--target") if args.target else None
    if batch_factory is not None:
        return _factory_batches(batch_factory, f"--batch {args.batch!r}", given_target)
    if args.input:
        fixed = load_tensors(args.input, "--input")
        return lambda step: (fixed, given_target)
    shapes = list(args.input_shapes) or ([example_shape] if example_shape else [])
    if not shapes:
        raise ValueError(
            "inputs: give --input-shape (e.g. 8,3,32,32), --input FILE or, for check, --batch"
        )
    dtype = getattr(torch, args.dtype)
    _check_memory(shapes, dtype)
    generator = torch.Generator().manual_seed(args.seed)

    def random_batch(step: int) -> Batch:
        tensors = [_random_tensor(shape, dtype, args.int_high, generator) for shape in shapes]
        return (tensors[0] if len(tensors) == 1 else tuple(tensors)), given_target

    return random_batch


def _check_int_high(args: argparse.Namespace) -> None:
    """Integer inputs are drawn from ``[0, --int-high)``: a range the dtype can hold."""
    dtype = getattr(torch, args.dtype)
    if dtype.is_floating_point:
        return
    limit = torch.iinfo(dtype).max
    if not 1 <= args.int_high <= limit:
        raise ValueError(
            f"--int-high: integer inputs are drawn from [0, N), so N must be from 1 to "
            f"{limit:,} for --dtype {args.dtype}; got {args.int_high}"
        )


def _check_memory(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> None:
    """Refuse random inputs larger than the machine's memory, before allocating them."""
    needed = sum(math.prod(shape) for shape in shapes) * dtype.itemsize
    available = _physical_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"--input-shape: the random inputs need {needed / 2**30:.1f} GiB of {dtype}, more "
            f"than this machine's {available / 2**30:.1f} GiB of memory"
        )


def _physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _has_batch(args: argparse.Namespace) -> bool:
    return args.command == "check" and bool(args.batch)


def _factory_batches(batch_factory: Callable[[], Any], label: str, given_target: Any) -> MakeBatch:
    """Batches from a ``--batch`` callable: inputs, or ``{'inputs': ..., 'target': ...}``.

    The callable's own error becomes a one-line ``ValueError`` naming ``label``.
    """

    def from_factory(step: int) -> Batch:
        try:
            batch = batch_factory()
        except Exception as error:
            raise ValueError(f"{label}: raised {_last_meaningful_line(error)}") from error
        # Each step's inputs come with that step's own target.
        if isinstance(batch, dict) and "inputs" in batch and set(batch) <= {"inputs", "target"}:
            return batch["inputs"], batch.get("target", given_target)
        return batch, given_target

    return from_factory


def _random_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, int_high: int, generator: torch.Generator
) -> torch.Tensor:
    """Standard normal values, or integers in ``[0, int_high)`` for an integer dtype."""
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, int_high, shape, generator=generator, dtype=dtype)


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (inside tuples, lists, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    return value


def named_loss(kind: str, seed: int) -> LossFn | None:
    """The loss ``--loss`` names, as a ``loss_fn`` for ``gcu.check``.

    Args:
        kind: ``auto`` (None: check's default loss), ``sum`` (``output.sum()``),
            ``mse`` or ``cross_entropy``; the last two draw random targets (seeded with
            ``seed + 1``, fresh for each pass) when no target is given.
        seed: the command's ``--seed``.
    """
    if kind == "auto":
        return None
    generator = torch.Generator().manual_seed(seed + 1)

    def loss(output: Any, target: Any = None) -> torch.Tensor:
        prediction = primary_output(output).float()
        if kind == "sum":
            return prediction.sum()
        if kind == "mse":
            if target is None:
                target = torch.randn(prediction.shape, generator=generator)
            return mse_loss(prediction, target.to(prediction.device))
        # Every position of every sample is one classification over the last dimension.
        logits = (
            prediction.reshape(-1, prediction.shape[-1])
            if prediction.dim() > 1
            else prediction[None]
        )
        if target is None:
            target = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=generator)
        return cross_entropy_loss(logits, target.to(logits.device).reshape(-1))

    return loss


def require_values(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers hold no values (the meta device).

    Checked before the model moves to ``--device``: moving a meta tensor fails with
    torch's own message, which says nothing of where the model came from.

    Raises:
        ValueError: what ``check_devices`` says of meta tensors.
    """
    check_devices((), {}, [*model.parameters(), *model.buffers()])


_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_MODULE_FILE = Path(nn.Module.__call__.__code__.co_filename).resolve()


@contextmanager
def forward_failures(inputs: Any) -> Iterator[None]:
    """Report an exception raised by the model's own forward as one line.

    The model's error (TorchScript's included, whose message carries a traceback of
    its own) becomes ``ValueError("the model's forward pass failed on (<inputs>):
    <Type>: <last meaningful line>")``, chained to the original. Anything else (a
    usage error, a failure in gradcheckup itself) passes unchanged.

    Args:
        inputs: the batch the model was given, described in the message.
    """
    try:
        yield
    except Exception as error:
        failure = _raised_by_model(error)
        if failure is None:
            raise
        positional, keywords = split_inputs(inputs)
        raise ValueError(
            f"the model's forward pass failed on ({describe(positional, keywords)}): "
            f"{_last_meaningful_line(failure)}"
        ) from error


def _raised_by_model(error: BaseException) -> BaseException | None:
    """The innermost cause of ``error``, if it was raised while a module ran its forward
    (and not by gradcheckup's own code)."""
    if raised_by_the_model(error):  # check() let it through, and knows where it came from
        return error
    root, seen = error, {id(error)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    frames = traceback.extract_tb(root.__traceback__)
    in_forward = any(
        frame.name == "_call_impl" and Path(frame.filename).resolve() == _MODULE_FILE
        for frame in frames
    )
    if not in_forward or Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR):
        return None
    return root


def _last_meaningful_line(error: BaseException) -> str:
    """``Type: message`` on one line; for a message that carries a traceback (TorchScript
    prints the script's call stack), its last line, which says what went wrong."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[-1] if any(line.startswith("Traceback") for line in lines) else " ".join(lines)
    head = text.partition(": ")[0]
    already_typed = head.isidentifier() and (head.endswith("Error") or head.endswith("Exception"))
    notes = [note.strip() for note in getattr(error, "__notes__", ()) if "\n" not in note.strip()]
    typed = text if already_typed else f"{type(error).__name__}: {text}"
    return "; ".join([typed, *notes])
