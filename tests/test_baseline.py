"""Gradient-profile baselines as plain functions: paths, stored profiles, regressions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gradcheckup as gcu
from gradcheckup.baseline import (
    FindingChange,
    LayerChange,
    baseline_path,
    compare_with_baseline,
    finding_changes,
    layer_changes,
    profile_of,
    profile_regressions,
    write_baseline,
)
from tests.rules.stats import layer


def _finding(kind: str, severity: str, where: str) -> gcu.Finding:
    return gcu.Finding(
        kind=kind, severity=severity, where=where, value=1.0, threshold=None, message="m", hint="h"
    )


def _report(norms: dict[str, float | None], findings: list[gcu.Finding] = ()) -> gcu.Report:
    layers = [
        layer(name, i, 1.0).model_copy(update={"grad_norm": norm})
        for i, (name, norm) in enumerate(norms.items())
    ]
    return gcu.Report(
        layers=layers,
        activations=[],
        findings=list(findings),
        passes=1,
        config=gcu.Config(),
        torch_version="9.9",
        gradcheckup_version="0",
    )


def test_baseline_path_makes_a_safe_file_name_from_the_node_id(tmp_path: Path) -> None:
    path = baseline_path(tmp_path, "tests/test_model.py::test_grad[relu-2]")
    assert path == tmp_path / "tests_test_model.py_test_grad_relu-2.json"


def test_profile_keeps_layer_norms_and_sorted_warnings_and_errors() -> None:
    findings = [
        _finding("vanishing", "error", "l0"),
        _finding("no_gradient", "info", "(model)"),
        _finding("dead_relu", "warning", "relu"),
    ]
    (profile,) = profile_of([_report({"": 2.0, "head": None}, findings)])
    assert profile == {
        "layers": {"": 2.0, "head": None},
        "findings": [["dead_relu", "relu", "warning"], ["vanishing", "l0", "error"]],
    }


def test_write_then_compare_the_same_reports_is_clean(tmp_path: Path) -> None:
    reports = [_report({"a": 1.0, "b": 0.5}, [_finding("dead_relu", "warning", "r")])]
    path = tmp_path / "deep" / "folder" / "t.json"
    write_baseline(path, reports)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == profile_of(reports) and text.endswith("\n")
    assert text == json.dumps(profile_of(reports), indent=2, sort_keys=True) + "\n"
    assert compare_with_baseline(path, reports, factor=10) == []


@pytest.mark.parametrize(
    ("new_norm", "problem"),
    [
        (9.9, None),
        (0.11, None),
        (20.0, "layer 'a': gradient norm 20 vs baseline 1 (20x larger; allowed factor 10)"),
        (0.05, "layer 'a': gradient norm 0.05 vs baseline 1 (20x smaller; allowed factor 10)"),
    ],
)
def test_a_layer_moving_more_than_the_factor_either_way_is_a_regression(
    tmp_path: Path, new_norm: float, problem: str | None
) -> None:
    path = tmp_path / "b.json"
    write_baseline(path, [_report({"a": 1.0})])
    found = compare_with_baseline(path, [_report({"a": new_norm})], factor=10)
    assert found == ([problem] if problem else [])


def test_the_model_itself_is_named_as_people_read_it(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    write_baseline(path, [_report({"": 1.0})])
    (problem,) = compare_with_baseline(path, [_report({"": 100.0})], factor=10)
    assert problem.startswith("layer '(model)': gradient norm 100")


def test_unmeasured_zero_and_nonfinite_norms_are_not_compared(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    write_baseline(path, [_report({"a": 1.0, "b": None, "c": 0.0, "d": 1.0})])
    current = _report({"a": None, "b": 5.0, "c": 5.0, "d": float("inf")})
    assert compare_with_baseline(path, [current], factor=2) == []


def test_new_and_worse_findings_are_regressions_milder_ones_are_not(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    before = [
        _finding("dead_relu", "warning", "r1"),
        _finding("saturation", "error", "t1"),
    ]
    write_baseline(path, [_report({"a": 1.0}, before)])
    after = [
        _finding("dead_relu", "error", "r1"),
        _finding("saturation", "warning", "t1"),
        _finding("vanishing", "warning", "a"),
        _finding("no_gradient", "info", "(model)"),
    ]
    assert compare_with_baseline(path, [_report({"a": 1.0}, after)], factor=10) == [
        "finding got worse: dead_relu at r1 (warning -> error)",
        "new finding: vanishing at a (warning)",
    ]


def test_several_reports_are_labelled_and_a_count_change_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    write_baseline(path, [_report({"a": 1.0}), _report({"a": 1.0})])
    moved = [_report({"a": 1.0}), _report({"a": 50.0}), _report({"a": 1.0})]
    assert compare_with_baseline(path, moved, factor=10) == [
        "the test made 3 report(s); the baseline has 2",
        "report 2: layer 'a': gradient norm 50 vs baseline 1 (50x larger; allowed factor 10)",
    ]


def test_a_missing_baseline_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        compare_with_baseline(tmp_path / "none.json", [_report({"a": 1.0})], factor=10)


def test_layer_changes_pair_layers_by_name_and_keep_those_of_one_side() -> None:
    changes = layer_changes({"a": 1.0, "b": None, "gone": 2.0}, {"new": 3.0, "b": 4.0, "a": 20.0})
    assert changes == [
        LayerChange("a", 1.0, 20.0),
        LayerChange("b", None, 4.0),
        LayerChange("gone", 2.0, None, in_new=False),
        LayerChange("new", None, 3.0, in_old=False),
    ]
    assert [change.ratio for change in changes] == [20.0, None, None, None]
    assert [change.moved(10) for change in changes] == [True, False, False, False]
    assert changes[0].describe(10, "old report") == (
        "layer 'a': gradient norm 20 vs old report 1 (20x larger; allowed factor 10)"
    )


def test_finding_changes_say_new_worse_milder_gone_and_unchanged() -> None:
    old = [["dead_relu", "r", "warning"], ["saturation", "t", "error"], ["vanishing", "0", "error"]]
    new = [
        ["dead_relu", "r", "error"],
        ["saturation", "t", "warning"],
        ["exploding", "x", "warning"],
        ["vanishing", "0", "error"],
    ]
    changes = finding_changes(old, new)
    assert [change.describe() for change in changes] == [
        "finding got worse: dead_relu at r (warning -> error)",
        "finding got milder: saturation at t (error -> warning)",
        "new finding: exploding at x (warning)",
        "finding unchanged: vanishing at 0 (error)",
    ]
    assert [change.regressed for change in changes] == [True, False, True, False]
    assert finding_changes(old[:1], []) == [FindingChange("dead_relu", "r", "warning", None)]
    assert (
        finding_changes(old[:1], [])[0].describe() == "finding gone: dead_relu at r (was warning)"
    )


def test_profile_regressions_name_the_reference() -> None:
    old = profile_of([_report({"a": 1.0})])
    new = profile_of([_report({"a": 0.01})])
    assert profile_regressions(old, new, 10, "old report") == [
        "layer 'a': gradient norm 0.01 vs old report 1 (100x smaller; allowed factor 10)"
    ]
