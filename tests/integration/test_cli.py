"""The command line end to end, as CI runs it: subprocesses and ``main()``, exit codes,
files, refusals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

import pytest
import torch

import gradcheckup as gcu
from gradcheckup.cli import main
from tests.helpers import he_relu_mlp_source

FACTORY_MODULE = (
    """
import torch
from torch import nn

def sick():
    layers = []
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(16, 4))
"""
    + he_relu_mlp_source("healthy")
    + """
def make_batch():
    return {"inputs": torch.randn(32, 16), "target": torch.randint(0, 4, (32,))}

def not_a_model():
    return 42
"""
)


class Evil:
    """Unpickling this creates a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "cli_models.py").write_text(FACTORY_MODULE)
    sys.path.insert(0, str(folder))
    try:
        import cli_models
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)
    sick, healthy = cli_models.sick(), cli_models.healthy()
    torch.save(sick.state_dict(), folder / "sick_state.pt")
    torch.save(healthy.state_dict(), folder / "healthy_state.pth")
    from safetensors.torch import save_file

    save_file(sick.state_dict(), str(folder / "sick.safetensors"))
    save_file(healthy.state_dict(), str(folder / "healthy.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(sick), str(folder / "sick_script.pt"))
        torch.jit.save(torch.jit.script(healthy), str(folder / "healthy_script.pt"))
    batch = torch.export.Dim("batch", min=2)
    for name, model in (("sick", sick), ("healthy", healthy)):
        program = torch.export.export(model, (torch.randn(8, 16),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(folder / f"{name}.pt2"))
    torch.save(sick, folder / "sick_module.pt")
    torch.save(healthy, folder / "healthy_module.pt")
    torch.save(Evil(folder / "pwned_by_pickle"), folder / "evil.pt")
    _swap_member(
        folder / "healthy.pt2", folder / "evil.pt2", "sample_inputs", Evil(folder / "pwned_by_pt2")
    )
    torch.save(torch.randn(32, 16), folder / "inputs.pt")
    return folder


def _swap_member(source: Path, target: Path, member_part: str, payload: object) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        swapped = False
        for info in original.infolist():
            data = original.read(info.filename)
            if member_part in info.filename and not swapped:
                data, swapped = buffer.getvalue(), True
            copy.writestr(info, data)
    assert swapped


def _run(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradcheckup", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
        timeout=300,
    )


SHAPE = ("--input-shape", "32,16")


@pytest.mark.parametrize(
    ("sick_file", "healthy_file", "extra"),
    [
        ("sick_state.pt", "healthy_state.pth", ("--factory", "cli_models:{name}")),
        ("sick.safetensors", "healthy.safetensors", ("--factory", "cli_models:{name}")),
        ("sick_script.pt", "healthy_script.pt", ("--trust",)),
        ("sick.pt2", "healthy.pt2", ("--trust",)),
        ("sick_module.pt", "healthy_module.pt", ("--trust",)),
    ],
    ids=["state_dict", "safetensors", "torchscript", "export", "pickled-module"],
)
def test_every_format_sick_exits_1_and_healthy_exits_0(
    workdir: Path, sick_file: str, healthy_file: str, extra: tuple[str, ...]
) -> None:
    sick = _run(workdir, "report", sick_file, *SHAPE, *(arg.format(name="sick") for arg in extra))
    assert sick.returncode == 1, sick.stderr
    assert "vanishing" in sick.stdout
    healthy = _run(
        workdir, "report", healthy_file, *SHAPE, *(arg.format(name="healthy") for arg in extra)
    )
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "HEALTHY" in healthy.stdout


@pytest.mark.parametrize(
    ("file", "kind"),
    [("sick_script.pt", "TorchScript"), ("sick_module.pt", "pickled Python object")],
)
def test_code_formats_are_refused_without_trust(workdir: Path, file: str, kind: str) -> None:
    result = _run(workdir, "report", file, *SHAPE)
    assert result.returncode == 2
    assert kind in result.stderr and "--trust" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_malicious_pickle_is_refused_and_runs_nothing(workdir: Path) -> None:
    result = _run(workdir, "report", "evil.pt", *SHAPE)
    assert result.returncode == 2 and "--trust" in result.stderr and "io.open" in result.stderr
    assert not (workdir / "pwned_by_pickle").exists()


def test_pt2_with_a_swapped_malicious_member_is_refused(workdir: Path) -> None:
    # Every .pt2 needs --trust: the refusal comes before anything in the archive is read.
    result = _run(workdir, "report", "evil.pt2", *SHAPE)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "torch.export archive" in result.stderr and "--trust" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (workdir / "pwned_by_pt2").exists()


def test_parameter_only_formats_say_what_is_unavailable(workdir: Path) -> None:
    script = _run(workdir, "report", "healthy_script.pt", *SHAPE, "--trust")
    assert "TorchScript" in script.stderr and "not measured" in script.stdout
    exported = _run(workdir, "report", "healthy.pt2", *SHAPE, "--trust")
    assert "exported programs do not call their submodules" in exported.stderr
    assert "no layer module ran its own forward" in exported.stdout


def test_check_command_json_junit_markdown(workdir: Path) -> None:
    out = workdir / "out"
    result = _run(
        workdir,
        "check",
        "cli_models:sick",
        "--batch",
        "cli_models:make_batch",
        "--loss",
        "cross_entropy",
        "--json",
        str(out / "r.json"),
        "--junit",
        str(out / "r.xml"),
        "--markdown",
        str(out / "r.md"),
        "--quiet",
    )
    assert result.returncode == 1
    assert result.stdout.startswith("gradcheckup: UNHEALTHY cli_models:sick: 1 error(s)")
    report = gcu.Report.model_validate_json((out / "r.json").read_text())
    assert report.findings_of("vanishing") and report.loss is not None
    suite = ElementTree.parse(out / "r.xml").getroot().find("testsuite")
    assert suite.get("failures") == "2" and suite.find("testcase/failure") is not None
    markdown = (out / "r.md").read_text()
    assert "## gradcheckup: ❌ unhealthy" in markdown and "| error | vanishing | `0` |" in markdown


def test_healthy_check_exits_0_and_fail_on_warning(workdir: Path) -> None:
    assert _run(workdir, "check", "cli_models:healthy", *SHAPE, "--quiet").returncode == 0
    # A linear chain of 15 layers with gain 2 each grows 2^14 = 16384x toward the input,
    # between the exploding warning (1e4) and error (3e4) thresholds: it only warns, exit 0
    # by default, 1 with --fail-on warning.
    (workdir / "warn_models.py").write_text(
        "from torch import nn\n"
        "def mild():\n"
        "    layers = [nn.Linear(16, 16, bias=False) for _ in range(15)]\n"
        "    for layer in layers:\n"
        "        nn.init.orthogonal_(layer.weight, gain=2.0)\n"
        "    return nn.Sequential(*layers)\n"
    )
    mild = _run(workdir, "check", "warn_models:mild", *SHAPE, "--json", "mild.json", "--quiet")
    report = gcu.Report.model_validate_json((workdir / "mild.json").read_text())
    assert report.ok and any(f.severity == "warning" for f in report.findings)
    assert mild.returncode == 0
    # The one-line verdict names the warning, not only its count.
    assert mild.stdout == (
        "gradcheckup: HEALTHY warn_models:mild: 0 error(s), 1 warning(s): exploding at 0 (warning)\n"
    )
    assert (
        _run(
            workdir, "check", "warn_models:mild", *SHAPE, "--quiet", "--fail-on", "warning"
        ).returncode
        == 1
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("report", "missing.pt", *SHAPE), "missing.pt: no such file"),
        (("report", "sick_state.pt", *SHAPE), "holds a state_dict (26 tensors); pass --factory"),
        (
            ("report", "sick_state.pt", *SHAPE, "--factory", "cli_models:healthy"),
            "does not fit the model from --factory",
        ),
        (
            ("report", "sick_state.pt", "--input-shape", "32,7", "--factory", "cli_models:sick"),
            "forward pass failed on (tensor(32, 7) float32)",
        ),
        (("check", "no_such_module:build", *SHAPE), "cannot import module 'no_such_module'"),
        (("check", "cli_models:nothing", *SHAPE), "has no attribute 'nothing'"),
        (("check", "cli_models", *SHAPE), "expected 'package.module:callable'"),
        (("check", "cli_models:not_a_model", *SHAPE), "returned int, expected an nn.Module"),
        (("report", "cli_models.py", *SHAPE), "cli_models.py: not a readable torch file"),
        (("report", "evil.pt", *SHAPE), "is a pickled Python object, not plain tensors"),
        (("report", "inputs.pt", *SHAPE), "holds a Tensor, neither a model nor a state_dict"),
        (("check", "cli_models:healthy"), "give --input-shape"),
        (
            ("check", "cli_models:healthy", *SHAPE, "--set", "max_grad_nrom=1"),
            "unknown setting 'max_grad_nrom'",
        ),
        (
            ("check", "cli_models:healthy", *SHAPE, "--dead-relu-fraction", "2"),
            "dead_relu_fraction=2.0 is invalid",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(
    workdir: Path, args: tuple[str, ...], message: str
) -> None:
    result = _run(workdir, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_safe_pt2_also_loads_with_trust(workdir: Path) -> None:
    result = _run(workdir, "report", "sick.pt2", *SHAPE, "--trust", "--quiet")
    assert result.returncode == 1 and "UNHEALTHY" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--example", "deep-sigmoid", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert (
        main(["report", "--example", "he-relu-mlp", "--quiet", "--plot", str(tmp_path / "p.png")])
        == 2
    )
    assert "pip install 'gradcheckup[plot]'" in capsys.readouterr().err


def test_debug_shows_the_traceback(workdir: Path) -> None:
    result = _run(workdir, "report", "missing.pt", *SHAPE, "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_usage_errors_exit_2(workdir: Path) -> None:
    assert _run(workdir).returncode == 2
    assert _run(workdir, "report", "x.pt", "--input-shape", "a,b").returncode == 2
    version = _run(workdir, "--version")
    assert version.returncode == 0 and version.stdout.startswith("gradcheckup ")


# -- in-process: options that need no fresh interpreter ------------------------------------


def test_example_main_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--example", "deep-sigmoid"]) == 1
    out = capsys.readouterr().out
    assert "gradcheckup report: example deep-sigmoid" in out and "vanishing at layers.0" in out
    assert main(["report", "--example", "deep-sigmoid-skip", "--quiet"]) == 0


def test_steps_input_file_and_seed(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    assert (
        main(
            [
                "check",
                "cli_models:healthy",
                "--input",
                "inputs.pt",
                "--steps",
                "3",
                "--json",
                "steps.json",
                "--quiet",
            ]
        )
        == 0
    )
    report = gcu.Report.model_validate_json((workdir / "steps.json").read_text())
    assert report.passes == 3
    first = main(
        ["check", "cli_models:healthy", *SHAPE, "--seed", "5", "--json", "a.json", "--quiet"]
    )
    second = main(
        ["check", "cli_models:healthy", *SHAPE, "--seed", "5", "--json", "b.json", "--quiet"]
    )
    assert first == second == 0
    a, b = (json.loads((workdir / name).read_text()) for name in ("a.json", "b.json"))
    assert a["layers"] == b["layers"]


def test_thresholds_from_flags_set_and_pyproject(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(workdir)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.gradcheckup]\nvanishing_ratio = 1e-30\nvanishing_warn_ratio = 1e-29\n"
    )
    args = [
        "check",
        "cli_models:sick",
        *SHAPE,
        "--quiet",
        "--pyproject",
        str(tmp_path / "pyproject.toml"),
    ]
    assert main(args) == 0  # the pyproject threshold is too lax to flag it
    assert main([*args, "--vanishing-ratio", "1e-3"]) == 1  # flags beat pyproject
    assert main([*args, "--set", "vanishing_ratio=0.001"]) == 1


def test_pyproject_is_found_by_the_same_rule_as_the_plugin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """From the current directory up to the nearest pyproject.toml with gradcheckup
    settings (``settings.find_pyproject``), never above the repository root."""
    repository = tmp_path / "repository"
    package = repository / "packages" / "model"
    package.mkdir(parents=True)
    (repository / ".git").mkdir()
    (package / "cli_models.py").write_text(FACTORY_MODULE)
    monkeypatch.chdir(package)
    monkeypatch.syspath_prepend(str(package))
    sick = ["check", "cli_models:sick", *SHAPE, "--quiet"]
    lax = "[tool.gradcheckup]\nvanishing_ratio = 1e-30\nvanishing_warn_ratio = 1e-29\n"
    (tmp_path / "pyproject.toml").write_text(lax)  # outside the repository: not applied
    assert main(sick) == 1
    (repository / "pyproject.toml").write_text(lax)
    (package / "pyproject.toml").write_text("[project]\nname = 'model'\n")  # passed over
    assert main(sick) == 0


def test_baseline_catches_a_regression(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    base = ["check", "cli_models:healthy", *SHAPE, "--quiet", "--baseline", "profile.json"]
    assert main([*base, "--update-baseline"]) == 0
    assert main(base) == 0
    (workdir / "cli_models_scaled.py").write_text(
        "import torch\nfrom cli_models import healthy\n"
        "def scaled():\n    model = healthy()\n    torch.nn.init.zeros_(model[2].bias)\n"
        "    with torch.no_grad():\n        model[4].weight.mul_(100.0)\n    return model\n"
    )
    capsys.readouterr()
    regressed = [
        "check",
        "cli_models_scaled:scaled",
        *SHAPE,
        "--quiet",
        "--baseline",
        "profile.json",
    ]
    assert main(regressed) == 1
    assert "baseline regression: layer" in capsys.readouterr().err


def test_github_annotations_and_step_summary(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    summary = workdir / "step_summary.md"
    summary.write_text("earlier content\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["check", "cli_models:sick", *SHAPE, "--quiet", "--markdown", str(summary)]) == 1
    out = capsys.readouterr().out
    assert "::error title=gradcheckup vanishing at 0::" in out
    assert summary.read_text().startswith(
        "earlier content\n## gradcheckup"
    )  # appended, not overwritten


def test_plot(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(workdir)
    assert main(["report", "--example", "deep-sigmoid", "--quiet", "--plot", "flow.png"]) == 1
    assert (workdir / "flow.png").read_bytes().startswith(b"\x89PNG")


def test_plain_state_dict_nested_under_a_key(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    state = torch.load(workdir / "healthy_state.pth", weights_only=True)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    nested = ["report", str(tmp_path / "checkpoint.pt"), *SHAPE, "--factory", "cli_models:healthy"]
    plain = ["report", "healthy_state.pth", *SHAPE, "--factory", "cli_models:healthy"]
    assert main([*nested, "--quiet", "--json", str(tmp_path / "nested.json")]) == 0
    assert main([*plain, "--quiet", "--json", str(tmp_path / "plain.json")]) == 0
    # The same weights were loaded: identical gradient statistics.
    nested_layers = json.loads((tmp_path / "nested.json").read_text())["layers"]
    assert nested_layers == json.loads((tmp_path / "plain.json").read_text())["layers"]


def test_each_step_uses_its_own_batch_target(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # make_batch returns labels that depend on the inputs; a loss that sees a target from
    # another batch would not match them. The loss records what it was given.
    (workdir / "paired_batches.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "SEEN = []\n"
        "def model():\n"
        "    return nn.Linear(4, 2)\n"
        "def make_batch():\n"
        "    x = torch.randn(8, 4)\n"
        "    return {'inputs': x, 'target': (x[:, 0] > 0).long()}\n"
    )
    monkeypatch.chdir(workdir)
    from gradcheckup.cli import inputs as cli_inputs

    original = cli_inputs.named_loss
    pairs = []

    def recording(kind, seed):
        loss = original(kind, seed)

        def wrapped(output, target=None):
            pairs.append((output.detach().clone(), target))
            return loss(output, target)

        return wrapped

    monkeypatch.setattr(cli_inputs, "named_loss", recording)
    assert (
        main(
            [
                "check",
                "paired_batches:model",
                "--batch",
                "paired_batches:make_batch",
                "--loss",
                "cross_entropy",
                "--steps",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert len(pairs) == 3
    targets = [target for _, target in pairs]
    assert all(target is not None for target in targets)
    assert not all(torch.equal(targets[0], other) for other in targets[1:])  # fresh per step
