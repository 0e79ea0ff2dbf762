"""``gradcheckup show`` (a saved report, re-rendered) and ``gradcheckup compare`` (two saved
reports, layer by layer, judged like a baseline).

Only the standard library is imported here at module level: the parser is built for
``--help`` too, which must not wait for torch or pydantic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradcheckup.baseline import FindingChange, LayerChange

__all__ = ["add_saved_report_commands", "run_compare", "run_show"]

_COMPARE_EPILOG = (
    "Exit status: 0 without regressions, 1 with regressions (a layer's gradient norm moved "
    "by more than --factor either way, or a warning or error that the old report did not "
    "have or had milder), 2 for a usage or file error: the rules of --baseline, for two "
    "saved reports."
)
_SHOW_EPILOG = (
    "Exit status as for report and check: 0 when the saved report has no finding at or "
    "above --fail-on, 1 when it has, 2 for a usage or file error. A report saved before "
    "reports carried schema_version is read as schema version 1, with a note on stderr "
    "(--json writes it again with the field)."
)


def add_saved_report_commands(
    commands: Any, outputs: argparse.ArgumentParser, verbosity: argparse.ArgumentParser
) -> None:
    """Add ``show`` and ``compare`` to the ``gradcheckup`` subcommands ``commands``.

    Args:
        commands: what ``ArgumentParser.add_subparsers`` returned.
        outputs: the file, ``--fail-on`` and verbosity options ``report`` has, for ``show``.
        verbosity: ``--quiet`` and ``--debug``, for ``compare``.
    """
    show = commands.add_parser(
        "show",
        parents=[outputs],
        help="re-render a report saved with --json (terminal, --html, --plot, ...)",
        description="Print a report saved with --json and write its HTML page, plot or summaries.",
        epilog=_SHOW_EPILOG,
    )
    show.add_argument("report_json", type=Path, metavar="REPORT.json", help="a saved report.")
    show.add_argument(
        "--title", metavar="NAME", help="the name outputs show (default: the file's stem)."
    )
    show.set_defaults(baseline=None, update_baseline=False)
    compare = commands.add_parser(
        "compare",
        parents=[verbosity],
        help="per-layer changes between two saved reports; exit 1 on regressions",
        description="Compare two reports saved with --json: each layer's gradient norm, and the findings.",
        epilog=_COMPARE_EPILOG,
    )
    compare.add_argument("old", type=Path, metavar="OLD.json", help="the report compared with.")
    compare.add_argument("new", type=Path, metavar="NEW.json", help="the report judged.")
    compare.add_argument(
        "--factor",
        type=float,
        default=10.0,
        metavar="X",
        help="allowed factor of a layer's gradient norm either way (default 10).",
    )


def run_show(args: argparse.Namespace) -> bool:
    """Print the saved report and write the files asked for.

    Returns:
        True if the report has findings at or above ``--fail-on``.

    Raises:
        FileNotFoundError: no file at the path given.
        ValueError: an output that cannot be written, or a file that is no (readable)
            report, in one line.
    """
    from gradcheckup.cli.outputs import check_destinations, emit
    from gradcheckup.report_files import read_report

    check_destinations(args)
    report, notes = read_report(args.report_json)
    return emit(report, args.title or args.report_json.stem, notes, args)


def run_compare(args: argparse.Namespace) -> bool:
    """Print the per-layer and per-finding changes from ``args.old`` to ``args.new``.

    Returns:
        True if there are regressions (``baseline.profile_regressions``).

    Raises:
        FileNotFoundError: no file at a path given.
        ValueError: a factor below 1, or a file that is no (readable) report.
    """
    if not args.factor >= 1:  # also refuses nan
        raise ValueError(f"--factor: expected a factor of at least 1, got {args.factor}")
    from gradcheckup.baseline import (
        finding_changes,
        layer_changes,
        profile_of,
        profile_regressions,
    )
    from gradcheckup.report_files import read_report

    old, old_notes = read_report(args.old)
    new, new_notes = read_report(args.new)
    (before,), (after,) = profile_of([old]), profile_of([new])
    regressions = profile_regressions([before], [after], args.factor, "old report")
    if not args.quiet:
        _print_changes(
            layer_changes(before["layers"], after["layers"]),
            finding_changes(before["findings"], after["findings"]),
            args,
        )
    for note in old_notes + new_notes:
        print(f"note: {note}", file=sys.stderr)
    verdict = "REGRESSED" if regressions else "no regressions"
    count = f"{len(regressions)} regression(s)"
    print(f"gradcheckup compare: {verdict} ({count}): {args.new} vs {args.old}")
    for regression in regressions:
        print(f"  - {regression}")
    return bool(regressions)


def _print_changes(
    layers: list[LayerChange], findings: list[FindingChange], args: argparse.Namespace
) -> None:
    """A table of every layer's gradient norm in both reports, then the findings."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gradcheckup.report import display_name, format_number

    table = Table(
        title=f"Gradient norm per layer: {args.old} -> {args.new}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("layer", "old", "new", "change", ""):
        table.add_column(column, justify="left" if column in ("layer", "") else "right")
    for change in layers:
        ratio = change.ratio
        moved = change.moved(args.factor)
        table.add_row(
            display_name(change.name),
            format_number(change.old),
            format_number(change.new),
            "-" if ratio is None else f"{ratio:.3g}x",
            Text(_layer_status(change, moved, args.factor), style="red" if moved else "dim"),
        )
    console = Console()
    console.print(table)
    console.print(Text("Findings (warnings and errors)", style="bold"))
    if not findings:
        console.print("  none in either report")
    for change in findings:
        console.print(Text(f"  {change.describe()}", style="red" if change.regressed else ""))


def _layer_status(change: LayerChange, moved: bool, factor: float) -> str:
    if not change.in_old:
        return "only in the new report"
    if not change.in_new:
        return "only in the old report"
    if change.ratio is None:
        return "not compared (unmeasured, zero or non-finite)"
    return f"moved more than {factor:g}x" if moved else ""
