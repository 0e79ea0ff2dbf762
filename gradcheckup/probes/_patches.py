"""Temporary patches that let the step probe see gradient clipping and GradScaler calls.

``clip_grad_norm_`` looks up ``_clip_grads_with_norm_`` in its module at every call, so
patching that module global sees every norm clip, also through a reference imported
with ``from torch.nn.utils import clip_grad_norm_`` before watching began. GradScaler
methods are patched on the class, which every instance looks up. ``clip_grad_value_``
has no such inner function: calls through ``torch.nn.utils.clip_grad_value_`` are seen.

Patches are installed while at least one monitor listens and restored when the last
one stops; a listener's failure never reaches the user's call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.utils
import torch.nn.utils.clip_grad as clip_grad
from torch.amp import GradScaler


class StepListener(Protocol):
    def on_clip(
        self, kind: str, params: list[torch.Tensor], bound: Any, total_norm: Any
    ) -> None: ...
    def on_scale(self, scaler: GradScaler) -> None: ...
    def on_unscale(self, scaler: GradScaler, optimizer: torch.optim.Optimizer) -> None: ...
    def before_scaler_step(self, scaler: GradScaler, optimizer: torch.optim.Optimizer) -> None: ...
    def after_scaler_step(self, scaler: GradScaler, optimizer: torch.optim.Optimizer) -> None: ...
    def record_error(self, where: str, error: BaseException) -> None: ...


_listeners: list[StepListener] = []
_originals: list[tuple[object, str, object]] = []


def _notify(method: str, *args: Any) -> None:
    for listener in list(_listeners):
        try:
            getattr(listener, method)(*args)
        except Exception as error:
            listener.record_error(f"step probe ({method})", error)


def _as_list(parameters: Any) -> list[torch.Tensor]:
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


def _wrap_clip_norm(original: Callable[..., Any]) -> Callable[..., Any]:
    def clip_grads_with_norm_(
        parameters: Any, max_norm: Any, total_norm: Any, *args: Any, **kwargs: Any
    ) -> Any:
        parameters = _as_list(parameters)
        _notify("on_clip", "norm", parameters, max_norm, total_norm)
        return original(parameters, max_norm, total_norm, *args, **kwargs)

    return clip_grads_with_norm_


def _wrap_clip_value(original: Callable[..., Any]) -> Callable[..., Any]:
    def clip_grad_value_(parameters: Any, clip_value: Any, *args: Any, **kwargs: Any) -> Any:
        parameters = _as_list(parameters)
        _notify("on_clip", "value", parameters, clip_value, None)
        return original(parameters, clip_value, *args, **kwargs)

    return clip_grad_value_


def _wrap_scale(original: Callable[..., Any]) -> Callable[..., Any]:
    def scale(self: GradScaler, outputs: Any) -> Any:
        _notify("on_scale", self)
        return original(self, outputs)

    return scale


def _wrap_unscale(original: Callable[..., Any]) -> Callable[..., Any]:
    def unscale_(self: GradScaler, optimizer: torch.optim.Optimizer) -> Any:
        result = original(self, optimizer)
        _notify("on_unscale", self, optimizer)
        return result

    return unscale_


def _wrap_scaler_step(original: Callable[..., Any]) -> Callable[..., Any]:
    def step(self: GradScaler, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        _notify("before_scaler_step", self, optimizer)
        result = original(self, optimizer, *args, **kwargs)
        _notify("after_scaler_step", self, optimizer)
        return result

    return step


def _install() -> None:
    clip_norm = _wrap_clip_norm(clip_grad._clip_grads_with_norm_)
    clip_value = _wrap_clip_value(clip_grad.clip_grad_value_)
    targets: list[tuple[object, str, object]] = [
        (clip_grad, "_clip_grads_with_norm_", clip_norm),
        (clip_grad, "clip_grad_value_", clip_value),
        (torch.nn.utils, "clip_grad_value_", clip_value),
        (GradScaler, "scale", _wrap_scale(GradScaler.scale)),
        (GradScaler, "unscale_", _wrap_unscale(GradScaler.unscale_)),
        (GradScaler, "step", _wrap_scaler_step(GradScaler.step)),
    ]
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        targets.append((torch.nn.utils, "clip_grads_with_norm_", clip_norm))
    for owner, name, replacement in targets:
        _originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)


def _restore() -> None:
    while _originals:
        owner, name, original = _originals.pop()
        setattr(owner, name, original)


class Subscription:
    """Handle that stops a listener (restoring the patches after the last one)."""

    def __init__(self, listener: StepListener) -> None:
        self._listener: StepListener | None = listener
        if not _listeners:
            _install()
        _listeners.append(listener)

    def remove(self) -> None:
        if self._listener is None:
            return
        _listeners.remove(self._listener)
        self._listener = None
        if not _listeners:
            _restore()
