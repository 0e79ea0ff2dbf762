"""What the command line feeds a model: the model itself, a batch per pass, the loss
``--loss`` names, all moved to ``--device``.

A batch is ``(inputs, target)``; ``make_batch(step)`` gives the one for each pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradcheckup._inputs import LossFn, cross_entropy_loss, mse_loss, primary_output
from gradcheckup.examples import build_example
from gradcheckup.loading import build_module, load_model, load_tensors, resolve_callable

__all__ = ["MakeBatch", "model_and_batches", "named_loss", "to_device"]

Batch = tuple[Any, Any]
MakeBatch = Callable[[int], Batch]
"""``make_batch(step) -> (inputs, target)``."""


def model_and_batches(args: argparse.Namespace) -> tuple[nn.Module, str, list[str], MakeBatch]:
    """The model the command names, its display name, loading notes, and its batches.

    Raises:
        LoadError: a model file, factory or tensor file that cannot be loaded.
        ValueError: no model or no inputs given, or both a file and an example.
    """
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
        return _factory_batches(batch_factory, given_target)
    if args.input:
        fixed = load_tensors(args.input, "--input")
        return lambda step: (fixed, given_target)
    shapes = list(args.input_shapes) or ([example_shape] if example_shape else [])
    if not shapes:
        raise ValueError(
            "inputs: give --input-shape (e.g. 8,3,32,32), --input FILE or, for check, --batch"
        )
    generator = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)

    def random_batch(step: int) -> Batch:
        tensors = [_random_tensor(shape, dtype, args.int_high, generator) for shape in shapes]
        return (tensors[0] if len(tensors) == 1 else tuple(tensors)), given_target

    return random_batch


def _has_batch(args: argparse.Namespace) -> bool:
    return args.command == "check" and bool(args.batch)


def _factory_batches(batch_factory: Callable[[], Any], given_target: Any) -> MakeBatch:
    """Batches from a ``--batch`` callable: inputs, or ``{'inputs': ..., 'target': ...}``."""

    def from_factory(step: int) -> Batch:
        # Each step's inputs come with that step's own target.
        batch = batch_factory()
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
