"""The plugin's plain parts without pytester: session hooks, the fixture object, a light
import. The pytester runs are in tests/integration/test_plugin.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from pytest_gradcheckup.fixture import GradcheckupFixture, worst_of
from pytest_gradcheckup.plugin import _WORKER_OUTPUT, _SessionHooks
from tests.helpers import finding_dict, make_session, stand_in_report


def _sick_report() -> gcu.Report:
    finding = gcu.Finding(
        kind="vanishing",
        severity="error",
        where="layers.0",
        value=1e-9,
        threshold=1e-3,
        message="m",
        hint="h",
    )
    report = gcu.check(nn.Linear(2, 2), torch.ones(1, 2))
    return report.model_copy(update={"findings": [finding]})


def test_plugin_import_is_light() -> None:
    code = "import sys, pytest_gradcheckup.plugin; print('torch' in sys.modules, 'pydantic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_hooks_record_call_outcomes_and_any_failure() -> None:
    session = make_session()
    hooks = _SessionHooks(session)
    for when, outcome, nodeid in [
        ("setup", "passed", "t::a"),
        ("call", "passed", "t::a"),
        ("setup", "failed", "t::b"),
        ("teardown", "passed", "t::b"),
    ]:
        hooks.pytest_runtest_logreport(SimpleNamespace(when=when, outcome=outcome, nodeid=nodeid))
    assert session.outcomes == {"t::a": "passed", "t::b": "failed"}


def test_a_worker_hands_its_reports_to_the_controller(tmp_path: Path) -> None:
    worker = make_session()
    worker.record("t::a", [stand_in_report(finding_dict("vanishing", "error", "0"))])
    worker_config = SimpleNamespace(workeroutput={})
    _SessionHooks(worker).pytest_sessionfinish(SimpleNamespace(config=worker_config))

    controller = make_session(json_path=tmp_path / "all.json")
    hooks = _SessionHooks(controller)
    hooks.pytest_testnodedown(SimpleNamespace(workeroutput=worker_config.workeroutput), None)
    hooks.pytest_testnodedown(SimpleNamespace(), None)  # a worker that sent nothing
    hooks.pytest_sessionfinish(SimpleNamespace(config=SimpleNamespace()))
    assert _WORKER_OUTPUT in worker_config.workeroutput
    tests = json.loads((tmp_path / "all.json").read_text())["tests"]
    assert list(tests) == ["t::a"] and tests["t::a"]["reports"][0]["findings"][0]["where"] == "0"


def test_terminal_summary() -> None:
    written: list[tuple[str, ...]] = []
    terminal = SimpleNamespace(
        write_sep=lambda sep, title: written.append((sep, title)),
        write_line=lambda line: written.append((line,)),
    )
    session = make_session()
    _SessionHooks(session).pytest_terminal_summary(terminal)
    assert written == []  # no reports, no section
    session.record("t::a", [stand_in_report(finding_dict("vanishing", "error", "0"))])
    session.json_path = Path("out.json")
    _SessionHooks(session).pytest_terminal_summary(terminal)
    assert written[0] == ("-", "gradcheckup summary")
    assert written[1][0].startswith("UNHEALTHY t::a: 1 report(s)")
    assert written[2] == ("gradcheckup reports written to out.json",)


def _fixture(config: gcu.Config, properties: list[tuple[str, Any]]) -> GradcheckupFixture:
    return GradcheckupFixture(
        config, seed=3, verbose=False, record_property=lambda *item: properties.append(item)
    )


def test_fixture_overrides_build_on_its_config() -> None:
    fixture = _fixture(gcu.Config(max_grad_norm=2.0), [])
    try:
        assert fixture._config_with({}) is fixture.config
        stricter = fixture._config_with({"dead_relu_fraction": 0.3})
        assert stricter.dead_relu_fraction == 0.3 and stricter.max_grad_norm == 2.0
        with pytest.raises(ValueError, match=r"^gradcheckup fixture: unknown setting 'nope'"):
            fixture._config_with({"nope": 1})
    finally:
        fixture.close()


def test_fixture_records_junit_properties_once_per_report() -> None:
    properties: list[tuple[str, Any]] = []
    fixture = _fixture(gcu.Config(), properties)
    try:
        sick = _sick_report()
        fixture._record(sick)
        fixture._record(sick)  # the same report again: not recorded twice
        fixture._record(gcu.check(nn.Linear(2, 2), torch.ones(1, 2)))
    finally:
        fixture.close()
    assert properties[:4] == [
        ("gradcheckup_ok", False),
        ("gradcheckup_errors", 1),
        ("gradcheckup_findings", 1),
        ("gradcheckup_worst", "vanishing at layers.0 (1e-09)"),
    ]
    assert properties[4:] == [
        ("gradcheckup_2_ok", True),
        ("gradcheckup_2_errors", 0),
        ("gradcheckup_2_findings", 0),
    ]


def test_fixture_seeds_and_restores_the_rng() -> None:
    torch.manual_seed(11)
    before = torch.get_rng_state()
    fixture = _fixture(gcu.Config(), [])
    seeded = torch.rand(2)
    fixture.close()
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(2), seeded)


def test_worst_of() -> None:
    assert worst_of(gcu.check(nn.Linear(2, 2), torch.ones(1, 2))) == ""
    assert worst_of(_sick_report()) == "vanishing at layers.0 (1e-09)"


def test_a_json_file_that_fails_at_the_end_is_said_not_raised(tmp_path: Path) -> None:
    """Checked at configure time; if the disk changes during the run, the summary says it."""
    session = make_session(json_path=tmp_path / "gone" / "r.json")
    session.record("t::a", [stand_in_report(finding_dict("vanishing", "error", "0"))])
    (tmp_path / "gone").write_text("")  # a file where the folder should be
    hooks = _SessionHooks(session)
    hooks.pytest_sessionfinish(SimpleNamespace(config=SimpleNamespace()))
    written: list[str] = []
    terminal = SimpleNamespace(
        write_sep=lambda sep, title: None,
        write_line=lambda line, **markup: written.append(line),
    )
    hooks.pytest_terminal_summary(terminal)
    assert written[0].startswith(f"gradcheckup: error: --gradcheckup-json {tmp_path}")
    assert not any("reports written to" in line for line in written)


def test_hooks_keep_each_tests_location_and_annotate_in_github_actions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    session = make_session()
    hooks = _SessionHooks(session, rootdir=tmp_path)
    sick = _sick_report()
    session.record("t.py::test_a", [sick])
    hooks.pytest_runtest_logreport(
        SimpleNamespace(
            when="call", outcome="failed", nodeid="t.py::test_a", location=("t.py", 4, "test_a")
        )
    )
    assert session.locations == {"t.py::test_a": ("t.py", 4)}
    written: list[str] = []
    terminal = SimpleNamespace(
        write_sep=lambda sep, title: None, write_line=lambda line, **markup: written.append(line)
    )
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    hooks.pytest_terminal_summary(terminal)
    assert not any(line.startswith("::") for line in written)  # only in GitHub Actions
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    hooks.pytest_terminal_summary(terminal)
    assert written[-1].startswith(
        "::error file=t.py,line=5,title=gradcheckup vanishing at layers.0::"
    )
