"""Hugging Face: ``GradcheckupCallback`` watches the gradients of a ``Trainer.train``.

    >>> from gradcheckup.integrations.transformers import GradcheckupCallback
    >>> callback = GradcheckupCallback(stop_on="error", report_path="grads.json")
    >>> trainer = Trainer(model, args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP

``pip install 'gradcheckup[transformers]'`` (transformers and accelerate).
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

from gradcheckup.integrations._lazy import import_optional
from gradcheckup.integrations._training import TrainingCallback

_trainer_callback = import_optional("transformers.trainer_callback", "transformers")
TrainerCallback = _trainer_callback.TrainerCallback
CallbackHandler = _trainer_callback.CallbackHandler
DefaultFlowCallback = _trainer_callback.DefaultFlowCallback

if TYPE_CHECKING:
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments


__all__ = ["GradcheckupCallback"]

_CALLER_FRAMES = 4
"""How far up the stack the running ``CallbackHandler`` is looked for (it calls the
hook, which calls the helper that looks)."""


class GradcheckupCallback(TrainingCallback, TrainerCallback):
    """Watches the gradients of a ``Trainer.train``: adds a few scalars to every training
    log, warns about new findings, can stop training, and writes the final report.

    At train begin it opens ``gcu.watch(model, optimizer=...)`` on the model and
    optimizer the Trainer hands its callbacks, and moves itself ahead of the
    ``report_to`` callbacks, so that the scalars it adds to ``logs`` in ``on_log`` (those
    of the steps since the previous log, ``gradcheckup.integrations.summary_scalars``)
    reach every backend and ``trainer.state.log_history``. The Trainer clips to
    ``args.max_grad_norm`` by default: that bound becomes ``Config.max_grad_norm``
    (unless the config names one), so a step that reached the optimizer unclipped is an
    error. It warns once per new finding (kind and place); at train end it closes the
    watch and writes the report of the whole run.

    Args:
        config: thresholds; ``gcu.Config()`` by default.
        layers: layer names (as in ``model.named_modules()``) whose gradient norm and
            backward signal are logged; None for the two ends of the depth ratio.
        stop_on: "error" or "warning": set ``control.should_training_stop`` at the first
            log whose window has a finding of that severity or worse; None never stops.
        warn_on: warn once per new finding of this severity or worse.
        report_path: write the final report here as JSON (``gradcheckup show`` reads it).
        html_path: write the final report here as a self-contained HTML page.
        prefix: put before every logged name.

    Raises:
        ValueError: ``stop_on`` or ``warn_on`` names no severity.
    """

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Open the watch on the Trainer's model and optimizer."""
        if model is None:
            raise ValueError("model: the Trainer passed no model to its callbacks")
        self._move_ahead_of_reporters()
        optimizers = [] if optimizer is None else [_unwrapped(optimizer)]
        self._open(
            model,
            optimizers,
            args.max_grad_norm,
            state.is_world_process_zero,
            data_parallel_wrapper(_calling_trainer()),
        )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the window's scalars to a training log; stop when a finding reaches
        ``stop_on``."""
        # Evaluation logs and the end-of-training summary carry no "loss"; their steps'
        # gradients belong to the training log of the same step.
        if logs is None or "loss" not in logs:
            return
        scalars = self._scalars_once(state.global_step)
        if scalars is None:
            return
        logs.update(scalars)
        # Trainer.log stored a copy of this log in the history before calling us.
        latest = state.log_history[-1] if state.log_history else None
        if latest is not None and latest.get("step") == state.global_step and "loss" in latest:
            latest.update(scalars)
        if self._stops_now(control.should_training_stop, state.is_world_process_zero):
            control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Close the watch and write the report of the whole run."""
        self._watch.close()

    def _move_ahead_of_reporters(self) -> None:
        """Put this callback right after the Trainer's flow callback: the Trainer puts the
        ``report_to`` callbacks before the ones the user passes, and gives callbacks no
        reference to its ``CallbackHandler``, so it is found on the stack."""
        handler = _calling_handler(self)
        if handler is None:
            warnings.warn(
                "gradcheckup: could not find the Trainer's callback list; the scalars reach "
                "only the callbacks after this one and trainer.state.log_history",
                UserWarning,
                stacklevel=3,
            )
            return
        # Moving ahead while the handler iterates its list keeps the iteration exact: the
        # callbacks after our old place keep their positions.
        callbacks = handler.callbacks
        callbacks.remove(self)
        flow = [
            position for position, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)
        ]
        callbacks.insert(flow[-1] + 1 if flow else 0, self)


def _calling_handler(callback: TrainerCallback) -> CallbackHandler | None:
    """The ``CallbackHandler`` that is calling ``callback`` now, if one is on the stack."""
    frame = inspect.currentframe()
    for _ in range(_CALLER_FRAMES):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler) and any(c is callback for c in owner.callbacks):
            return owner
        frame = frame.f_back
    return None


def _calling_trainer() -> Any:
    """The ``Trainer`` whose training loop calls the callbacks now (the frame's owner
    with a ``callback_handler`` and a ``model_wrapped``), if it is on the stack."""
    frame = inspect.currentframe()
    for _ in range(_CALLER_FRAMES + 2):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if hasattr(owner, "callback_handler") and hasattr(owner, "model_wrapped"):
            return owner
        frame = frame.f_back
    return None


def data_parallel_wrapper(trainer: Any) -> torch.nn.Module | None:
    """The DistributedDataParallel the trainer wrapped its model in (``model_wrapped``),
    if any: the callbacks get the unwrapped model, whose gradients DDP reduces."""
    from torch import nn

    wrapped = getattr(trainer, "model_wrapped", None)
    return wrapped if isinstance(wrapped, nn.parallel.DistributedDataParallel) else None


def _unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (and similar
    wrappers): step hooks fire on the optimizer that really steps."""
    import torch

    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer):
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer
