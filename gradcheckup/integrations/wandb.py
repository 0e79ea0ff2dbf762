"""Log a report to Weights & Biases from a hand-written training loop.

    >>> import wandb                                                 # doctest: +SKIP
    >>> from gradcheckup.integrations.wandb import log_report
    >>> run = wandb.init(project="my-model")                         # doctest: +SKIP
    >>> with gcu.watch(model, optimizer) as monitor:                 # doctest: +SKIP
    ...     for step, (x, y) in enumerate(loader):
    ...         ...  # forward, backward, optimizer.step()
    ...         if step % 100 == 0:
    ...             log_report(run, monitor.snapshot(), step)

Needs ``wandb`` (``pip install 'gradcheckup[wandb]'``); the figure needs matplotlib
(``pip install 'gradcheckup[plot]'``) and is left out without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Any

from gradcheckup.integrations._findings import FINDING_COLUMNS, finding_rows
from gradcheckup.integrations._lazy import import_optional, optional_figure
from gradcheckup.integrations._scalars import DEFAULT_PREFIX, summary_scalars
from gradcheckup.report import Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image

__all__ = ["log_report"]


def log_report(
    run: Any,
    report: Report,
    step: int,
    layers: Sequence[str] | None = None,
    *,
    figure: bool = True,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, Any]:
    """Log the report's summary scalars, its findings and its gradient-flow figure in one
    ``run.log`` call at ``step``.

    Keys: one per name of ``summary_scalars`` (``gradcheckup/errors``...), the findings as
    a ``wandb.Table`` under ``gradcheckup/findings`` (columns severity, kind, where,
    message, fix), the figure of ``plot_gradient_flow`` as a ``wandb.Image`` under
    ``gradcheckup/flow``.

    Args:
        run: the run ``wandb.init()`` returned.
        report: typically ``monitor.snapshot()`` (the window since the last one).
        step: the step to log at (W&B needs it to grow; log your own metrics at the same
            step, or before this call).
        layers: layer names to add per-layer scalars for; None for the two depth ends.
        figure: draw the figure (with matplotlib installed: about half a second per call
            on a CPU, the bulk of this call's cost); False logs the scalars and the
            table only, for logging often.
        prefix: put before every key.

    Returns:
        The dictionary that was logged.

    Raises:
        ImportError: wandb is not installed.
    """
    wandb = import_optional("wandb", extra="wandb")
    logged: dict[str, Any] = dict(summary_scalars(report, layers, prefix))
    logged[f"{prefix}findings"] = wandb.Table(
        columns=list(FINDING_COLUMNS), data=[list(row) for row in finding_rows(report)]
    )
    drawn = optional_figure(report, step) if figure else None
    if drawn is not None:
        logged[f"{prefix}flow"] = wandb.Image(_as_pil_image(drawn))
    run.log(logged, step=step)
    return logged


def _as_pil_image(figure: Figure) -> Image:
    """The figure as a PNG, at the resolution of ``plot_gradient_flow``. (``wandb.Image``
    takes a Figure too, but only once ``matplotlib.pyplot`` is imported, which the figure
    does not need.)"""
    from PIL import Image

    png = BytesIO()
    figure.savefig(png, format="png", dpi=110)
    png.seek(0)
    return Image.open(png)
