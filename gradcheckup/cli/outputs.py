"""What the command line makes of a report: the printed report or verdict, the files
(JSON, JUnit, Markdown, plot, HTML), GitHub annotations and the baseline comparison."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from gradcheckup.report import Severity

if TYPE_CHECKING:
    from gradcheckup.report import Report

__all__ = ["check_destinations", "emit"]


def check_destinations(args: argparse.Namespace) -> None:
    """Refuse, before any work, the files that could not be written and a baseline that
    could not be compared with.

    Raises:
        ValueError: one line naming the flag: an output path that is a directory or
            cannot be created, ``--plot`` without matplotlib, a ``--baseline`` to compare
            with that is a directory or no baseline file.
    """
    from gradcheckup._paths import output_path_problem

    destinations = [
        ("--json", args.json),
        ("--junit", args.junit),
        ("--markdown", args.markdown),
        ("--plot", args.plot),
        ("--html", args.html),
        ("--baseline", args.baseline if args.update_baseline else None),
    ]
    for flag, path in destinations:
        problem = None if path is None else output_path_problem(path)
        if problem:
            raise ValueError(f"{flag} {path}: {problem}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'gradcheckup[plot]'") from None
    if args.baseline is not None and not args.update_baseline and args.baseline.exists():
        from gradcheckup.baseline import read_baseline

        if args.baseline.is_dir():
            raise ValueError(f"--baseline {args.baseline}: is a directory, not a baseline file")
        try:
            read_baseline(args.baseline)
        except ValueError as error:
            raise ValueError(f"--baseline {error}") from None


def emit(report: Report, name: str, notes: list[str], args: argparse.Namespace) -> bool:
    """Print and write ``report`` as the output options ask.

    Args:
        report: the diagnosis.
        name: the model as the output names it.
        notes: what loading the model could not provide, printed to stderr.
        args: the parsed command line.

    Returns:
        True if the command fails: findings at or above ``--fail-on``, or a baseline
        regression.

    Raises:
        ValueError: a file that could not be written after all (``check_destinations``
            ran before the work), naming its flag.
    """
    failed = any(finding.severity.at_least(args.fail_on) for finding in report.findings)
    if args.quiet:
        verdict = "UNHEALTHY" if failed else "HEALTHY"
        print(f"gradcheckup: {verdict} {name}: {_counts(report)}")
    else:
        from rich.console import Console

        console = Console()
        console.rule(f"gradcheckup report: {name}")
        report.print(console)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    _write_files(report, name, args)
    regressions = _baseline(report, args)
    return failed or bool(regressions)


_NAMED_IN_VERDICT = 3
"""How many errors and warnings the --quiet verdict names (worst first); the rest are
counted, so the verdict stays one line."""


def _counts(report: Report) -> str:
    """'1 error(s), 1 warning(s): vanishing at 0 (error); dead_relu at 2 (warning)'."""
    errors = sum(finding.severity is Severity.ERROR for finding in report.findings)
    warnings = sum(finding.severity is Severity.WARNING for finding in report.findings)
    counts = f"{errors} error(s), {warnings} warning(s)"
    named = [f for f in report.findings if f.severity.at_least(Severity.WARNING)]
    if not named:
        return counts
    shown = [f"{f.kind.value} at {f.where} ({f.severity.value})" for f in named]
    if len(shown) > _NAMED_IN_VERDICT:
        shown[_NAMED_IN_VERDICT:] = [f"{len(shown) - _NAMED_IN_VERDICT} more"]
    return f"{counts}: {'; '.join(shown)}"


def _write_files(report: Report, name: str, args: argparse.Namespace) -> None:
    """The JSON, JUnit and Markdown files, GitHub annotations, the plot and the HTML page."""
    from gradcheckup.exports import github_annotations, junit_xml, markdown_summary

    if args.json:
        _write("--json", args.json, report.model_dump_json(indent=2))
    if args.junit:
        _write("--junit", args.junit, junit_xml(report, name, args.fail_on))
    if args.markdown:
        _write(
            "--markdown",
            args.markdown,
            markdown_summary(report, name, args.fail_on),
            append=str(args.markdown) == os.environ.get("GITHUB_STEP_SUMMARY"),
        )
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(report, args.fail_on):
            print(line)
    if args.plot:
        from gradcheckup.plotting import plot_gradient_flow

        with _naming_the_flag("--plot", args.plot):
            plot_gradient_flow(report, args.plot, title=name)
    if args.html:
        from gradcheckup.html_report import write_html_report

        with _naming_the_flag("--html", args.html):
            write_html_report(report, args.html, title=name)


def _baseline(report: Report, args: argparse.Namespace) -> list[str]:
    """Write the baseline, or compare with it: the regressions, each printed."""
    if args.baseline is None:
        return []
    from gradcheckup.baseline import compare_with_baseline, write_baseline

    if args.update_baseline:
        with _naming_the_flag("--baseline", args.baseline):
            write_baseline(args.baseline, [report])
        print(f"gradcheckup: baseline written to {args.baseline}", file=sys.stderr)
        return []
    if not args.baseline.is_file():
        print(
            f"gradcheckup: no baseline at {args.baseline}; write one with --update-baseline",
            file=sys.stderr,
        )
        return []
    problems = compare_with_baseline(args.baseline, [report], args.baseline_factor)
    for problem in problems:
        print(f"gradcheckup: baseline regression: {problem}", file=sys.stderr)
    return problems


def _write(flag: str, path: Path, text: str, append: bool = False) -> None:
    with _naming_the_flag(flag, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append else "w", encoding="utf-8") as handle:
            handle.write(text)


@contextmanager
def _naming_the_flag(flag: str, path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` as a one-line error that names its flag."""
    try:
        yield
    except OSError as error:
        raise ValueError(f"{flag} {path}: cannot be written ({error.strerror or error})") from None
