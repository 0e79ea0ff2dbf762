"""Adapters that put a report where people look while they train.

- ``gradcheckup.integrations.tensorboard``: ``log_report(writer, report, step)`` for a
  ``torch.utils.tensorboard.SummaryWriter`` (``pip install 'gradcheckup[tensorboard]'``);
- ``gradcheckup.integrations.wandb``: ``log_report(run, report, step)`` for a Weights &
  Biases run (``pip install 'gradcheckup[wandb]'``);
- ``gradcheckup.integrations.lightning``: ``GradcheckupCallback`` for PyTorch Lightning
  (``lightning`` or ``pytorch_lightning``; ``pip install 'gradcheckup[lightning]'``);
- ``gradcheckup.integrations.transformers``: ``GradcheckupCallback`` for the Hugging Face
  ``Trainer`` (``pip install 'gradcheckup[transformers]'``);
- ``summary_scalars(report)``: the few numbers every adapter logs, with stable names.

Importing this package imports neither torch nor any logger: each adapter imports its
package when it is used.
"""

from __future__ import annotations

from gradcheckup.integrations._scalars import summary_scalars

__all__ = ["summary_scalars"]
