"""check(): one forward and backward pass, observed, with no side effects."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradcheckup._inputs import (
    LossFn,
    check_devices,
    describe,
    loss_of,
    split_inputs,
    validated_loss,
    with_input_gradients,
)
from gradcheckup._state import model_state_preserved
from gradcheckup.config import Config
from gradcheckup.monitor import Monitor, require_module, resolve_config
from gradcheckup.report import Report

__all__ = ["check"]


def check(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    loss_fn: LossFn | None = None,
    config: Config | None = None,
) -> Report:
    """Run one forward and backward pass and diagnose the model's gradients.

    The model is left exactly as it was: parameters and existing ``.grad`` (gradients
    are taken with ``torch.autograd.grad``, never accumulated), buffers such as
    BatchNorm running statistics, every module's train/eval flag, torch's global RNG
    state, and the inputs (their ``requires_grad`` included). All hooks are removed,
    also when something raises.

    Args:
        model: any ``torch.nn.Module``.
        inputs: a tensor (one argument), a tuple/list (positional arguments) or a dict
            (keyword arguments, e.g. Hugging Face ``input_ids=..., attention_mask=...``).
        target: passed to ``loss_fn`` as its second argument.
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` without a target)
            returning a scalar. Without one: the output's own ``loss`` if it has one,
            cross-entropy for integer targets, MSE for floating targets, else a fixed
            random projection of the output (see ``Config.loss_seed``).
        config: thresholds; ``gcu.Config()`` by default. By default the pass runs in
            training mode (``Config.train_mode``).

    Returns:
        The ``Report``; ``report.ok`` is False if any finding is an error.

    Raises:
        TypeError: ``model`` is not a module, ``inputs`` of an unsupported type, a
            ``loss_fn`` that returns no tensor.
        ValueError: no trainable parameters, inputs that do not fit the model or sit on
            another device, a loss that is not a scalar or depends on no parameter.

    Example:
        >>> report = gcu.check(model, x, target=y, loss_fn=F.cross_entropy)  # doctest: +SKIP
        >>> report.print()                                                     # doctest: +SKIP
    """
    require_module(model)
    config = resolve_config(config)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
    args, kwargs = split_inputs(inputs)
    monitor = Monitor(model, config)
    params = [param for layer in monitor.inventory.layers for _, param in layer.params]
    check_devices(args, kwargs, params)
    cuda_devices = sorted(
        {param.device.index or 0 for param in params if param.device.type == "cuda"}
    )

    notes = []
    with model_state_preserved(model), torch.random.fork_rng(devices=cuda_devices), monitor:
        if config.train_mode:
            try:
                model.train()
            except NotImplementedError:  # torch.export programs cannot switch modes
                notes.append("training mode: the model does not support .train(); it ran as it was")
        with torch.enable_grad():
            args, kwargs, input_leaves = with_input_gradients(args, kwargs)
            try:
                output = model(*args, **kwargs)
            except Exception as error:
                raise ValueError(
                    f"inputs: the model's forward pass failed on ({describe(args, kwargs)}): "
                    f"{type(error).__name__}: {error}"
                ) from error
            loss = validated_loss(loss_of(output, target, loss_fn, config.loss_seed))
            gradients = torch.autograd.grad(
                loss, [*params, *input_leaves, *monitor.pass_leaves], allow_unused=True
            )
    per_layer: dict[int, list[torch.Tensor | None]] = {}
    position = 0
    for layer in monitor.inventory.layers:
        per_layer[layer.index] = list(gradients[position : position + len(layer.params)])
        position += len(layer.params)
    return monitor._report(loss=loss, gradients=per_layer, notes=notes)
