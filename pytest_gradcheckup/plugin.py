"""pytest plugin for gradcheckup: the ``gradcheckup`` fixture and marker, settings from
pyproject.toml / ini / command line, a session JSON, a terminal summary, baselines and
GitHub Actions annotations.

Loaded in every pytest run of an environment that has gradcheckup installed, so this
module imports neither torch nor pydantic; the fixture imports them when a test uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_gradcheckup.fixture import GradcheckupFixture
    from pytest_gradcheckup.session import GradcheckupSession

SESSION_KEY = pytest.StashKey["GradcheckupSession"]()
FIXTURE_KEY = pytest.StashKey["GradcheckupFixture"]()
_WORKER_OUTPUT = "gradcheckup_reports"
_DEFAULT_FACTOR = 10.0


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ``--gradcheckup-*`` options and the ``gradcheckup_*`` ini keys."""
    group = parser.getgroup("gradcheckup", "gradient health checks (gradcheckup)")
    group.addoption(
        "--gradcheckup-json",
        dest="gradcheckup_json",
        metavar="PATH",
        help="write every gradcheckup report of the session, keyed by test id, to PATH.",
    )
    group.addoption(
        "--gradcheckup-baseline",
        dest="gradcheckup_baseline",
        metavar="DIR",
        help="compare each test's per-layer gradient profile with the one stored in DIR.",
    )
    group.addoption(
        "--gradcheckup-update-baseline",
        dest="gradcheckup_update_baseline",
        action="store_true",
        help="write the profiles to the --gradcheckup-baseline DIR instead of comparing.",
    )
    group.addoption(
        "--gradcheckup-baseline-factor",
        dest="gradcheckup_baseline_factor",
        type=float,
        metavar="FACTOR",
        help=f"fail when a layer's gradient norm moved more than FACTOR from the baseline "
        f"(default {_DEFAULT_FACTOR:g}; ini: gradcheckup_baseline_factor).",
    )
    group.addoption(
        "--gradcheckup-set",
        dest="gradcheckup_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a gradcheckup.Config setting, e.g. max_grad_norm=1.0 (repeatable).",
    )
    group.addoption(
        "--gradcheckup-seed",
        dest="gradcheckup_seed",
        type=int,
        metavar="N",
        help="torch seed the gradcheckup fixture sets for each test (default 0).",
    )
    parser.addini(
        "gradcheckup_set", type="linelist", help="gradcheckup.Config settings, KEY=VALUE per line."
    )
    parser.addini(
        "gradcheckup_baseline_factor",
        default=str(_DEFAULT_FACTOR),
        help="see --gradcheckup-baseline-factor.",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, create the session and fail at once on invalid settings."""
    config.addinivalue_line(
        "markers",
        "gradcheckup(**settings): gradcheckup.Config settings for this test's gradcheckup "
        "fixture, e.g. @pytest.mark.gradcheckup(max_grad_norm=1.0, dead_relu_fraction=0.3).",
    )
    from pytest_gradcheckup.session import GradcheckupSession

    layers = _settings_layers(config)
    option = config.option
    factor = option.gradcheckup_baseline_factor
    if factor is None:
        try:
            factor = float(config.getini("gradcheckup_baseline_factor"))
        except ValueError as error:
            raise pytest.UsageError(
                f"gradcheckup_baseline_factor: expected a number ({error})"
            ) from None
    if option.gradcheckup_update_baseline and not option.gradcheckup_baseline:
        raise pytest.UsageError("--gradcheckup-update-baseline needs --gradcheckup-baseline=DIR")
    _check_destinations(option)
    session = GradcheckupSession(
        settings_layers=layers,
        seed=0 if option.gradcheckup_seed is None else option.gradcheckup_seed,
        json_path=Path(option.gradcheckup_json) if option.gradcheckup_json else None,
        baseline_dir=Path(option.gradcheckup_baseline) if option.gradcheckup_baseline else None,
        update_baseline=option.gradcheckup_update_baseline,
        baseline_factor=factor,
    )
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(_SessionHooks(session, config.rootpath), "gradcheckup-session")
    if any(settings for _, settings in layers):
        try:
            session.base_config()  # a typo in the settings fails the run at once
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None


def _check_destinations(option: Any) -> None:
    """Refuse at once, before any test runs, a JSON file or baseline folder that could
    not be written at the end of the session."""
    from gradcheckup._paths import output_path_problem

    if option.gradcheckup_json:
        problem = output_path_problem(Path(option.gradcheckup_json))
        if problem:
            raise pytest.UsageError(f"--gradcheckup-json {option.gradcheckup_json}: {problem}")
    baseline = Path(option.gradcheckup_baseline) if option.gradcheckup_baseline else None
    if baseline is not None and baseline.exists() and not baseline.is_dir():
        raise pytest.UsageError(f"--gradcheckup-baseline {baseline}: not a directory")
    if baseline is not None and option.gradcheckup_update_baseline:
        problem = output_path_problem(baseline / "gradcheckup-probe.json")
        if problem:
            raise pytest.UsageError(f"--gradcheckup-baseline {baseline}: {problem}")


def _settings_layers(config: pytest.Config) -> list[tuple[str, dict[str, Any]]]:
    """pyproject < ini < command line, as ``settings.build_config`` layers."""
    from gradcheckup.settings import find_pyproject, load_pyproject_settings, parse_assignments

    layers: list[tuple[str, dict[str, Any]]] = []
    try:
        pyproject = find_pyproject(config.rootpath)
        section = load_pyproject_settings(pyproject)
        if section:
            layers.append((f"{pyproject} [tool.gradcheckup]", section))
        ini_items = config.getini("gradcheckup_set")
        cli_items = config.option.gradcheckup_set
        if ini_items or cli_items:
            layers.append(
                ("ini gradcheckup_set", parse_assignments(ini_items, "ini gradcheckup_set"))
            )
            layers.append(("--gradcheckup-set", parse_assignments(cli_items, "--gradcheckup-set")))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    return layers


@pytest.fixture
def gradcheckup(request: pytest.FixtureRequest) -> Iterator[GradcheckupFixture]:
    """gradcheckup with this test's settings: ``.check()``, ``.watch()``, ``.config`` and
    ``.assert_healthy()`` / ``.assert_no_vanishing()`` / ``.assert_no_exploding()`` /
    ``.assert_no_dead_relu()`` / ``.assert_clipped()``. Seeds torch (``--gradcheckup-seed``)
    and restores the RNG afterwards."""
    from pytest_gradcheckup.fixture import GradcheckupFixture

    session = request.config.stash[SESSION_KEY]
    marker = request.node.get_closest_marker("gradcheckup")
    if marker is not None and marker.args:
        raise pytest.UsageError(
            f"{request.node.nodeid}: @pytest.mark.gradcheckup takes keyword settings only, "
            f"got positional {marker.args!r}"
        )
    try:
        config = session.config_for(dict(marker.kwargs) if marker else {})
    except ValueError as error:
        raise pytest.UsageError(f"{request.node.nodeid}: {error}") from None
    fixture = GradcheckupFixture(
        config,
        seed=session.seed,
        verbose=request.config.option.verbose > 0,
        # The test's user_properties, as pytest's record_property fixture fills them, but
        # without requesting it: that fixture warns under junit_family=xunit2 (pytest's
        # default) in every test, although junitxml writes the properties either way.
        record_property=lambda name, value: request.node.user_properties.append((name, value)),
    )
    request.node.stash[FIXTURE_KEY] = fixture
    try:
        yield fixture
    finally:
        fixture.close()
        session.record(request.node.nodeid, fixture.reports)


# trylast: runs after pytest's own pytest_runtest_call has run the test (and only if it
# passed), so a baseline regression fails the call phase. A plain hook, not a wrapper:
# this module loads in every pytest run, whatever its pluggy version.
@pytest.hookimpl(trylast=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Compare a passed test's reports with its baseline (or write it with --update)."""
    __tracebackhide__ = True
    fixture = item.stash.get(FIXTURE_KEY, None)
    session = item.config.stash.get(SESSION_KEY, None)
    if fixture is None or session is None or session.baseline_dir is None or not fixture.reports:
        return
    from gradcheckup.baseline import baseline_path, compare_with_baseline, write_baseline

    path = baseline_path(session.baseline_dir, item.nodeid)
    if session.update_baseline:
        write_baseline(path, fixture.reports)
        return
    if not path.is_file():
        item.add_report_section(
            "call", "gradcheckup", f"no baseline at {path}; run with --gradcheckup-update-baseline"
        )
        return
    problems = compare_with_baseline(path, fixture.reports, session.baseline_factor)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise AssertionError(f"gradient profile moved from the baseline {path}:\n{lines}")


class _SessionHooks:
    """Session-wide hooks, registered per run so they reach the session state."""

    def __init__(self, session: GradcheckupSession, rootdir: Path | None = None) -> None:
        self.session = session
        self.rootdir = Path.cwd() if rootdir is None else rootdir
        self.write_error: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Record each test's outcome (a failure in setup or teardown included) and where
        it is defined (for GitHub annotations; xdist workers send their reports here)."""
        if report.when == "call" or report.outcome != "passed":
            self.session.record_outcome(report.nodeid, report.outcome)
        location = getattr(report, "location", None)
        if location is not None:
            self.session.record_location(report.nodeid, location[0], location[1])

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Merge the reports a pytest-xdist worker sent when it finished."""
        serialised = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
        if serialised:
            self.session.merge(serialised)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the JSON file, or on an xdist worker hand the reports to the controller."""
        worker_output = getattr(session.config, "workeroutput", None)
        if worker_output is not None:  # a pytest-xdist worker: the controller writes
            worker_output[_WORKER_OUTPUT] = self.session.serialised()
        else:
            try:
                self.session.write_json()
            except OSError as error:  # checked at configure time; the disk changed since
                self.write_error = (
                    f"--gradcheckup-json {self.session.json_path}: cannot be written "
                    f"({error.strerror or error})"
                )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print one line per test with reports, and where the JSON file went."""
        if self.write_error is not None:
            terminalreporter.write_line(f"gradcheckup: error: {self.write_error}", red=True)
        if not self.session.reports:
            return
        terminalreporter.write_sep("-", "gradcheckup summary")
        for line in self.session.summary_lines():
            terminalreporter.write_line(line)
        if self.session.json_path is not None and self.write_error is None:
            terminalreporter.write_line(f"gradcheckup reports written to {self.session.json_path}")
        if os.environ.get("GITHUB_ACTIONS") == "true":
            workspace = os.environ.get("GITHUB_WORKSPACE")
            for command in self.session.github_annotations(
                self.rootdir, Path(workspace) if workspace else None
            ):
                terminalreporter.write_line(command)
