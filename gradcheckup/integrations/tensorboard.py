"""Log a report to TensorBoard from a hand-written training loop.

    >>> from torch.utils.tensorboard import SummaryWriter           # doctest: +SKIP
    >>> from gradcheckup.integrations.tensorboard import log_report
    >>> writer = SummaryWriter("runs/exp1")                         # doctest: +SKIP
    >>> with gcu.watch(model, optimizer) as monitor:                # doctest: +SKIP
    ...     for step, (x, y) in enumerate(loader):
    ...         ...  # forward, backward, optimizer.step()
    ...         if step % 100 == 0:
    ...             log_report(writer, monitor.snapshot(), step)

Any writer with ``add_scalar``/``add_text``/``add_figure`` works: the
``torch.utils.tensorboard.SummaryWriter`` (``pip install 'gradcheckup[tensorboard]'``)
or tensorboardX's. The figure needs matplotlib (``pip install 'gradcheckup[plot]'``) and
is left out without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradcheckup.integrations._findings import findings_markdown
from gradcheckup.integrations._lazy import optional_figure
from gradcheckup.integrations._scalars import DEFAULT_PREFIX, summary_scalars
from gradcheckup.report import Report

__all__ = ["log_report"]


def log_report(
    writer: Any,
    report: Report,
    step: int,
    layers: Sequence[str] | None = None,
    *,
    figure: bool = True,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, float]:
    """Write the report's summary scalars, its findings and its gradient-flow figure.

    Tags: one scalar per name of ``summary_scalars`` (``gradcheckup/errors``...), the
    findings as Markdown text under ``gradcheckup/findings`` (verdict, then a table of
    severity, kind, where, message and fix), the figure of ``plot_gradient_flow`` under
    ``gradcheckup/flow``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or one with the same methods).
        report: typically ``monitor.snapshot()`` (the window since the last one).
        step: the global step to log at.
        layers: layer names to add per-layer scalars for; None for the two depth ends.
        figure: draw the figure (with matplotlib installed: about half a second per call
            on a CPU, the bulk of this call's cost); False logs the scalars and the
            text only, for logging often.
        prefix: put before every tag.

    Returns:
        The scalars that were logged.
    """
    scalars = summary_scalars(report, layers, prefix)
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, global_step=step)
    writer.add_text(f"{prefix}findings", findings_markdown(report), global_step=step)
    drawn = optional_figure(report, step) if figure else None
    if drawn is not None:
        writer.add_figure(f"{prefix}flow", drawn, global_step=step)
    return scalars
