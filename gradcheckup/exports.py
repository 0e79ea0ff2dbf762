"""Machine-readable and paste-ready forms of a Report: JUnit XML, Markdown, GitHub
Actions annotations."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from gradcheckup.report import Finding, Report, Severity, display_name

__all__ = ["github_annotations", "junit_xml", "markdown_summary", "severities_at_or_above"]

_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


def severities_at_or_above(fail_on: str) -> set[Severity]:
    threshold = _ORDER[Severity(fail_on)]
    return {severity for severity, rank in _ORDER.items() if rank >= threshold}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def junit_xml(report: Report, name: str, fail_on: str = "error") -> str:
    """One test case per finding (failing at or above ``fail_on``) plus an overall case."""
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
    """A summary to paste into a PR or ``$GITHUB_STEP_SUMMARY``."""
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
            f"| {f.severity.value} | {f.kind.value} | `{f.where}` | {_number(f.value)} | "
            f"{_number(f.threshold)} | {_escape(f.hint)} |"
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
        f"| `{display_name(layer.name)}` | {layer.module_type} | {_number(layer.grad_norm)} | "
        f"{_number(layer.grad_to_weight)} | {_number(layer.output_grad_norm)} | "
        f"{_number(layer.backward_gain)} |"
        for layer in report.layers
    ]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def github_annotations(report: Report, fail_on: str = "error") -> list[str]:
    """Workflow commands GitHub Actions turns into annotations."""
    commands = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    return [
        f"::{commands[finding.severity]} title="
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
