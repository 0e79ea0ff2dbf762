"""The pytest plugin, driven through pytester as a user's test suite would use it."""

from __future__ import annotations

import importlib
import io
import json
import xml.etree.ElementTree as ElementTree

import pytest
from rich.console import Console

import gradcheckup as gcu
from tests.helpers import he_relu_mlp_source

# pytester's in-process runs drop modules first imported inside them; importing these
# here keeps one copy of each class (one Config) across runs.
for _module in (
    "gradcheckup._check",
    "gradcheckup.baseline",
    "gradcheckup.rendering",
    "gradcheckup.settings",
    "gradcheckup.testing",
    "pytest_gradcheckup.fixture",
    "pytest_gradcheckup.session",
):
    importlib.import_module(_module)


@pytest.fixture(autouse=True, scope="module")
def _lazy_imports_happen_outside_pytester() -> None:
    """torch imports some modules lazily (the optimizer step pulls in dynamo pieces that
    register operator libraries); a module dropped after an in-process run and imported
    again would register twice. Do one of everything here, outside any inner run."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gcu.watch(model, optimizer=optimizer) as monitor:
        model(torch.randn(4, 2)).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    monitor.report().print(Console(file=io.StringIO()))


MODELS = (
    """
import pytest, torch
from torch import nn

def sigmoid_mlp(depth=20):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 4))
"""
    + he_relu_mlp_source("he_mlp")
    + """
def partly_dead(fraction):
    layer = nn.Linear(8, 20)
    with torch.no_grad():
        layer.weight.normal_(0, 1e-3)
        layer.bias.fill_(1.0)
        layer.bias[: round(20 * fraction)] = -1.0
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(20, 2))
"""
)


def _suite(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(test_suite="import pytest, torch\nfrom models import *\n" + body)


def test_healthy_passes_and_sick_fails_naming_layer_value_and_chart(
    pytester: pytest.Pytester,
) -> None:
    _suite(
        pytester,
        """
def test_healthy(gradcheckup):
    report = gradcheckup.check(he_mlp(), torch.randn(64, 16), target=torch.randint(0, 4, (64,)))
    gradcheckup.assert_healthy(report)

def test_sick(gradcheckup):
    report = gradcheckup.check(sigmoid_mlp(), torch.randn(64, 32), target=torch.randint(0, 4, (64,)))
    gradcheckup.assert_healthy(report)
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*- 0: vanishing (error), value * vs threshold 0.003*", "*hint: Replace sigmoid/tanh*"]
    )
    assert "Gradient flow" in output and "run with -v" in output
    assert "Layers, in forward order" not in output  # the full table only with -v
    result.stdout.fnmatch_lines(
        ["*gradcheckup summary*", "ok * test_suite.py::test_healthy*", "UNHEALTHY*test_sick*"]
    )

    verbose = pytester.runpytest("-v", "-k", "sick")
    assert "Layers, in forward order" in verbose.stdout.str()


def test_marker_overrides_and_unknown_marker_key(pytester: pytest.Pytester) -> None:
    _suite(
        pytester,
        """
def _report(gradcheckup):
    return gradcheckup.check(partly_dead(0.35), torch.randn(64, 8))

def test_default(gradcheckup):
    assert gradcheckup.config.dead_relu_fraction == 0.8
    gradcheckup.assert_healthy(_report(gradcheckup))

@pytest.mark.gradcheckup(dead_relu_fraction=0.3)
def test_stricter(gradcheckup):
    assert gradcheckup.config.dead_relu_fraction == 0.3
    gradcheckup.assert_no_dead_relu(_report(gradcheckup))

@pytest.mark.gradcheckup(dead_relu_fractoin=0.3)
def test_typo(gradcheckup):
    pass

@pytest.mark.gradcheckup(dead_relu_fraction=3)
def test_bad_value(gradcheckup):
    pass
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*unknown setting 'dead_relu_fractoin'; valid settings: *dead_relu_fraction*",
            "*dead_relu_fraction=3 is invalid: *less than or equal to 1*",
            "*- 0/relu: dead_relu (error), value 0.35 vs threshold 0.3*",
        ]
    )


def test_settings_precedence_pyproject_ini_cli_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
[tool.gradcheckup]
dead_relu_fraction = 0.4
vanishing_ratio = 1e-4
max_grad_norm = 2.0

[tool.pytest.ini_options]
gradcheckup_set = ["vanishing_ratio=1e-5"]
"""
    )
    _suite(
        pytester,
        """
def test_layers(gradcheckup):
    assert gradcheckup.config.dead_relu_fraction == 0.4          # pyproject
    assert gradcheckup.config.vanishing_ratio == 1e-6            # cli beats ini beats pyproject
    assert gradcheckup.config.max_grad_norm == 2.0

@pytest.mark.gradcheckup(max_grad_norm=0.5)
def test_marker_wins(gradcheckup):
    assert gradcheckup.config.max_grad_norm == 0.5
    assert gradcheckup.check(he_mlp(), torch.randn(8, 16), max_grad_norm=0.25).config.max_grad_norm == 0.25
""",
    )
    pytester.runpytest("--gradcheckup-set", "vanishing_ratio=1e-6").assert_outcomes(passed=2)


def test_bad_pyproject_setting_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.gradcheckup]\nmax_grad_nrom = 1.0\n")
    _suite(pytester, "def test_nothing():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*[[]tool.gradcheckup[]]: unknown setting 'max_grad_nrom'; valid settings: *max_grad_norm*"
        ]
    )
    bad_cli = pytester.runpytest("--gradcheckup-set", "novalue")
    bad_cli.stderr.fnmatch_lines(["*--gradcheckup-set: expected KEY=VALUE, got 'novalue'*"])


def test_session_json_and_junit_properties(pytester: pytest.Pytester) -> None:
    _suite(
        pytester,
        """
def test_two_reports(gradcheckup):
    gradcheckup.check(he_mlp(), torch.randn(32, 16))
    gradcheckup.check(sigmoid_mlp(6), torch.randn(32, 32))

def test_sick(gradcheckup):
    gradcheckup.assert_healthy(gradcheckup.check(sigmoid_mlp(), torch.randn(32, 32)))

def test_unrelated():
    pass
""",
    )
    json_path = pytester.path / "out" / "gradients.json"
    junit_path = pytester.path / "junit.xml"
    result = pytester.runpytest(f"--gradcheckup-json={json_path}", f"--junitxml={junit_path}")
    result.assert_outcomes(passed=2, failed=1)
    document = json.loads(json_path.read_text())["tests"]
    assert set(document) == {"test_suite.py::test_two_reports", "test_suite.py::test_sick"}
    assert document["test_suite.py::test_sick"]["outcome"] == "failed"
    assert document["test_suite.py::test_two_reports"]["outcome"] == "passed"
    reports = document["test_suite.py::test_two_reports"]["reports"]
    assert len(reports) == 2
    restored = gcu.Report.model_validate(reports[0])
    assert restored.ok and len(restored.layers) == 3
    properties = {
        (case.get("name"), prop.get("name")): prop.get("value")
        for case in ElementTree.parse(junit_path).iter("testcase")
        for prop in case.iter("property")
    }
    assert properties[("test_sick", "gradcheckup_ok")] == "False"
    assert properties[("test_sick", "gradcheckup_worst")].startswith("vanishing at 0")
    assert properties[("test_two_reports", "gradcheckup_2_findings")] is not None


def test_baselines_catch_a_gradient_regression(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=MODELS)
    test_file = """
import torch
from models import he_mlp

SCALE = {scale}

def test_profile(gradcheckup):
    model = he_mlp()
    with torch.no_grad():
        model[0].weight.mul_(SCALE)
    gradcheckup.check(model, torch.randn(64, 16), target=torch.randint(0, 4, (64,)))
"""
    pytester.makepyfile(test_profile=test_file.format(scale=1.0))
    baseline = pytester.path / "baselines"
    missing = pytester.runpytest(f"--gradcheckup-baseline={baseline}", "-rA")
    missing.assert_outcomes(passed=1)
    missing.stdout.fnmatch_lines(["*no baseline at*run with --gradcheckup-update-baseline*"])

    pytester.runpytest(
        f"--gradcheckup-baseline={baseline}", "--gradcheckup-update-baseline"
    ).assert_outcomes(passed=1)
    stored = list(baseline.glob("*.json"))
    assert [path.name for path in stored] == ["test_profile.py_test_profile.json"]
    pytester.runpytest(f"--gradcheckup-baseline={baseline}").assert_outcomes(
        passed=1
    )  # deterministic seed

    pytester.makepyfile(test_profile=test_file.format(scale=0.001))
    regressed = pytester.runpytest(f"--gradcheckup-baseline={baseline}")
    regressed.assert_outcomes(failed=1)
    regressed.stdout.fnmatch_lines(
        [
            "*gradient profile moved from the baseline*",
            "*layer '2': gradient norm * vs baseline * (*x smaller; allowed factor 10)*",
        ]
    )
    loose = pytester.runpytest(
        f"--gradcheckup-baseline={baseline}", "--gradcheckup-baseline-factor=1e9"
    )
    loose.assert_outcomes(passed=1)


def test_baseline_reports_new_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(
        test_depth="from models import *\n\nDEPTH = 3\n\n@pytest.mark.gradcheckup(vanishing_ratio=1e-3)\ndef test_mlp(gradcheckup):\n    gradcheckup.check(sigmoid_mlp(DEPTH), torch.randn(64, 32))\n"
    )
    baseline = pytester.path / "b"
    pytester.runpytest(
        f"--gradcheckup-baseline={baseline}", "--gradcheckup-update-baseline"
    ).assert_outcomes(passed=1)
    pytester.makepyfile(
        test_depth="from models import *\n\nDEPTH = 20\n\n@pytest.mark.gradcheckup(vanishing_ratio=1e-3)\ndef test_mlp(gradcheckup):\n    gradcheckup.check(sigmoid_mlp(DEPTH), torch.randn(64, 32))\n"
    )
    result = pytester.runpytest(f"--gradcheckup-baseline={baseline}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*finding got worse: vanishing at 0 (warning -> error)*"])
    pytester.makepyfile(
        test_depth="from models import *\n\ndef test_mlp(gradcheckup):\n    gradcheckup.check(partly_dead(0.9), torch.randn(64, 8))\n"
    )
    pytester.runpytest(f"--gradcheckup-baseline={baseline}").stdout.fnmatch_lines(
        ["*new finding: dead_relu at 0/relu (error)*"]
    )


def test_watch_and_assert_clipped_through_the_fixture(pytester: pytest.Pytester) -> None:
    _suite(
        pytester,
        """
import torch.nn.functional as F

def _train(gradcheckup, clip):
    model = he_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with gradcheckup.watch(model, optimizer=opt) as monitor:
        for _ in range(3):
            F.cross_entropy(model(torch.randn(32, 16) * 50), torch.randint(0, 4, (32,))).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(); opt.zero_grad()
    return monitor.report()

@pytest.mark.gradcheckup(max_grad_norm=1.0)
def test_clipped(gradcheckup):
    gradcheckup.assert_clipped(_train(gradcheckup, clip=True))

@pytest.mark.gradcheckup(max_grad_norm=1.0)
def test_unclipped(gradcheckup):
    gradcheckup.assert_clipped(_train(gradcheckup, clip=False))
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*- optimizer 0, step 0: gradient norm * > max_norm 1 (clip calls: none)*"]
    )


def test_fixture_seeds_torch_and_restores_the_rng(pytester: pytest.Pytester) -> None:
    _suite(
        pytester,
        """
import random
FIRST = []

def test_a(gradcheckup):
    FIRST.append(torch.rand(3).tolist())

def test_b(gradcheckup):
    assert torch.rand(3).tolist() == FIRST[0]  # same seed for every test

def test_c():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    assert torch.equal(state, torch.get_rng_state())
""",
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=3)


def test_xdist_workers_are_merged_into_one_json(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _suite(
        pytester,
        "\n".join(
            f"def test_{i}(gradcheckup):\n    gradcheckup.check(he_mlp(), torch.randn(16, 16))\n"
            for i in range(4)
        ),
    )
    json_path = pytester.path / "all.json"
    result = pytester.runpytest_subprocess("-n", "2", f"--gradcheckup-json={json_path}")
    result.assert_outcomes(passed=4)
    tests = json.loads(json_path.read_text())["tests"]
    assert sorted(tests) == [f"test_suite.py::test_{i}" for i in range(4)]
    assert all(entry["outcome"] == "passed" for entry in tests.values())


def test_plugin_is_registered_with_help_and_marker(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    assert (
        "gradient health checks (gradcheckup)" in help_text
        and "--gradcheckup-json=PATH" in help_text
    )
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.gradcheckup(**settings)" in markers


# ---- issue 10: usage errors at session start, never after the tests ------------------------
@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_unwritable_session_json_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester, where: str
) -> None:
    _suite(pytester, "def test_runs(gradcheckup):\n    open('ran', 'w').close()\n")
    (pytester.path / "a-file").write_text("")
    (pytester.path / "a-folder").mkdir()
    path = {"under-a-file": "a-file/r.json", "a-directory": "a-folder"}[where]
    result = pytester.runpytest(f"--gradcheckup-json={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --gradcheckup-json {path}: *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "ran").exists()


def test_a_baseline_folder_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _suite(pytester, "def test_nothing():\n    pass\n")
    (pytester.path / "baselines").write_text("")
    for extra in ([], ["--gradcheckup-update-baseline"]):
        result = pytester.runpytest("--gradcheckup-baseline=baselines", *extra)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["ERROR: --gradcheckup-baseline baselines: not a directory"])


@pytest.mark.parametrize(
    "text",
    ['[tool]\ngradcheckup = "max_grad_norm=1"\n', 'tool.gradcheckup = "max_grad_norm=1"\n'],
)
def test_settings_written_as_a_string_are_a_usage_error(
    pytester: pytest.Pytester, text: str
) -> None:
    pytester.makepyprojecttoml(text)
    _suite(pytester, "def test_nothing():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *pyproject.toml: [[]tool.gradcheckup[]] must be a table*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# ---- issue 13: what a new user sees in CI ---------------------------------------------------
def test_junit_properties_under_the_default_xunit2_family_raise_no_warning(
    pytester: pytest.Pytester,
) -> None:
    _suite(
        pytester,
        """
def test_healthy(gradcheckup):
    gradcheckup.check(he_mlp(), torch.randn(32, 16))

def test_sick(gradcheckup):
    gradcheckup.assert_healthy(gradcheckup.check(sigmoid_mlp(), torch.randn(32, 32)))
""",
    )
    junit_path = pytester.path / "junit.xml"
    # xunit2 is pytest's default family; any PytestWarning becomes an error in setup.
    result = pytester.runpytest(f"--junitxml={junit_path}", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=1, failed=1, errors=0, warnings=0)
    assert "PytestWarning" not in result.stdout.str()
    properties = {
        (case.get("name"), prop.get("name")): prop.get("value")
        for case in ElementTree.parse(junit_path).iter("testcase")
        for prop in case.iter("property")
    }
    assert properties[("test_healthy", "gradcheckup_ok")] == "True"
    assert properties[("test_sick", "gradcheckup_worst")].startswith("vanishing at 0")


@pytest.mark.parametrize("capture", [[], ["-s"]], ids=["captured", "no-capture"])
def test_the_failure_chart_is_shown_once_and_never_printed(
    pytester: pytest.Pytester, capture: list[str]
) -> None:
    _suite(
        pytester,
        """
def test_sick(gradcheckup):
    gradcheckup.assert_healthy(gradcheckup.check(sigmoid_mlp(), torch.randn(32, 32)))
""",
    )
    result = pytester.runpytest(*capture)
    result.assert_outcomes(failed=1)
    # The short summary repeats the whole message where pytest does not truncate it
    # (CI=true): count in the failure report above it.
    output = result.stdout.str().split("short test summary info")[0]
    assert output.count("Gradient flow") == 1  # inside the assertion message only
    assert output.count("(full report: run with -v") == 1
    assert "Captured stdout" not in output
    chart_lines = [line for line in output.splitlines() if "Gradient flow" in line]
    assert chart_lines[0].startswith("E ")  # part of pytest's own failure report


def test_pyproject_settings_follow_the_same_rule_as_the_command_line(
    pytester: pytest.Pytester,
) -> None:
    """From pytest's rootdir up to the nearest pyproject.toml with gradcheckup settings
    (``settings.find_pyproject``): a sub-package's pytest-only pyproject.toml, which makes
    the rootdir, does not hide the repository's settings."""
    (pytester.path / ".git").mkdir()
    pytester.makepyprojecttoml("[tool.gradcheckup]\ndead_relu_fraction = 0.4\n")
    package = pytester.mkpydir("package")
    (package / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\naddopts = '-p no:randomly'\n"
    )
    (package / "test_settings_found.py").write_text(
        "def test_found(gradcheckup):\n    assert gradcheckup.config.dead_relu_fraction == 0.4\n"
    )
    result = pytester.runpytest("package")
    result.stdout.fnmatch_lines(["rootdir: */package*"])
    result.assert_outcomes(passed=1)


def test_github_annotations_point_at_the_failed_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path.parent))
    _suite(
        pytester,
        """
def test_flags_the_sick_model(gradcheckup):
    report = gradcheckup.check(sigmoid_mlp(), torch.randn(32, 32))
    assert not report.ok  # expected findings: no annotation


def test_sick(gradcheckup):
    gradcheckup.assert_healthy(gradcheckup.check(sigmoid_mlp(), torch.randn(32, 32)))
""",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    commands = [line for line in result.stdout.lines if line.startswith("::")]
    source = (pytester.path / "test_suite.py").read_text().splitlines()
    line = source.index("def test_sick(gradcheckup):") + 1
    # The path is relative to the workspace (the repository root).
    assert len(commands) == 1
    assert commands[0].startswith(
        f"::error file={pytester.path.name}/test_suite.py,line={line},"
        "title=gradcheckup vanishing at 0::The backward signal"
    )
    assert "Hint: Replace sigmoid/tanh" in commands[0]
