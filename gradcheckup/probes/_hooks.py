"""One owner for every hook handle, one guard for every hook body, and the one check
that tells every hook to step aside."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradcheckup.probes.inventory import torchs_own_checker

_P = ParamSpec("_P")

_MAX_RECORDED_ERRORS = 20


class Removable(Protocol):
    """A hook handle (torch's RemovableHandle) or a patch subscription."""

    def remove(self) -> None:
        """Detach the hook or end the subscription."""


class HookSet:
    """Keeps hook handles and removes them all at once (also on exceptions)."""

    def __init__(self) -> None:
        self._handles: list[Removable] = []

    def add(self, handle: Removable) -> None:
        """Take ownership of ``handle``; ``remove_all`` removes it."""
        self._handles.append(handle)

    def remove_all(self) -> None:
        """Remove every handle, the newest first."""
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)


class ClearedOnRemove:
    """Empties containers when the hooks are removed (``HookSet.remove_all``)."""

    def __init__(self, *containers: dict[Any, Any] | list[Any] | set[Any]) -> None:
        self._containers = containers

    def remove(self) -> None:
        """Empty every container."""
        for container in self._containers:
            container.clear()


def _new_hook_id() -> int:
    """A hook id from torch's own counter, so that it collides with no other hook's."""
    hook_id = RemovableHandle.next_id
    RemovableHandle.next_id += 1
    return hook_id


def add_gradient_hook(tensor: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
    """``tensor.register_hook(hook)``, for good: no handle is made.

    A hook on a tensor lives as long as the tensor; the signal probe hooks every layer's
    inputs and outputs in every measured pass. For the common tensor, a plain one that
    autograd made and nobody hooked yet, this stores what ``register_hook`` stores,
    without its handle (twice as fast); any other goes through ``register_hook``.
    """
    grad_fn = tensor.grad_fn
    register_dict = getattr(grad_fn, "_register_hook_dict", None)
    if (
        type(tensor) is torch.Tensor
        and register_dict is not None
        and tensor._backward_hooks is None
    ):
        hooks: OrderedDict[int, Callable[[torch.Tensor], None]] = OrderedDict()
        hooks[_new_hook_id()] = hook
        tensor._backward_hooks = hooks
        register_dict(tensor)
        return
    tensor.register_hook(hook)


class ForwardHooks:
    """One forward pre-hook (with kwargs) and one always-called forward hook on many
    modules, removed together.

    ``register_forward_pre_hook(hook, with_kwargs=True)`` and
    ``register_forward_hook(hook, always_call=True)`` store the hook in the module's
    hook dicts under a fresh id, with one ``RemovableHandle`` each; a model of 10,000
    modules spent a tenth of ``check()`` making and removing those handles. Here both
    hooks have one id on every module. A class with its own registration methods, or
    TorchScript (which refuses Python hooks), goes through torch's methods, as does a
    module with such a method patched onto it.
    """

    def __init__(self, pre_hook: Callable[..., Any], post_hook: Callable[..., Any]) -> None:
        """Prepare the hooks; nothing is attached yet.

        Args:
            pre_hook: ``pre_hook(module, args, kwargs)``, may return new ``(args, kwargs)``.
            post_hook: ``post_hook(module, args, output)``, also when forward raised.
        """
        self._pre_hook = pre_hook
        self._post_hook = post_hook
        self._pre_id = _new_hook_id()
        self._post_id = _new_hook_id()
        self._ids = frozenset((self._pre_id, self._post_id))
        self._attached: list[nn.Module] = []
        self._handles: list[RemovableHandle] = []
        self._registers_like_torch = torchs_own_checker(
            "register_forward_pre_hook", "register_forward_hook"
        )

    def attach(self, module: nn.Module) -> frozenset[int]:
        """Hook ``module``; returns the ids its hooks have in its hook dicts.

        Raises:
            RuntimeError: the module accepts no Python hooks (TorchScript).
        """
        if not self._registers_like_torch(module) or _is_script_class(type(module)):
            handles = [
                module.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                module.register_forward_hook(self._post_hook, always_call=True),
            ]
            self._handles += handles
            return frozenset(handle.id for handle in handles)
        # What the two register calls store, in the order they store it.
        module._forward_pre_hooks[self._pre_id] = self._pre_hook
        module._forward_pre_hooks_with_kwargs[self._pre_id] = True
        module._forward_hooks[self._post_id] = self._post_hook
        module._forward_hooks_always_called[self._post_id] = True
        self._attached.append(module)
        return self._ids

    def remove(self) -> None:
        """Take both hooks off every module."""
        for module in self._attached:
            module._forward_pre_hooks.pop(self._pre_id, None)
            module._forward_pre_hooks_with_kwargs.pop(self._pre_id, None)
            module._forward_hooks.pop(self._post_id, None)
            module._forward_hooks_always_called.pop(self._post_id, None)
        self._attached.clear()
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return 2 * len(self._attached) + len(self._handles)


@functools.cache
def _is_script_class(cls: type) -> bool:
    """TorchScript modules refuse Python hooks (``isinstance`` through their metaclass
    is slow enough to matter once per module of a large model)."""
    return issubclass(cls, torch.jit.ScriptModule)


_functorch_interpreter = getattr(torch._C._functorch, "peek_interpreter_stack", None)


def stepping_aside() -> bool:
    """True where every hook of ours must return at once, observing nothing.

    While dynamo traces (``torch.compile``) a hook's body would be compiled into the
    user's graph, and under ``fullgraph=True`` anything it cannot trace fails the
    compile. Inside a ``torch.func`` transform (``vmap``, ``grad``, ...) tensors are
    wrapped, and any we kept would escape the transform. Checked first in every hook:
    dynamo folds ``is_compiling()`` to a constant, so nothing after it is traced.
    """
    if torch.compiler.is_compiling():
        return True
    return _functorch_interpreter is not None and _functorch_interpreter() is not None


def compiled_code_run_eagerly() -> AbstractContextManager[object]:
    """A context in which ``torch.compile``'d modules and functions run eagerly.

    For ``check()``'s one pass: every module hook then sees it, and its numbers are the
    eager model's. Compiled code was never run where dynamo was never imported.
    """
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


class ErrorLog:
    """Failures inside gradcheckup's hooks: recorded for the report, never raised.

    A diagnostic tool must not break the training it observes, so each hook body runs
    under ``guarded`` and a failure costs only that statistic.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.dropped = 0

    def record(self, where: str, error: BaseException) -> None:
        """Keep ``error`` for the report, labelled with the hook it came from."""
        if len(self.messages) < _MAX_RECORDED_ERRORS:
            self.messages.append(f"{where}: {type(error).__name__}: {error}")
        else:
            self.dropped += 1

    def guarded(self, where: str, function: Callable[_P, object]) -> Callable[_P, None]:
        """Wrap a hook body so that an exception is recorded instead of raised.

        The wrapper always returns ``None``: a tensor hook that returned a value would
        replace the gradient, which no probe may ever do.

        Args:
            where: names the hook in the report's ``probe_errors``.
            function: the hook body.

        Returns:
            The guarded hook.
        """

        def guarded_hook(*args: _P.args, **kwargs: _P.kwargs) -> None:
            try:
                function(*args, **kwargs)
            except Exception as error:
                self.record(where, error)

        return guarded_hook

    def summary(self) -> list[str]:
        """The recorded messages, with a count of those beyond the limit."""
        if self.dropped:
            return [*self.messages, f"... and {self.dropped} more"]
        return list(self.messages)
