"""Snapshot and restore what one forward pass can change in a model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ModelState:
    """Every module's train/eval flag and every buffer (BatchNorm running statistics,
    ``num_batches_tracked``, spectral-norm vectors, ...), by object and by value."""

    def __init__(self, model: nn.Module, modules: Iterable[nn.Module] | None = None) -> None:
        """Take the snapshot.

        Args:
            model: the model.
            modules: its modules, ``model.modules()`` when not given (``check()`` hands
                over the list its inventory already made).
        """
        modules = list(model.modules() if modules is None else modules)
        self._training = [(module, module.training) for module in modules]
        self._buffers: list[
            tuple[nn.Module, dict[str, torch.Tensor | None], dict[str, torch.Tensor]]
        ] = []
        # Plain modules without buffers, the most of a model: restored by emptying
        # whatever the pass may have registered on them.
        self._unbuffered: list[nn.Module] = []
        with torch.no_grad():
            for module in modules:
                if isinstance(module, torch.jit.ScriptModule):
                    objects = dict(module.named_buffers(recurse=False))
                elif not module._buffers:
                    self._unbuffered.append(module)
                    continue
                else:
                    # The buffer dict itself, None placeholders included (BatchNorm
                    # without running stats registers None).
                    objects = dict(module._buffers)
                values = {
                    name: buffer.clone() for name, buffer in objects.items() if buffer is not None
                }
                self._buffers.append((module, objects, values))

    def restore(self) -> None:
        """Put every flag and buffer back as it was when the snapshot was taken."""
        for module, training in self._training:
            # Reading is cheap, setting goes through Module.__setattr__.
            if module.training != training:
                module.training = training
        for module in self._unbuffered:
            if module._buffers:
                module._buffers.clear()  # all of them created during the pass
        with torch.no_grad():
            for module, objects, values in self._buffers:
                # TorchScript modules cannot swap buffer objects; restoring values suffices
                # there, as their code cannot replace a buffer either.
                if not isinstance(module, torch.jit.ScriptModule):
                    for name in [name for name in module._buffers if name not in objects]:
                        del module._buffers[name]  # created during the pass
                    module._buffers.update(objects)
                for name, value in values.items():
                    buffer = objects[name]
                    assert buffer is not None
                    buffer.copy_(value)


@contextmanager
def model_state_preserved(
    model: nn.Module, modules: Iterable[nn.Module] | None = None
) -> Iterator[None]:
    """Restore flags and buffers on the way out, also when the body raises.

    Args:
        model: the model.
        modules: its modules, if already listed (see ``ModelState``).
    """
    state = ModelState(model, modules)
    try:
        yield
    finally:
        state.restore()
