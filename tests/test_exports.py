"""JUnit XML, Markdown and GitHub annotations of a hand-built report, checked against
expectations written out by hand."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

import gradcheckup as gcu
from gradcheckup.exports import (
    github_annotations,
    junit_xml,
    markdown_summary,
    severities_at_or_above,
)
from gradcheckup.report import Severity
from tests.rules.stats import layer


def _finding(
    kind: str, severity: str, where: str, value: float | None, **extra: str
) -> gcu.Finding:
    return gcu.Finding(
        kind=kind,
        severity=severity,
        where=where,
        value=value,
        threshold=extra.get("threshold"),
        message=extra.get("message", f"{kind} measured."),
        hint=extra.get("hint", "Fix it."),
    )


def _report(findings: list[gcu.Finding]) -> gcu.Report:
    layers = [
        layer("", 0, 2.5e-7),
        layer("head", 1, 12345.0).model_copy(update={"grad_norm": None, "backward_gain": 0.5}),
    ]
    return gcu.Report(
        layers=layers,
        activations=[],
        findings=findings,
        passes=1,
        config=gcu.Config(),
        torch_version="9.9",
        gradcheckup_version="0",
    )


VANISHING = _finding("vanishing", "error", "l0", 1.76e-9, threshold=1e-3)
DEAD = _finding("dead_relu", "warning", "relu", 0.25, threshold=0.1, hint="Use a | b.")
UNUSED = _finding("no_gradient", "info", "(model)", None)


@pytest.mark.parametrize(
    ("fail_on", "expected"),
    [
        ("error", {Severity.ERROR}),
        ("warning", {Severity.ERROR, Severity.WARNING}),
        ("info", {Severity.ERROR, Severity.WARNING, Severity.INFO}),
        (Severity.WARNING, {Severity.ERROR, Severity.WARNING}),
    ],
)
def test_severities_at_or_above(fail_on: str, expected: set[Severity]) -> None:
    assert severities_at_or_above(fail_on) == expected


def test_severities_at_or_above_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="fatal"):
        severities_at_or_above("fatal")


def test_junit_has_an_overall_case_and_one_case_per_finding() -> None:
    root = ElementTree.fromstring(junit_xml(_report([VANISHING, DEAD, UNUSED]), "net"))
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "0")
    overall, vanishing, dead, unused = suite.findall("testcase")
    assert overall.get("name") == "gradient health of net"
    assert overall.find("failure").get("message") == "1 finding(s) at or above error"
    assert overall.find("failure").text == VANISHING.describe()
    assert (vanishing.get("classname"), vanishing.get("name")) == ("gradcheckup.vanishing", "l0")
    assert vanishing.find("failure").get("message") == "vanishing measured."
    assert dead.find("failure") is None and dead.find("system-out").text == DEAD.describe()
    assert unused.find("failure") is None


def test_junit_at_warning_fails_warnings_too() -> None:
    root = ElementTree.fromstring(
        junit_xml(_report([VANISHING, DEAD, UNUSED]), "net", fail_on="warning")
    )
    suite = root.find("testsuite")
    assert suite.get("failures") == "3"  # overall, vanishing, dead_relu
    overall = suite.find("testcase")
    assert overall.find("failure").get("message") == "2 finding(s) at or above warning"


def test_junit_of_a_healthy_report_has_one_passing_case() -> None:
    suite = ElementTree.fromstring(junit_xml(_report([]), "net")).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("1", "0")


def test_markdown_rows_use_the_shared_number_format_and_escape_pipes() -> None:
    text = markdown_summary(_report([VANISHING, DEAD]), "net")
    lines = text.splitlines()
    assert lines[0] == "## gradcheckup: ❌ unhealthy"
    assert lines[2] == "`net`: 2 layers, 0 activation sites, 1 pass(es), torch 9.9."
    assert "| error | vanishing | `l0` | 1.8e-09 | 0.001 | Fix it. |" in lines
    assert "| warning | dead_relu | `relu` | 0.25 | 0.1 | Use a \\| b. |" in lines
    assert "| `(model)` | Linear | 1 | 1 | 2.5e-07 | - |" in lines
    assert "| `head` | Linear | - | 1 | 1.2e+04 | 0.5 |" in lines


def test_markdown_verdict_follows_fail_on() -> None:
    assert markdown_summary(_report([DEAD]), "n").startswith("## gradcheckup: ✅ healthy")
    warned = markdown_summary(_report([DEAD]), "n", fail_on="warning")
    assert warned.startswith("## gradcheckup: ❌ unhealthy")
    assert "No findings: gradients look healthy." in markdown_summary(_report([]), "n")


def test_annotations_map_severity_to_level_and_escape_what_github_parses() -> None:
    odd = _finding("nonfinite", "error", "a:b,c", 1.0, message="100% bad\nreally", hint="Look.")
    lines = github_annotations(_report([odd, DEAD, UNUSED]))
    assert lines[0] == (
        "::error title=gradcheckup nonfinite at a%3Ab%2Cc::100%25 bad%0Areally Hint: Look."
    )
    assert lines[1].startswith("::warning title=gradcheckup dead_relu at relu::")
    assert lines[2].startswith("::notice title=gradcheckup no_gradient at (model)::")


def test_annotations_carry_file_and_line_where_given() -> None:
    (placed,) = github_annotations(_report([DEAD]), file="tests/test_a,b.py", line=12)
    assert placed.startswith(
        "::warning file=tests/test_a%2Cb.py,line=12,title=gradcheckup dead_relu at relu::"
    )
    (file_only,) = github_annotations(_report([DEAD]), file="tests/test_m.py")
    assert file_only.startswith("::warning file=tests/test_m.py,title=")
