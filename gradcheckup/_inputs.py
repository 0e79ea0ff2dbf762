"""Arguments of check(): the model's inputs, and the loss to differentiate."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from gradcheckup.probes._tensors import carries_gradient, iter_tensors
from gradcheckup.rules.facts import NonfiniteInput

LossFn = Callable[..., torch.Tensor]
# Containers inside an argument that are copied too (a tuple of tensors, a dict of
# features); deeper or other objects are passed as they are.
_MAX_COPY_DEPTH = 4


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tensor (or PackedSequence) is one positional argument, a tuple/list the
    positional arguments, a mapping the keyword arguments."""
    if isinstance(inputs, (torch.Tensor, PackedSequence)):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    if isinstance(inputs, Mapping):
        bad_keys = [key for key in inputs if not isinstance(key, str)]
        if bad_keys:
            raise TypeError(f"inputs: dict keys must be argument names (str), got {bad_keys!r}")
        return (), dict(inputs)
    raise TypeError(
        "inputs: expected a tensor, a tuple/list of positional arguments or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
    )


def describe(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The arguments of a forward call as error messages show them: shapes and dtypes."""

    parts = [_described(value) for value in args] + [
        f"{key}={_described(value)}" for key, value in kwargs.items()
    ]
    return ", ".join(parts) or "no arguments"


def _described(value: Any) -> str:
    # Module-level, not a closure: a recursive closure is a reference cycle.
    if isinstance(value, PackedSequence):
        return f"PackedSequence(data={_described(value.data)}, steps={len(value.batch_sizes)})"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def check_devices(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], params: list[torch.Tensor]
) -> None:
    """Refuse a model without values, and inputs on another device than its parameters.

    Raises:
        ValueError: parameters on the meta device (they hold no values to measure), or
            an input tensor on another device, naming the ``.to(...)`` call.
    """
    on_meta = sum(param.is_meta for param in params)
    if on_meta:
        raise ValueError(
            f"model: {on_meta} of {len(params)} parameters are on the 'meta' device and have "
            "no values (the model was built under torch.device('meta') or with deferred "
            "initialisation); materialise them first, e.g. load the weights with "
            "model.load_state_dict(state, assign=True), or model.to_empty(device='cpu') "
            "and initialise them"
        )
    devices = {param.device for param in params}
    if len(devices) != 1:
        return  # model parallel: the model decides where inputs go
    (device,) = devices
    for position, value in [*enumerate(args), *kwargs.items()]:
        if isinstance(value, torch.Tensor) and value.device != device:
            label = f"inputs[{position!r}]"
            raise ValueError(
                f"{label}: tensor is on {value.device} but the model's parameters are on "
                f"{device}; move it with .to({str(device)!r})"
            )


def _top_level(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Each argument with its label as messages name it: ``inputs[0]``, ``inputs['x']``."""
    for position, value in [*enumerate(args), *kwargs.items()]:
        yield f"inputs[{position!r}]", value


def _data_of(value: Any) -> torch.Tensor | None:
    """The tensor an argument carries: itself, or a PackedSequence's data."""
    if isinstance(value, PackedSequence):
        return value.data
    return value if isinstance(value, torch.Tensor) else None


def require_samples(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse an input tensor without elements: a pass over no sample measures nothing
    (every norm 0, every unit "dead"), so its report would be made up.

    Raises:
        ValueError: an input tensor with no elements (e.g. a batch of size 0), named.
    """
    for label, value in _top_level(args, kwargs):
        tensor = _data_of(value)
        if tensor is not None and tensor.dim() and not tensor.numel():
            raise ValueError(
                f"{label}: tensor of shape {tuple(tensor.shape)} has no elements, so nothing "
                "would be measured; pass a batch with at least one sample"
            )


def nonfinite_inputs(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[NonfiniteInput, ...]:
    """The floating input arguments that hold NaN or inf, with their counts.

    One device read for all of them: check() runs once, and naming the data as the
    origin of NaN gradients is worth it.
    """
    labelled = [
        (label, tensor)
        for label, value in _top_level(args, kwargs)
        if (tensor := _data_of(value)) is not None
        and (tensor.is_floating_point() or tensor.is_complex())
    ]
    if not labelled:
        return ()
    with torch.no_grad():
        counts = torch.stack(
            [
                torch.stack([tensor.isnan().sum(), tensor.isinf().sum()]).cpu()
                for _, tensor in labelled
            ]
        ).tolist()
    return tuple(
        NonfiniteInput(label=label, nan_count=int(nan), inf_count=int(inf))
        for (label, _), (nan, inf) in zip(labelled, counts, strict=True)
        if nan or inf
    )


def own_copies(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], list[torch.Tensor]]:
    """Copies of the inputs that behave as the caller's own tensors would in the model.

    Each tensor (also inside tuples, lists, dicts and PackedSequences) becomes a fresh
    leaf holding a copy of its data, with the caller's ``requires_grad``: a model that
    sets ``requires_grad`` on a view of its input (Hugging Face's
    ``Wav2Vec2FeatureEncoder``) or modifies it in place runs as it would on the
    caller's tensor, which itself is never touched. Call it outside inference mode:
    tensors made under ``torch.inference_mode()`` become normal tensors.

    Returns:
        The copied ``(args, kwargs)``, and every tensor copy made.
    """
    copies: list[torch.Tensor] = []
    return (
        tuple(_copied(value, copies) for value in args),
        {key: _copied(value, copies) for key, value in kwargs.items()},
        copies,
    )


def _copied(value: Any, copies: list[torch.Tensor], depth: int = 0) -> Any:
    """``value`` with its tensors copied (``own_copies``); each copy is added to ``copies``.

    Module-level, not a closure: a recursive closure is a reference cycle, which would
    keep the copies alive until the collector runs.
    """
    if isinstance(value, torch.Tensor):
        own = value.detach().clone().requires_grad_(value.requires_grad)
        copies.append(own)
        return own
    if isinstance(value, PackedSequence):
        return value._replace(data=_copied(value.data, copies, depth))
    if depth >= _MAX_COPY_DEPTH:
        return value
    if type(value) in (tuple, list):
        return type(value)(_copied(item, copies, depth + 1) for item in value)
    if type(value) is dict:
        return {key: _copied(item, copies, depth + 1) for key, item in value.items()}
    return value


def _logits_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, Mapping):
        logits = output.get("logits")
    else:
        logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def primary_output(output: Any) -> torch.Tensor:
    """The tensor a loss compares with the target: ``logits`` if the output has them,
    else its first floating tensor.

    Raises:
        ValueError: the output holds no floating tensor.
    """
    logits = _logits_of(output)
    if logits is not None:
        return logits
    for tensor in iter_tensors(output):
        if tensor.is_floating_point():
            return tensor
    raise ValueError(
        f"loss_fn: the model's output ({type(output).__name__}) holds no floating tensor; "
        "pass loss_fn=... that turns it into a scalar"
    )


def _loss_attribute(output: Any) -> torch.Tensor | None:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    return None


def default_loss(output: Any, target: Any, seed: int) -> torch.Tensor:
    """The loss check() uses when no ``loss_fn`` is given.

    - no target, and the output carries a scalar ``loss`` (Hugging Face models given
      labels): that loss;
    - no target otherwise: a fixed random projection of the ``logits`` entry of a dict
      output, or else of every gradient-carrying output: sum(out * r) / batch with
      r ~ N(0, 1) from ``seed``. It sends a generic gradient
      into the model; ``out.sum()`` would not (the gradient of a sum through a final
      BatchNorm/LayerNorm is exactly zero);
    - an integer target: cross-entropy over the last (or class) dimension;
    - a floating target of the output's shape: mean squared error.
    """
    if target is None:
        own_loss = _loss_attribute(output)
        if own_loss is not None:
            return own_loss
        # A model's auxiliary outputs (hidden states) are not what training differentiates.
        logits = _logits_of(output)
        outputs = [
            tensor
            for tensor in iter_tensors(logits if logits is not None else output)
            if carries_gradient(tensor)
        ]
        if not outputs:
            raise ValueError(
                "loss_fn: the model's output has no tensor that depends on trainable parameters"
            )
        generator = torch.Generator().manual_seed(seed)
        total = None
        for tensor in outputs:
            direction = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            batch = tensor.shape[0] if tensor.dim() else 1
            term = (tensor.float() * direction.to(tensor.device)).sum() / max(batch, 1)
            total = term if total is None else total + term
        return total
    prediction = primary_output(output)
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"target: expected a tensor (or pass loss_fn=...), got {type(target).__name__}"
        )
    if not target.is_floating_point():
        return cross_entropy_loss(prediction, target)
    return mse_loss(prediction, target)


def cross_entropy_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of integer labels: classes on the last dimension when ``target``
    has the prediction's leading shape, else on dimension 1 (e.g. segmentation maps).

    Raises:
        ValueError: labels whose shape fits neither layout.
    """
    if prediction.dim() == target.dim() + 1 and prediction.shape[:-1] == target.shape:
        return F.cross_entropy(prediction.reshape(-1, prediction.shape[-1]), target.reshape(-1))
    if prediction.dim() == target.dim() + 1 and prediction.dim() >= 2:
        return F.cross_entropy(prediction, target)
    raise ValueError(
        f"target: integer labels of shape {tuple(target.shape)} do not fit outputs of shape "
        f"{tuple(prediction.shape)} for cross-entropy; pass loss_fn=..."
    )


def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, in float32 or wider, of a target shaped like the prediction.

    Raises:
        ValueError: a target of another shape (broadcasting would hide a mistake).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"target: shape {tuple(target.shape)} differs from the output's "
            f"{tuple(prediction.shape)} "
            "(the default loss for a floating target is mean squared error); pass loss_fn=..."
        )
    return F.mse_loss(prediction.float(), target.float())


class LossFnError(ValueError):
    """The user's ``loss_fn`` raised; its own exception is the ``__cause__``.

    ``check()`` re-raises that cause, so that the user's error keeps its type.
    """


def loss_of(output: Any, target: Any, loss_fn: LossFn | None, seed: int) -> Any:
    """The loss of one forward pass: ``loss_fn``'s, or ``default_loss`` without one.

    The one loss dispatch, shared by ``check()`` and the command line's training loop.

    Args:
        output: what the model returned.
        target: passed to ``loss_fn`` as its second argument when not None.
        loss_fn: ``loss_fn(output, target)`` or ``loss_fn(output)``; None for the default.
            Without a target, a ``loss_fn`` that requires two arguments gets
            ``target=None``, so one loss function serves tests with and without targets.
        seed: seed of the default loss's random direction (``Config.loss_seed``).

    Returns:
        What the loss function returned; ``validated_loss`` checks it.

    Raises:
        ValueError: ``loss_fn`` raised (its error is chained), or the default loss
            cannot be formed from this output and target.
    """
    if loss_fn is None:
        return default_loss(output, target, seed)
    try:
        if target is not None:
            return loss_fn(output, target)
        return _call_without_target(loss_fn, output)
    except Exception as error:
        raise LossFnError(
            f"loss_fn: calling it on the model's output failed: {type(error).__name__}: {error}"
        ) from error


def _call_without_target(loss_fn: LossFn, output: Any) -> Any:
    """``loss_fn(output)``, or ``loss_fn(output, None)`` when it requires a second argument.

    A callable whose signature cannot be read (some builtins) is called with one
    argument; only when that call is refused before the loss ran (a TypeError raised at
    the call itself) is it called again with ``None``, so a loss never runs twice.
    """
    wants_target = _requires_target(loss_fn)
    if wants_target is not None:
        return loss_fn(output, None) if wants_target else loss_fn(output)
    try:
        return loss_fn(output)
    except TypeError as error:
        traceback = error.__traceback__
        # The error came from our call itself (no deeper Python frame): the arguments
        # were refused, nothing of the loss ran.
        if traceback is None or traceback.tb_next is not None:
            raise
    return loss_fn(output, None)


def _requires_target(loss_fn: LossFn) -> bool | None:
    """Whether ``loss_fn`` cannot be called with the output alone; None: unknown."""
    # A loss module's signature is its forward's (__call__ takes *args).
    function = loss_fn.forward if isinstance(loss_fn, torch.nn.Module) else loss_fn
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    for arguments in ((None,), (None, None)):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return len(arguments) == 2
    return False  # neither binds: let the one-argument call raise its own error


def validated_loss(loss: Any) -> torch.Tensor:
    """The loss as a 0-d tensor, once it is known to be a differentiable scalar.

    Raises:
        TypeError: not a tensor.
        ValueError: not a single number, or it depends on no trainable parameter.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn: must return a tensor, returned {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn: must return a scalar, returned a tensor of shape {tuple(loss.shape)}; "
            "reduce it (e.g. .mean())"
        )
    if not loss.requires_grad:
        raise ValueError(
            "loss_fn: the loss does not depend on any trainable parameter (no grad_fn); "
            "is the output detached, or all parameters frozen?"
        )
    return loss.reshape(())


def training_loss(
    model: torch.nn.Module, inputs: Any, target: Any, loss_fn: LossFn | None, seed: int
) -> torch.Tensor:
    """One plain forward pass and its validated loss, ready for ``.backward()``.

    Unlike ``check()`` it changes nothing about the model or its inputs: it is one step
    of a training loop run under ``gcu.watch``.
    """
    positional, keywords = split_inputs(inputs)
    return validated_loss(loss_of(model(*positional, **keywords), target, loss_fn, seed))
