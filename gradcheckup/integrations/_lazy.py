"""What the adapters need from optional packages: importing one with the install command
in the error, and the gradient-flow figure where matplotlib is installed."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import TYPE_CHECKING

from gradcheckup.report import Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["import_optional", "optional_figure"]


def import_optional(module: str, extra: str) -> ModuleType:
    """``import module``, or an ImportError naming the extra that installs it.

    Args:
        module: the module to import, e.g. ``"wandb"``.
        extra: gradcheckup's optional extra that installs it, e.g. ``"wandb"``.

    Raises:
        ImportError: ``module`` is not installed; the message says
            ``pip install 'gradcheckup[<extra>]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"gradcheckup.integrations.{extra} needs {module}: pip install 'gradcheckup[{extra}]'"
        ) from error


def optional_figure(report: Report, step: int) -> Figure | None:
    """The figure of ``plot_gradient_flow`` titled with the step, or None where matplotlib
    is not installed (the loggers then log the numbers and the text only)."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    from gradcheckup.plotting import gradient_flow_figure

    return gradient_flow_figure(report, title=f"gradient flow at step {step}")
