"""GradcheckupSession without pytest: config layering, reports, xdist merge, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import finding_dict, make_session, report_with_findings, stand_in_report


def test_config_layers_then_marker() -> None:
    session = make_session(
        [
            ("pyproject", {"dead_relu_fraction": 0.4, "vanishing_ratio": 1e-4}),
            ("ini", {"vanishing_ratio": 1e-5}),
            ("cli", {"vanishing_ratio": 1e-6}),
        ]
    )
    base = session.base_config()
    assert base.dead_relu_fraction == 0.4 and base.vanishing_ratio == 1e-6
    assert session.base_config() is base  # built once
    assert session.config_for({}) is base
    marked = session.config_for({"max_grad_norm": 0.5})
    assert marked.max_grad_norm == 0.5 and marked.dead_relu_fraction == 0.4


def test_config_errors_name_their_source() -> None:
    with pytest.raises(ValueError, match=r"^cli: unknown setting 'nope'"):
        make_session([("cli", {"nope": 1})]).base_config()
    with pytest.raises(
        ValueError, match=r"^@pytest.mark.gradcheckup: dead_relu_fraction=3 is invalid"
    ):
        make_session().config_for({"dead_relu_fraction": 3})


def test_outcomes_keep_the_first_failure() -> None:
    session = make_session()
    session.record_outcome("t::a", "passed")
    session.record_outcome("t::b", "failed")
    session.record_outcome("t::b", "passed")  # e.g. teardown after a failed call
    assert session.outcomes == {"t::a": "passed", "t::b": "failed"}


def test_tests_without_reports_are_not_recorded() -> None:
    session = make_session()
    session.record("t::none", [])
    assert session.reports == {}


def test_worker_reports_merge_into_the_controller() -> None:
    worker_a, worker_b, controller = make_session(), make_session(), make_session()
    worker_a.record("t::a", [stand_in_report()])
    worker_b.record(
        "t::b", [stand_in_report(finding_dict("vanishing", "error", "0")), stand_in_report()]
    )
    for worker in (worker_a, worker_b):
        controller.merge(worker.serialised())
    assert sorted(controller.reports) == ["t::a", "t::b"]
    assert len(controller.reports["t::b"]) == 2
    assert controller.reports["t::b"][0]["findings"][0]["kind"] == "vanishing"


def test_summary_lines() -> None:
    session = make_session()
    session.record(
        "t::sick",
        [
            stand_in_report(
                finding_dict("vanishing", "error", "0"), finding_dict("dead_relu", "warning", "3")
            )
        ],
    )
    session.record(
        "t::mild", [stand_in_report(finding_dict("saturation", "warning", "1")), stand_in_report()]
    )
    session.record("t::fine", [stand_in_report()])
    assert session.summary_lines() == [
        "ok        t::fine: 1 report(s), 0 finding(s), 0 error(s)",
        "ok        t::mild: 2 report(s), 1 finding(s), 0 error(s); worst: saturation at 1",
        "UNHEALTHY t::sick: 1 report(s), 2 finding(s), 1 error(s); worst: vanishing at 0",
    ]


def test_write_json(tmp_path: Path) -> None:
    make_session().write_json()  # no path: nothing to do
    path = tmp_path / "out" / "reports.json"
    session = make_session(json_path=path)
    session.record("t::b", [stand_in_report()])
    session.record("t::a", [stand_in_report(finding_dict("vanishing", "error", "0"))])
    session.record_outcome("t::a", "failed")
    session.write_json()
    tests = json.loads(path.read_text())["tests"]
    assert list(tests) == ["t::a", "t::b"]  # sorted
    assert tests["t::a"]["outcome"] == "failed" and tests["t::b"]["outcome"] == "unknown"
    assert tests["t::a"]["reports"][0]["findings"][0]["where"] == "0"


def test_github_annotations_place_a_failed_tests_findings_at_its_def_line(
    tmp_path: Path,
) -> None:
    session = make_session()
    sick = report_with_findings(
        ("vanishing", "error", "layers.0"),
        ("dead_relu", "warning", "0/relu"),
        ("no_gradient", "info", "(model)"),  # info: not annotated
    )
    for nodeid in ("tests/test_m.py::test_fails", "tests/test_m.py::test_passes"):
        session.record(nodeid, [sick])
        session.record_location(nodeid, "tests/test_m.py", 11)  # 0-based, as pytest has it
    session.record_outcome("tests/test_m.py::test_fails", "failed")
    session.record_outcome("tests/test_m.py::test_passes", "passed")  # its findings are wanted
    rootdir = tmp_path / "repository" / "python"
    commands = session.github_annotations(rootdir, workspace=tmp_path / "repository")
    assert commands == [
        "::error file=python/tests/test_m.py,line=12,title=gradcheckup vanishing at layers.0::m Hint: h",
        "::warning file=python/tests/test_m.py,line=12,title=gradcheckup dead_relu at 0/relu::m Hint: h",
    ]
    # Without a workspace, or a test outside it: the rootdir-relative path.
    assert session.github_annotations(rootdir, None)[0].startswith(
        "::error file=tests/test_m.py,line=12,"
    )
    assert session.github_annotations(rootdir, tmp_path / "elsewhere")[0].startswith(
        "::error file=tests/test_m.py,line=12,"
    )
