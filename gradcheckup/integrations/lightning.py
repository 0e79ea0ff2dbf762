"""PyTorch Lightning: ``GradcheckupCallback`` watches the gradients of a ``Trainer.fit``.

    >>> from gradcheckup.integrations.lightning import GradcheckupCallback
    >>> callback = GradcheckupCallback(stop_on="error", report_path="grads.json")
    >>> trainer = L.Trainer(callbacks=[callback])  # doctest: +SKIP

Works with the ``lightning`` package (``lightning.pytorch``) and with the older
``pytorch_lightning``, whichever is installed (``lightning`` first):
``pip install 'gradcheckup[lightning]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gradcheckup.integrations._lazy import import_optional
from gradcheckup.integrations._training import TrainingCallback

if TYPE_CHECKING:
    from gradcheckup.config import Config

__all__ = ["GradcheckupCallback"]


def _lightning() -> ModuleType:
    """``lightning.pytorch``, else ``pytorch_lightning``.

    Raises:
        ImportError: neither package is installed, with the pip command.
    """
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError:
        return import_optional("pytorch_lightning", "lightning")


_pl = _lightning()


class GradcheckupCallback(TrainingCallback, _pl.Callback):
    """Watches the gradients of a ``Trainer.fit``: logs a few scalars, warns about new
    findings, can stop training, and writes the final report.

    At fit start it opens ``gcu.watch(pl_module, optimizer=trainer.optimizers)``; every
    ``log_every_n_steps`` optimizer steps it logs the scalars of the steps since the
    previous log (``gradcheckup.integrations.summary_scalars``) with
    ``pl_module.log_dict`` (not on the progress bar), so they reach every logger of the
    trainer and ``trainer.callback_metrics``; it warns once per new finding (kind and
    place); at fit end, or when the fit raises or is interrupted, it closes the watch and
    writes the report of the whole run. Lightning's gradient clipping
    (``Trainer(gradient_clip_val=...)``, by norm) becomes ``Config.max_grad_norm`` unless
    the config names a bound, so a step the clipping missed is an error.

    Args:
        config: thresholds; ``gcu.Config()`` by default.
        layers: layer names (as in ``pl_module.named_modules()``) whose gradient norm and
            backward signal are logged; None for the two ends of the depth ratio.
        log_every_n_steps: log every this many optimizer steps; None for the trainer's
            ``log_every_n_steps`` (Lightning's own schedule still decides when loggers
            write).
        stop_on: "error" or "warning": set ``trainer.should_stop`` at the first log step
            whose window has a finding of that severity or worse; None never stops.
        warn_on: warn once per new finding of this severity or worse.
        report_path: write the final report here as JSON (``gradcheckup show`` reads it).
        html_path: write the final report here as a self-contained HTML page.
        prefix: put before every logged name.

    Raises:
        ValueError: ``stop_on``/``warn_on`` names no severity, or ``log_every_n_steps``
            is not positive.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        log_every_n_steps: int | None = None,
        **options: Any,
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps: expected a positive int, got {log_every_n_steps}")
        super().__init__(config, **options)
        self.log_every_n_steps = log_every_n_steps

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Open the watch on the module and the trainer's optimizers."""
        self._open(
            pl_module,
            trainer.optimizers,
            _norm_clip_bound(trainer),
            trainer.is_global_zero,
            _data_parallel_wrapper(trainer),
        )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Every ``log_every_n_steps`` optimizer steps: log the window's scalars, and stop
        training when a finding reaches ``stop_on``."""
        every = self.log_every_n_steps or trainer.log_every_n_steps
        # global_step counts optimizer steps: while gradients accumulate it stays put.
        if not every or not trainer.global_step or trainer.global_step % every:
            return
        scalars = self._scalars_once(trainer.global_step)
        if scalars:
            pl_module.log_dict(scalars, on_step=True, on_epoch=False, prog_bar=False)
        if self._stops_now(trainer.should_stop, trainer.is_global_zero):
            trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the watch and write the report of the whole fit."""
        self._watch.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """The fit raised or was interrupted: remove the hooks and write what this
        process saw (its own report: other ranks may never get here to combine theirs)."""
        self._watch.close(local=True)


def _data_parallel_wrapper(trainer: Any) -> Any:
    """The strategy's DistributedDataParallel around the module, if it uses one."""
    from torch import nn

    wrapped = getattr(getattr(trainer, "strategy", None), "model", None)
    return wrapped if isinstance(wrapped, nn.parallel.DistributedDataParallel) else None


def _norm_clip_bound(trainer: Any) -> float | None:
    """The norm Lightning clips gradients to, or None when it does not clip by norm."""
    algorithm = getattr(trainer, "gradient_clip_algorithm", None)
    value = getattr(trainer, "gradient_clip_val", None)
    if value is None or str(getattr(algorithm, "value", algorithm) or "norm") != "norm":
        return None
    return float(value)
