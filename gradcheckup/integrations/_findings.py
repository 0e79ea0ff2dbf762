"""The findings of a report as rows and as Markdown, for the loggers' text and tables."""

from __future__ import annotations

from gradcheckup.figures import verdict
from gradcheckup.report import Report

__all__ = ["FINDING_COLUMNS", "finding_rows", "findings_markdown"]

FINDING_COLUMNS = ("severity", "kind", "where", "message", "fix")
"""The columns of ``finding_rows``, in order."""


def finding_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    """One row per finding (``FINDING_COLUMNS``), the worst severity first."""
    ordered = sorted(report.findings, key=lambda finding: -finding.severity.rank)
    return [
        (finding.severity.value, finding.kind.value, finding.where, finding.message, finding.hint)
        for finding in ordered
    ]


def findings_markdown(report: Report) -> str:
    """The verdict, then a Markdown table of the findings (or a line saying there are none)."""
    lines = [f"**gradcheckup: {verdict(report)}** ({report.passes} pass(es))", ""]
    rows = finding_rows(report)
    if not rows:
        return "\n".join([*lines, "No findings."])
    lines += ["| " + " | ".join(FINDING_COLUMNS) + " |", "|---" * len(FINDING_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(text) for text in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
