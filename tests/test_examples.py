"""The examples gallery as smoke tests: in each example the finding appears for the broken
model and disappears for the fixed one, and the theory the example states holds.

The examples' own functions are imported (no subprocesses), so the file stays fast.
"""

from __future__ import annotations

import functools
import importlib
import os
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import gradcheckup as gcu
from gradcheckup.cli import main as cli_main
from gradcheckup.testing import assert_clipped

# The plugin's modules, imported here rather than first inside the in-process pytest run
# below (which forgets the modules it imported), so one copy of each class exists.
for _module in ("pytest_gradcheckup.fixture", "pytest_gradcheckup.session"):
    importlib.import_module(_module)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = (
    "sigmoid_vs_relu",
    "initialisation",
    "residual_connections",
    "normalisation_layers",
    "dying_relu",
    "recurrent_through_time",
    "clipping_and_amp",
)


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a script would run it (its folder on sys.path)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@functools.cache
def results(name: str) -> Any:
    """The example's ``run()``, once per session: several tests read the same reports."""
    return example(name).run()


def kinds(report: gcu.Report, at_least: str = "warning") -> set[str]:
    return {f.kind.value for f in report.findings if f.severity.at_least(at_least)}


def test_sigmoid_mlp_vanishes_relu_with_he_init_does_not() -> None:
    module = example("sigmoid_vs_relu")
    reports = results("sigmoid_vs_relu")
    assert kinds(reports["sigmoid"], "error") == {"vanishing"}
    assert reports["sigmoid"].findings_of("vanishing")[0].value < 1e-10
    assert not reports["relu"].findings
    # sigmoid' <= 1/4: going back one layer keeps at most 1/4 * ||W_next||_2 of the signal.
    model = module.build_models()["sigmoid"]
    factors = module.per_layer_factors(module.layer_signals(reports["sigmoid"]))
    bounds = module.sigmoid_bounds(model)
    assert len(factors) == len(bounds) == module.DEPTH
    for factor, bound in zip(factors, bounds, strict=True):
        assert factor <= bound * (1 + 1e-5)


def test_default_init_vanishes_xavier_fixes_tanh_and_he_fixes_relu() -> None:
    module = example("initialisation")
    reports = results("initialisation")
    assert "vanishing" in kinds(reports["tanh-default"], "error")
    assert "vanishing" in kinds(reports["relu-default"], "error")
    assert not reports["tanh-xavier"].findings
    assert not reports["relu-he"].findings
    # Xavier on ReLU halves the variance per layer: 0.71^19 is a warning, not an error.
    assert kinds(reports["relu-xavier"]) == {"vanishing"}
    assert not kinds(reports["relu-xavier"], "error")
    for name, report in reports.items():
        measured, expected = module.hidden_factor(report), module.expected_factor(name)
        if name.startswith("relu"):
            assert measured == pytest.approx(expected, rel=module.RELU_TOLERANCE), name
        else:
            assert measured <= expected * (1 + module.TANH_TOLERANCE), name
    assert module.expected_factor("relu-default") == pytest.approx(6**-0.5)
    assert module.expected_factor("relu-he") == pytest.approx(1.0)


def test_skip_connections_keep_the_first_layers_gradient() -> None:
    reports = results("residual_connections")
    plain = reports["plain"].findings_of("vanishing")
    assert plain and plain[0].severity is gcu.Severity.ERROR
    # The residual chain as the article writes it: no vanishing, but its growing residual
    # stream saturates the deeper sigmoids, which gradcheckup reports.
    assert "vanishing" not in kinds(reports["residual"])
    assert kinds(reports["residual"], "error") == {"saturation"}
    assert not reports["pre-norm residual"].findings


def test_normalisation_rescues_badly_scaled_weights() -> None:
    module = example("normalisation_layers")
    reports = results("normalisation_layers")
    assert kinds(reports["no norm, small"], "error") == {"vanishing"}
    assert kinds(reports["no norm, large"], "error") == {"exploding"}
    for norm in ("BatchNorm", "LayerNorm"):
        for scale in module.SCALES:
            assert not reports[f"{norm}, {scale}"].findings, (norm, scale)
    for scale_name, scale in module.SCALES.items():
        factor = module.geometric_mean(module.hidden_factors(reports[f"no norm, {scale_name}"]))
        expected = module.relu_gain(module.WIDTH, scale**2)
        assert factor == pytest.approx(expected, rel=module.RELU_TOLERANCE)
    for norm in ("BatchNorm", "LayerNorm"):
        small = module.hidden_factors(reports[f"{norm}, small"])
        large = module.hidden_factors(reports[f"{norm}, large"])
        assert small == pytest.approx(large, rel=module.INVARIANCE_TOLERANCE), norm


def test_dead_relu_appears_for_relu_and_not_for_leaky_relu() -> None:
    module = example("dying_relu")
    models = module.build_models()  # the same weights as those run() checked
    reports = results("dying_relu")
    assert kinds(reports["bias, ReLU"], "error") == {"dead_relu"}
    assert kinds(reports["step, ReLU"], "error") == {"dead_relu"}
    assert reports["bias, ReLU"].findings_of("dead_relu")[0].where == "2/relu"
    assert reports["step, ReLU"].findings_of("dead_relu")[0].where == "4/relu"
    for name in ("bias, LeakyReLU", "step, LeakyReLU"):
        assert not reports[name].findings, name
        assert not reports[name].activations  # LeakyReLU's units cannot die: not monitored
    # The units reported dead are exactly those whose weights get zero gradient.
    for name, model in models.items():
        zero = module.zero_gradient_units(name, model)
        assert zero == pytest.approx(module.dead_fraction(name, reports[name]), abs=0.5 / 64)
    assert module.zero_gradient_units("step, ReLU", models["step, ReLU"]) >= 0.3
    assert module.zero_gradient_units("step, LeakyReLU", models["step, LeakyReLU"]) == 0.0


def test_gradient_through_time_follows_rho_to_the_steps_and_gates_carry_it() -> None:
    module = example("recurrent_through_time")
    models = module.build_models()  # the same weights as those run() checked
    reports = results("recurrent_through_time")
    longest = module.LENGTHS[-1]
    assert "vanishing_through_time" in kinds(reports["RNN"][longest], "error")
    for gated in ("LSTM", "GRU"):  # at default init: a warning, their gates can learn
        found = reports[gated][longest].findings_of("vanishing_through_time")
        assert [f.severity for f in found] == [gcu.Severity.WARNING], gated
    for fixed in ("LSTM, forget bias 2", "GRU, update bias 3"):
        assert all(not report.findings for report in reports[fixed].values()), fixed
    # rho^(T-1) crosses the thresholds only once the sequence is long enough.
    assert not reports["Elman rho=0.85"][40].findings
    assert "vanishing_through_time" in kinds(reports["Elman rho=0.85"][longest], "error")
    assert not reports["Elman rho=1.15"][40].findings
    assert "exploding_through_time" in kinds(reports["Elman rho=1.15"][longest], "error")
    assert all(not report.findings for report in reports["Elman rho=1"].values())
    for rho in module.RADII:
        name = f"Elman rho={rho:g}"
        radius = module.spectral_radius(models[name])
        assert radius == pytest.approx(rho, rel=1e-5)
        for steps, report in reports[name].items():
            assert module.first_to_last(report) == pytest.approx(
                radius ** (steps - 1), rel=module.LAW_TOLERANCE
            ), (name, steps)


def test_clipping_and_the_order_of_unscale_and_clip() -> None:
    module = example("clipping_and_amp")
    reports = {mode: report for mode, (report, _) in results("clipping_and_amp").items()}
    assert {"exploding", "missing_clipping"} <= kinds(reports["no clipping"], "error")
    assert kinds(reports["AMP, clip before unscale_"], "error") == {"clipping_before_unscale"}
    assert not reports["clip_grad_norm_"].findings
    assert not reports["AMP, unscale_ then clip"].findings
    for mode in ("clip_grad_norm_", "AMP, unscale_ then clip"):
        assert_clipped(reports[mode])
    for mode in ("no clipping", "AMP, clip before unscale_"):
        with pytest.raises(AssertionError):
            assert_clipped(reports[mode])
    wrong = reports["AMP, clip before unscale_"]
    assert len(wrong.steps) == module.STEPS
    for step in wrong.steps:
        assert step.grad_norm_at_step == pytest.approx(module.MAX_NORM / module.AMP_SCALE, rel=1e-3)
    _, losses = results("clipping_and_amp")["AMP, clip before unscale_"]
    assert losses[-1] == pytest.approx(losses[0], rel=0.01)  # a 1/1024 step: training stalls


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_as_a_script_and_saves_its_figure(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main`` is ``explain(run(), arguments)``: explain the reports the other tests
    checked, as the script prints them, with its figure."""
    pytest.importorskip("matplotlib")
    module = example(name)
    arguments = module.arguments(module.__doc__, ["--brief", "--plot", str(tmp_path)])
    assert module.explain(results(name), arguments) == 0
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "Why:" in capsys.readouterr().out


def test_ready_to_copy_test_file_passes_with_the_plugin(pytester: pytest.Pytester) -> None:
    # An in-process run forgets the modules first imported inside it; torch imports some
    # lazily at the first optimizer step and would register them twice later. Steps with
    # clipping and AMP have run here first (cached); the plugin's modules are imported at
    # the top of this file.
    results("clipping_and_amp")
    source = (EXAMPLES / "test_model_gradients.py").read_text()
    pytester.makepyfile(test_model_gradients=source)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*gradcheckup summary*"])


def test_workflow_runs_gradcheckup_check_with_flags_that_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflow's `gradcheckup check` command, run in-process on the template's model:
    every flag exists, and the JSON, JUnit XML, plot and step summary are written."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("matplotlib")
    workflow = yaml.safe_load((EXAMPLES / "github-workflow.yml").read_text())
    steps = {step.get("name"): step for step in workflow["jobs"]["gradients"]["steps"]}
    upload = steps["Upload the reports"]
    assert upload["if"] == "always()" and upload["uses"].startswith("actions/upload-artifact@")
    script = steps["Gradient check"]["run"].replace("\\\n", " ")
    (command,) = [line for line in script.splitlines() if line.strip().startswith("gradcheckup")]
    summary = tmp_path / "summary.md"
    environment = {
        **workflow["env"],
        "MODEL_FACTORY": "test_model_gradients:build_model",
        "BATCH": "test_model_gradients:make_batch",
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / workflow["env"]["OUT"]
    out.mkdir()
    argv = shlex.split(os.path.expandvars(command))
    assert argv[:2] == ["gradcheckup", "check"]
    assert cli_main(argv[1:]) == 0
    for produced in ("report.json", "report.xml", "gradient-flow.png"):
        assert (out / produced).stat().st_size > 0, produced
    assert gcu.Report.model_validate_json((out / "report.json").read_text()).ok
    assert summary.read_text().strip()
