"""Machine-readable and paste-ready forms of a Report: JUnit XML, Markdown, GitHub
Actions annotations."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from gradcheckup.report import Finding, Report, Severity, display_name, format_number

__all__ = ["github_annotations", "junit_xml", "markdown_summary", "severities_at_or_above"]


def severities_at_or_above(fail_on: Severity | str) -> set[Severity]:
    """The severities that fail a run at ``fail_on`` (``fail_on`` and worse).

    Raises:
        ValueError: ``fail_on`` names no severity.
    """
    return {severity for severity in Severity if severity.at_least(fail_on)}


def junit_xml(report: Report, name: str, fail_on: str = "error") -> str:
    """JUnit XML: one test case per finding (failing at or above ``fail_on``) plus an
    overall case named after ``name``."""
    failing = severities_at_or_above(fail_on)
    suite = ElementTree.Element("testsuite", name="gradcheckup", timestamp="")
    cases = []
    overall = ElementTree.Element(
        "testcase", classname="gradcheckup", name=f"gradient health of {name}"
    )
    failures = [finding for finding in report.findings if finding.severity in failing]
    if failures:
        failure = ElementTree.SubElement(
            overall, "failure", message=f"{len(failures)} finding(s) at or above {fail_on}"
        )
        failure.text = "\n".join(finding.describe() for finding in failures)
    cases.append(overall)
    for finding in report.findings:
        case = ElementTree.Element(
            "testcase", classname=f"gradcheckup.{finding.kind.value}", name=finding.where
        )
        if finding.severity in failing:
            element = ElementTree.SubElement(case, "failure", message=finding.message)
            element.text = f"{finding.describe()}"
        else:
            ElementTree.SubElement(case, "system-out").text = finding.describe()
        cases.append(case)
    suite.extend(cases)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(case.find("failure") is not None for case in cases)))
    suite.set("errors", "0")
    root = ElementTree.Element("testsuites")
    root.append(suite)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


def markdown_summary(report: Report, name: str, fail_on: str = "error") -> str:
    """A Markdown summary to paste into a PR or ``$GITHUB_STEP_SUMMARY``: the verdict at
    ``fail_on``, a table of the findings and a folded table of the layers."""
    failing = severities_at_or_above(fail_on)
    verdict = (
        "❌ unhealthy" if any(f.severity in failing for f in report.findings) else "✅ healthy"
    )
    lines = [
        f"## gradcheckup: {verdict}",
        "",
        f"`{name}`: {len(report.layers)} layers, {len(report.activations)} activation sites, "
        f"{report.passes} pass(es), torch {report.torch_version}.",
        "",
    ]
    if report.findings:
        lines += [
            "| severity | finding | where | value | threshold | hint |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {f.severity.value} | {f.kind.value} | `{f.where}` | {format_number(f.value)} | "
            f"{format_number(f.threshold)} | {_escape(f.hint)} |"
            for f in report.findings
        ]
    else:
        lines.append("No findings: gradients look healthy.")
    lines += [
        "",
        "<details><summary>Layers (forward order)</summary>",
        "",
        "| layer | type | grad norm | grad/weight | dL/d out | gain |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{display_name(layer.name)}` | {layer.module_type} | "
        f"{format_number(layer.grad_norm)} | {format_number(layer.grad_to_weight)} | "
        f"{format_number(layer.output_grad_norm)} | {format_number(layer.backward_gain)} |"
        for layer in report.layers
    ]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def github_annotations(
    report: Report, fail_on: str = "error", *, file: str | None = None, line: int | None = None
) -> list[str]:
    """Workflow commands GitHub Actions turns into annotations, one per finding.

    ``fail_on`` is accepted for symmetry with the other exports; each annotation's level
    follows its finding's severity. ``file`` (relative to the repository root) and
    ``line`` place the annotations there, e.g. at the test that made the report, where
    GitHub shows them beside the code; without them they appear on the run only.
    """
    commands = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    place = "" if file is None else f"file={_escape_property(file)},"
    if file is not None and line is not None:
        place += f"line={line},"
    return [
        f"::{commands[finding.severity]} {place}title="
        f"{_escape_property(f'gradcheckup {finding.kind.value} at {finding.where}')}"
        f"::{_escape_data(_annotation_text(finding))}"
        for finding in report.findings
    ]


def _annotation_text(finding: Finding) -> str:
    return f"{finding.message} Hint: {finding.hint}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
