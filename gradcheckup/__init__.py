"""gradcheckup: gradient diagnostics for PyTorch models, for test suites and CI.

>>> import gradcheckup as gcu
>>> report = gcu.check(model, inputs, target=target, loss_fn=loss_fn)  # doctest: +SKIP
>>> report.ok                                                          # doctest: +SKIP
"""

from gradcheckup._check import check
from gradcheckup._version import __version__
from gradcheckup.config import Config
from gradcheckup.monitor import Monitor, watch
from gradcheckup.render import render
from gradcheckup.report import (
    ActivationStats,
    Finding,
    FindingKind,
    LayerStats,
    Report,
    Severity,
)

__all__ = [
    "ActivationStats",
    "Config",
    "Finding",
    "FindingKind",
    "LayerStats",
    "Monitor",
    "Report",
    "Severity",
    "__version__",
    "check",
    "render",
    "watch",
]
