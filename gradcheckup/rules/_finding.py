"""How every rule states its verdict: the severity band a value falls in, and one builder
for ``Finding``s.

A module of its own (not ``rules/__init__``) so that the rule modules can use it while
``rules/__init__`` imports them, without an import circle inside the package.
"""

from __future__ import annotations

from typing import Literal

from gradcheckup.report import Finding, FindingKind, Severity
from gradcheckup.rules.hints import HINTS


def severity_band(
    value: float, error_at: float, warn_at: float, worse_when: Literal["lower", "higher"]
) -> tuple[Severity, float] | None:
    """Error or warning (and the threshold crossed) for a value, or None.

    ``worse_when="lower"`` crosses a threshold strictly below it, ``"higher"`` at or above
    it. The error threshold is checked first, so an error threshold set milder than the
    warning one still gives an error.
    """

    def crosses(threshold: float) -> bool:
        return value < threshold if worse_when == "lower" else value >= threshold

    if crosses(error_at):
        return Severity.ERROR, error_at
    if crosses(warn_at):
        return Severity.WARNING, warn_at
    return None


def finding(
    kind: FindingKind,
    severity: Severity,
    where: str,
    message: str,
    *,
    value: float | None = None,
    threshold: float | None = None,
    hint: str | None = None,
) -> Finding:
    """A ``Finding``; ``hint`` defaults to the fixed text for ``kind`` in ``HINTS``.

    Raises:
        KeyError: no ``hint`` given and ``kind`` has no fixed text (its hint depends on
            what was measured).
    """
    return Finding(
        kind=kind,
        severity=severity,
        where=where,
        value=value,
        threshold=threshold,
        message=message,
        hint=HINTS[kind] if hint is None else hint,
    )
