"""``gradcheckup show`` and ``gradcheckup compare`` on saved reports, and ``--html`` on
``report``/``check``: exit codes, files, one-line refusals."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradcheckup as gcu
from gradcheckup.cli import EXIT_FINDINGS, EXIT_HEALTHY, EXIT_USAGE, build_parser, main
from gradcheckup.report import Severity
from tests import sample_reports

ROOT = Path(__file__).resolve().parent.parent.parent
GOLDEN = ROOT / "tests" / "golden"


def _save(report: gcu.Report, path: Path) -> Path:
    path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return path


def test_report_writes_html_and_show_re_renders_the_saved_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved, page = tmp_path / "sick.json", tmp_path / "out" / "sick.html"
    arguments = ["report", "--example", "plain-rnn", "--quiet", "--json", str(saved)]
    assert main([*arguments, "--html", str(page)]) == EXIT_FINDINGS
    assert "vanishing_through_time" in page.read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["show", str(saved)]) == EXIT_FINDINGS
    out = capsys.readouterr().out
    assert "gradcheckup report: sick" in out and "vanishing_through_time at recurrent" in out
    again, plot = tmp_path / "again.html", tmp_path / "again.png"
    show = ["show", str(saved), "--title", "plain RNN", "--quiet", "--html", str(again)]
    if _has_matplotlib():
        show += ["--plot", str(plot)]
    assert main(show) == EXIT_FINDINGS
    assert capsys.readouterr().out == (
        "gradcheckup: UNHEALTHY plain RNN: 1 error(s), 0 warning(s): "
        "vanishing_through_time at recurrent (error)\n"
    )
    assert "<h1>gradcheckup report: plain RNN</h1>" in again.read_text(encoding="utf-8")
    assert not _has_matplotlib() or plot.read_bytes().startswith(b"\x89PNG")


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_show_exits_by_fail_on_like_report(tmp_path: Path) -> None:
    healthy = _save(sample_reports.healthy_resnet(), tmp_path / "healthy.json")
    assert main(["show", str(healthy), "--quiet"]) == EXIT_HEALTHY
    with_warning = sample_reports.dead_relu().model_copy(
        update={
            "findings": [
                f.model_copy(update={"severity": Severity.WARNING})
                for f in sample_reports.dead_relu().findings
            ]
        }
    )
    warned = _save(with_warning, tmp_path / "warned.json")
    assert main(["show", str(warned), "--quiet"]) == EXIT_HEALTHY
    assert main(["show", str(warned), "--quiet", "--fail-on", "warning"]) == EXIT_FINDINGS


def test_show_reads_a_file_from_before_schema_version_with_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = GOLDEN / "healthy_residual.json"
    assert main(["show", str(path), "--quiet"]) == EXIT_HEALTHY
    captured = capsys.readouterr()
    assert captured.out.startswith("gradcheckup: HEALTHY healthy_residual")
    assert f"note: {path} has no schema_version" in captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema_version": 2000}', "is newer than this gradcheckup reads"),
        ("not json", "not a gradcheckup report: invalid JSON"),
    ],
)
def test_show_refuses_unreadable_reports_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    assert main(["show", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"gradcheckup: error: {path}: ") and message in err
    assert err.count("\n") == 1


def test_show_checks_its_outputs_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = _save(sample_reports.dead_relu(), tmp_path / "r.json")
    assert main(["show", str(saved), "--html", str(tmp_path)]) == EXIT_USAGE
    assert f"--html {tmp_path}: is a directory" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "none.json")]) == EXIT_USAGE
    assert "none.json: no such file" in capsys.readouterr().err


def _moved(report: gcu.Report, name: str, factor: float) -> gcu.Report:
    layers = [
        layer.model_copy(update={"grad_norm": layer.grad_norm * factor})
        if layer.name == name
        else layer
        for layer in report.layers
    ]
    return report.model_copy(update={"layers": layers})


def test_compare_shows_every_layer_and_exits_1_on_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = sample_reports.deep_sigmoid()
    old = _save(report, tmp_path / "old.json")
    new = _save(_moved(report, "38", 1 / 50), tmp_path / "new.json")
    assert main(["compare", str(old), str(old)]) == EXIT_HEALTHY
    assert "gradcheckup compare: no regressions (0 regression(s))" in capsys.readouterr().out
    assert main(["compare", str(old), str(new)]) == EXIT_FINDINGS
    out = capsys.readouterr().out
    for layer in report.layers:
        assert f"\n {layer.name} " in out
    assert "moved more than 10x" in out and "finding unchanged: vanishing at 0 (error)" in out
    before = report.layer("38").grad_norm
    assert out.splitlines()[-1] == (
        f"  - layer '38': gradient norm {before / 50:.3g} vs old report {before:.3g} "
        "(50x smaller; allowed factor 10)"
    )
    assert main(["compare", str(old), str(new), "--factor", "100", "--quiet"]) == EXIT_HEALTHY
    assert capsys.readouterr().out.startswith("gradcheckup compare: no regressions")


def test_compare_counts_a_new_finding_as_a_regression_and_a_gone_one_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sick = sample_reports.dead_relu()
    cured = sick.model_copy(update={"findings": []})
    assert (
        main(
            [
                "compare",
                str(_save(cured, tmp_path / "a.json")),
                str(_save(sick, tmp_path / "b.json")),
                "--quiet",
            ]
        )
        == EXIT_FINDINGS
    )
    assert "  - new finding: dead_relu at 0/relu (error)" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "b.json"), str(tmp_path / "a.json")]) == EXIT_HEALTHY
    assert "finding gone: dead_relu at 0/relu (was error)" in capsys.readouterr().out


def test_compare_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = _save(sample_reports.dead_relu(), tmp_path / "r.json")
    assert main(["compare", str(saved), str(saved), "--factor", "0.5"]) == EXIT_USAGE
    assert "--factor: expected a factor of at least 1, got 0.5" in capsys.readouterr().err
    assert main(["compare", str(saved), str(tmp_path / "none.json")]) == EXIT_USAGE
    assert main(["compare", str(saved)]) == EXIT_USAGE


def test_compare_exit_status_reaches_the_shell(tmp_path: Path) -> None:
    report = sample_reports.deep_sigmoid()
    old = _save(report, tmp_path / "old.json")
    new = _save(_moved(report, "0", 1000.0), tmp_path / "new.json")
    result = subprocess.run(
        [sys.executable, "-m", "gradcheckup", "compare", str(old), str(new), "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
        timeout=300,
    )
    assert result.returncode == EXIT_FINDINGS, result.stderr
    assert "gradcheckup compare: REGRESSED (1 regression(s))" in result.stdout


def test_the_commands_are_listed_and_html_is_an_option_of_report_and_check() -> None:
    parser = build_parser()
    assert "{report,check,show,compare}" in parser.format_help()
    for command in (["report"], ["check", "m:f"]):
        assert str(parser.parse_args([*command, "--html", "x.html"]).html) == "x.html"
    commands = parser._subparsers._group_actions[0].choices
    assert (
        "Exit status: 0 without regressions, 1 with regressions"
        in commands["compare"].format_help()
    )
    assert "schema version 1" in commands["show"].format_help()


def test_the_saved_report_commands_import_only_the_standard_library_at_load() -> None:
    """So that building the parser for --help waits for neither torch nor pydantic."""
    tree = ast.parse((ROOT / "gradcheckup" / "cli" / "saved.py").read_text(encoding="utf-8"))
    loaded = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            loaded |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            loaded.add((node.module or "").split(".")[0])
    assert loaded <= {"__future__", "argparse", "sys", "pathlib", "typing"}
