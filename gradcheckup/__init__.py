"""gradcheckup: gradient diagnostics for PyTorch models, for test suites and CI.

    >>> import gradcheckup as gcu
    >>> report = gcu.check(model, inputs, target=target, loss_fn=loss_fn)  # doctest: +SKIP
    >>> report.ok                                                          # doctest: +SKIP

Attributes are imported on first use, so ``import gradcheckup`` (and the pytest plugin,
which every pytest run loads) costs nothing until a check is actually made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradcheckup._version import __version__

if TYPE_CHECKING:
    from gradcheckup._check import check
    from gradcheckup.config import Config
    from gradcheckup.monitor import Monitor, RanksDidNotJoin, watch
    from gradcheckup.rendering import render
    from gradcheckup.report import (
        ActivationStats,
        ClipCall,
        Finding,
        FindingKind,
        LayerStats,
        Report,
        Severity,
        StepStats,
        StepSummary,
        TemporalStats,
    )

_EXPORTS = {
    "check": "gradcheckup._check",
    "Config": "gradcheckup.config",
    "Monitor": "gradcheckup.monitor",
    "RanksDidNotJoin": "gradcheckup.monitor",
    "watch": "gradcheckup.monitor",
    "render": "gradcheckup.rendering",
    "ActivationStats": "gradcheckup.report",
    "ClipCall": "gradcheckup.report",
    "Finding": "gradcheckup.report",
    "FindingKind": "gradcheckup.report",
    "LayerStats": "gradcheckup.report",
    "Report": "gradcheckup.report",
    "Severity": "gradcheckup.report",
    "StepStats": "gradcheckup.report",
    "StepSummary": "gradcheckup.report",
    "TemporalStats": "gradcheckup.report",
}

__all__ = [
    "ActivationStats",
    "ClipCall",
    "Config",
    "Finding",
    "FindingKind",
    "LayerStats",
    "Monitor",
    "RanksDidNotJoin",
    "Report",
    "Severity",
    "StepStats",
    "StepSummary",
    "TemporalStats",
    "__version__",
    "check",
    "render",
    "watch",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradcheckup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
