"""GradcheckupSession without pytest: config layering, reports, xdist merge, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_gradcheckup.session import GradcheckupSession


def _session(
    layers: list[tuple[str, dict[str, Any]]] | None = None, **kwargs: Any
) -> GradcheckupSession:
    options: dict[str, Any] = {
        "seed": 0,
        "json_path": None,
        "baseline_dir": None,
        "update_baseline": False,
        "baseline_factor": 10.0,
    }
    return GradcheckupSession(settings_layers=layers or [], **{**options, **kwargs})


def _finding(kind: str, severity: str, where: str) -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "where": where}


def _report(*findings: dict[str, Any]) -> SimpleNamespace:
    """A stand-in for gcu.Report: the session only calls model_dump_json()."""
    document = {"findings": list(findings)}
    return SimpleNamespace(model_dump_json=lambda: json.dumps(document))


def test_config_layers_then_marker() -> None:
    session = _session(
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
        _session([("cli", {"nope": 1})]).base_config()
    with pytest.raises(
        ValueError, match=r"^@pytest.mark.gradcheckup: dead_relu_fraction=3 is invalid"
    ):
        _session().config_for({"dead_relu_fraction": 3})


def test_outcomes_keep_the_first_failure() -> None:
    session = _session()
    session.record_outcome("t::a", "passed")
    session.record_outcome("t::b", "failed")
    session.record_outcome("t::b", "passed")  # e.g. teardown after a failed call
    assert session.outcomes == {"t::a": "passed", "t::b": "failed"}


def test_tests_without_reports_are_not_recorded() -> None:
    session = _session()
    session.record("t::none", [])
    assert session.reports == {}


def test_worker_reports_merge_into_the_controller() -> None:
    worker_a, worker_b, controller = _session(), _session(), _session()
    worker_a.record("t::a", [_report()])
    worker_b.record("t::b", [_report(_finding("vanishing", "error", "0")), _report()])
    for worker in (worker_a, worker_b):
        controller.merge(worker.serialised())
    assert sorted(controller.reports) == ["t::a", "t::b"]
    assert len(controller.reports["t::b"]) == 2
    assert controller.reports["t::b"][0]["findings"][0]["kind"] == "vanishing"


def test_summary_lines() -> None:
    session = _session()
    session.record(
        "t::sick",
        [_report(_finding("vanishing", "error", "0"), _finding("dead_relu", "warning", "3"))],
    )
    session.record("t::mild", [_report(_finding("saturation", "warning", "1")), _report()])
    session.record("t::fine", [_report()])
    assert session.summary_lines() == [
        "ok        t::fine: 1 report(s), 0 finding(s), 0 error(s)",
        "ok        t::mild: 2 report(s), 1 finding(s), 0 error(s); worst: saturation at 1",
        "UNHEALTHY t::sick: 1 report(s), 2 finding(s), 1 error(s); worst: vanishing at 0",
    ]


def test_write_json(tmp_path: Path) -> None:
    _session().write_json()  # no path: nothing to do
    path = tmp_path / "out" / "reports.json"
    session = _session(json_path=path)
    session.record("t::b", [_report()])
    session.record("t::a", [_report(_finding("vanishing", "error", "0"))])
    session.record_outcome("t::a", "failed")
    session.write_json()
    tests = json.loads(path.read_text())["tests"]
    assert list(tests) == ["t::a", "t::b"]  # sorted
    assert tests["t::a"]["outcome"] == "failed" and tests["t::b"]["outcome"] == "unknown"
    assert tests["t::a"]["reports"][0]["findings"][0]["where"] == "0"
