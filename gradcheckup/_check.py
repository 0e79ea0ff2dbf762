"""check(): one forward and backward pass, observed, with no side effects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence, Set
from typing import Any

import torch
from torch import nn

from gradcheckup._gc import collector_paused
from gradcheckup._inputs import (
    LossFn,
    LossFnError,
    check_devices,
    describe,
    loss_of,
    nonfinite_inputs,
    own_copies,
    require_samples,
    split_inputs,
    validated_loss,
)
from gradcheckup._state import model_state_preserved
from gradcheckup.config import Config
from gradcheckup.monitor import Monitor, require_module, resolve_config
from gradcheckup.probes._hooks import compiled_code_run_eagerly
from gradcheckup.probes._tensors import carries_gradient, iter_tensors
from gradcheckup.probes.inventory import torchs_own_checker
from gradcheckup.report import Report, display_name
from gradcheckup.rules import PassFacts

__all__ = ["check"]

_ACCUMULATE_GRAD = getattr(getattr(torch._C, "_functions", None), "AccumulateGrad", None)

_NOTE_PREFIX = "gradcheckup: "
_FORWARD_NOTE = f"{_NOTE_PREFIX}the model's forward pass failed"

_BACKWARD_NOTE = (
    "gradients: the model uses torch.utils.checkpoint(use_reentrant=True), which refuses "
    "torch.autograd.grad; they were taken with .backward() instead, and every .grad was "
    "put back as it was (your post-accumulate-grad hooks did run)"
)


def check(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    loss_fn: LossFn | None = None,
    config: Config | None = None,
) -> Report:
    """Run one forward and backward pass and diagnose the model's gradients.

    The model is left exactly as it was: parameters and existing ``.grad`` (gradients
    are taken with ``torch.autograd.grad``, never accumulated; a model using reentrant
    activation checkpointing gets ``.backward()``, after which every ``.grad`` object is
    put back), buffers such as BatchNorm running statistics, every module's train/eval
    flag, torch's global RNG state, and the inputs. The model receives copies of the
    inputs that behave like them (same ``requires_grad``, leaves, also when they were
    made under ``torch.inference_mode()``). All hooks are removed, also when something
    raises.

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
        ValueError: no trainable parameters, an input without elements (an empty
            batch), inputs on another device, a loss that is not a scalar or depends on
            no parameter.
        Exception: whatever the model's forward or ``loss_fn`` raised, unchanged, with
            a note naming the module that raised and the inputs.

    Example:
        >>> report = gcu.check(model, x, target=y, loss_fn=F.cross_entropy)  # doctest: +SKIP
        >>> report.print()                                                     # doctest: +SKIP
    """
    require_module(model)
    config = resolve_config(config)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
    args, kwargs = split_inputs(inputs)
    require_samples(args, kwargs)
    # One pass, all of it ours to time: the collector waits until the report is built
    # (a model of 10,000 modules spent most of check() in full collections).
    with collector_paused():
        return _checked(model, args, kwargs, target, loss_fn, config)


def _checked(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    loss_fn: LossFn | None,
    config: Config,
) -> Report:
    """``check()`` once its arguments are known to be right."""
    monitor = Monitor(model, config, private=True)
    params = [param for layer in monitor.inventory.layers for _, param in layer.params]
    check_devices(args, kwargs, params)
    nonfinite = nonfinite_inputs(args, kwargs)
    notes: list[str] = []
    modules = list(monitor.inventory.module_names)
    # Compiled code runs no module hook: the checked pass runs eagerly, fully measured.
    with _pass_scope(model, modules, params), monitor, compiled_code_run_eagerly():
        _enter_training_mode(model, modules, config, notes)
        model_args, model_kwargs, copies = own_copies(args, kwargs)
        monitor.trace_inputs([copy for copy in copies if not copy.requires_grad])
        output = _forward(model, monitor, model_args, model_kwargs, describe(args, kwargs))
        loss = _loss(output, target, loss_fn, config.loss_seed)
        gradients = _differentiate(loss, params, notes)
    # Once the monitor is closed: this second, partial backward must not feed its probes.
    facts = PassFacts(
        nonfinite_inputs=nonfinite, outside_loss=_outside_loss(output, monitor, params, gradients)
    )
    per_layer: dict[int, list[torch.Tensor | None]] = {}
    position = 0
    for layer in monitor.inventory.layers:
        per_layer[layer.index] = list(gradients[position : position + len(layer.params)])
        position += len(layer.params)
    monitor.record_gradients(per_layer)
    return monitor._report(loss=loss, gradients=per_layer, notes=notes, facts=facts)


@contextlib.contextmanager
def _pass_scope(
    model: nn.Module, modules: Sequence[nn.Module], params: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Model state and RNG restored on the way out; autograd on, outside inference mode
    (where an eval loop may have called check())."""
    cuda_devices = sorted(
        {param.device.index or 0 for param in params if param.device.type == "cuda"}
    )
    with (
        model_state_preserved(model, modules),
        torch.random.fork_rng(devices=cuda_devices),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        yield


def _enter_training_mode(
    model: nn.Module, modules: Sequence[nn.Module], config: Config, notes: list[str]
) -> None:
    if not config.train_mode:
        return
    if all(map(torchs_own_checker("train"), modules)):
        # What model.train() would do, without one recursive call and one
        # Module.__setattr__ per module; a module with its own train() (its class's, or
        # one patched onto it) gets model.train() called.
        for module in modules:
            if not module.training:
                module.training = True
        return
    try:
        model.train()
    except NotImplementedError:  # torch.export programs cannot switch modes
        notes.append("training mode: the model does not support .train(); it ran as it was")


def raised_by_the_model(error: BaseException) -> bool:
    """True for an exception that ``check()`` let through from the model's own forward.

    Such an error carries ``check()``'s note; a caller (the command line) can then
    report it as the user's failure, even where the last frame of its traceback is one
    of gradcheckup's observers (the activation probe's function mode runs every torch
    call of the forward).
    """
    notes = getattr(error, "__notes__", ())
    return any(isinstance(note, str) and note.startswith(_FORWARD_NOTE) for note in notes)


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``; on Python 3.10 the note is kept where 3.11 keeps it
    (``__notes__``, as the exceptiongroup backport does), though tracebacks there do
    not show it."""
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(note)
        return
    with contextlib.suppress(AttributeError):  # an exception class with __slots__
        error.__notes__ = [*getattr(error, "__notes__", ()), note]


def _forward(
    model: nn.Module, monitor: Monitor, args: tuple[Any, ...], kwargs: dict[str, Any], inputs: str
) -> Any:
    """The model's output; what its forward raises propagates unchanged, with a note."""
    try:
        return model(*args, **kwargs)
    except Exception as error:
        where = _raising_module(error, monitor.inventory.module_names) or model
        name = monitor.inventory.module_names.get(where, "")
        _add_note(
            error,
            f"{_FORWARD_NOTE} on ({inputs}) in module "
            f"{display_name(name)!r} ({type(where).__name__}), in gcu.check()",
        )
        raise


def _raising_module(error: BaseException, names: Mapping[nn.Module, str]) -> nn.Module | None:
    """The innermost of the model's modules running where ``error`` was raised.

    Read from the traceback: every module call runs ``Module._call_impl`` (and usually
    ``forward``) with the module as ``self``.
    """
    innermost = None
    trace = error.__traceback__
    while trace is not None:
        candidate = trace.tb_frame.f_locals.get("self")
        if isinstance(candidate, nn.Module) and candidate in names:
            innermost = candidate
        trace = trace.tb_next
    return innermost


def _loss(output: Any, target: Any, loss_fn: LossFn | None, seed: int) -> torch.Tensor:
    """The validated loss; what ``loss_fn`` raised propagates unchanged, with a note."""
    try:
        return validated_loss(loss_of(output, target, loss_fn, seed))
    except LossFnError as error:
        own = error.__cause__
        if not isinstance(own, Exception):
            raise
    # Raised outside the except block, so that the wrapper does not become its context.
    _add_note(own, f"{_NOTE_PREFIX}loss_fn raised on the model's output, in gcu.check()")
    raise own


def _differentiate(
    loss: torch.Tensor, params: Sequence[torch.Tensor], notes: list[str]
) -> list[torch.Tensor | None]:
    """The parameters' gradients of ``loss``.

    Every other leaf of the graph is differentiated too (inputs that require grad, the
    probes' stand-ins, a leaf the model made itself such as Wav2Vec2's feature input):
    autograd runs only the paths to what it is asked for, and the probes' hooks on the
    way to those leaves must fire.
    """
    known = {id(param) for param in params}
    nodes, ends = _graph_nodes(loss, known)
    others = {
        id(variable): variable
        for node in ends
        if (variable := getattr(node, "variable", None)) is not None and id(variable) not in known
    }
    leaves = [*params, *others.values()]
    if any(_is_reentrant_checkpoint(node_type) for node_type in {type(node) for node in nodes}):
        notes.append(_BACKWARD_NOTE)
        return _gradients_by_backward(loss, leaves)[: len(params)]
    return list(torch.autograd.grad(loss, leaves, allow_unused=True))[: len(params)]


def _graph_nodes(tensor: torch.Tensor, known: Set[int]) -> tuple[list[Any], list[Any]]:
    """Every node of the autograd graph that produced ``tensor``, each once, and those
    of them that lead nowhere (the leaves' ``AccumulateGrad`` nodes among them), except
    the ``AccumulateGrad`` nodes of the ``known`` leaves (by ``id``).

    The nodes are kept alive by the list, so each keeps its Python object (autograd
    hands out the same one for a node while it lives) and serves as its own set key.
    """
    root = tensor.grad_fn
    if root is None:
        return [], []
    nodes = [root]
    ends = []
    seen = {root}
    for node in nodes:  # grows while it is walked: breadth first
        following = node.next_functions
        if not following:
            ends.append(node)
        for next_node, _ in following:
            if next_node is None or next_node in seen:
                continue
            seen.add(next_node)
            # The parameters' own accumulators (half the nodes of a model of small
            # layers) lead nowhere and are known already.
            if type(next_node) is not _ACCUMULATE_GRAD or id(next_node.variable) not in known:
                nodes.append(next_node)
    return nodes, ends


def _is_reentrant_checkpoint(node_type: type) -> bool:
    # torch.utils.checkpoint's CheckpointFunction (and the look-alikes of DeepSpeed and
    # others) runs its own backward and refuses torch.autograd.grad.
    return "CheckpointFunction" in node_type.__name__


def _gradients_by_backward(
    loss: torch.Tensor, leaves: Sequence[torch.Tensor]
) -> list[torch.Tensor | None]:
    """Gradients through ``.backward()``, leaving every ``.grad`` as it was found.

    Each of ``leaves`` (the graph's leaves and the parameters, which inside a checkpoint
    join the graph only during backward) starts from ``.grad = None``, so that backward
    writes fresh tensors, never into the user's; the user's ``.grad`` objects are put
    back afterwards, also when backward raises.
    """
    saved = [(leaf, leaf.grad) for leaf in leaves]
    try:
        for leaf, _ in saved:
            leaf.grad = None
        loss.backward()
        return [leaf.grad for leaf in leaves]
    finally:
        for leaf, grad in saved:
            leaf.grad = grad


def _outside_loss(
    output: Any,
    monitor: Monitor,
    params: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor | None],
) -> frozenset[tuple[str, str]]:
    """(layer name, parameter name) of the parameters without gradient that the model's
    output does depend on: they feed an output that the loss left out.

    Asks autograd for the gradient of the output tensors with respect to those
    parameters alone, so only the nodes on the way to them run; where one of them was
    already freed by the main backward, nothing is claimed.
    """
    missing = {id(param) for param, grad in zip(params, gradients, strict=True) if grad is None}
    if not missing:
        return frozenset()
    candidates = [
        (layer.name, name, param)
        for layer in monitor.inventory.layers
        for name, param in layer.params
        if id(param) in missing
    ]
    outputs = [tensor for tensor in iter_tensors(output) if carries_gradient(tensor)]
    if not outputs:
        return frozenset()
    try:
        reached = torch.autograd.grad(
            outputs,
            [param for _, _, param in candidates],
            grad_outputs=[torch.ones_like(tensor) for tensor in outputs],
            allow_unused=True,
        )
    except RuntimeError:
        return frozenset()
    return frozenset(
        (layer, name)
        for (layer, name, _), grad in zip(candidates, reached, strict=True)
        if grad is not None
    )
