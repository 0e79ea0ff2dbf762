"""Packaging promises: a light plugin import, public API, the README's main job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gradcheckup as gcu

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_pytest_plugin_package_does_not_import_torch() -> None:
    code = "import sys, pytest_gradcheckup; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"


def test_public_api_is_exported() -> None:
    for name in (
        "check",
        "watch",
        "Config",
        "Report",
        "LayerStats",
        "ActivationStats",
        "Finding",
        "render",
    ):
        assert name in gcu.__all__ and hasattr(gcu, name)
    from gradcheckup import testing

    assert set(testing.__all__) == {
        "assert_healthy",
        "assert_no_vanishing",
        "assert_no_exploding",
        "assert_no_dead_relu",
        "assert_clipped",
    }


def test_main_job_example_prints_a_sick_and_a_healthy_report() -> None:
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "report_example.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("gradcheckup: ") == 2
    assert "UNHEALTHY" in out and "vanishing at layers.0" in out
    assert "No findings: gradients look healthy." in out


def test_readme_documents_every_config_field_and_ci_runs_its_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in gcu.Config.model_fields:
        assert f"`{name}`" in readme, f"README's configuration table lacks {name}"
    assert "&& gradcheckup report --example deep-sigmoid\n" in readme  # the main job
    test_command = "python -m pytest -q"
    assert test_command in readme
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_import_gradcheckup_and_its_config_does_not_import_torch() -> None:
    code = (
        "import sys, gradcheckup; from gradcheckup.config import Config; "
        "Config(max_grad_norm=1.0); "
        "print('torch' in sys.modules); gradcheckup.check; print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.split() == ["False", "True"]


def test_lazy_exports_match_all() -> None:
    from gradcheckup import _EXPORTS

    assert set(gcu.__all__) == {*_EXPORTS, "__version__"}


def test_example_test_suite_runs_with_the_plugin() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "examples" / "test_gradients_example.py"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed, 1 xfailed" in result.stdout
    assert "gradcheckup summary" in result.stdout


def test_public_api_is_documented_and_lint_clean() -> None:
    """ruff with the project's settings (docstrings required in both packages)."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [ruff, "check", "--no-cache", "gradcheckup", "pytest_gradcheckup"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_ships_py_typed_for_both_packages(tmp_path: Path) -> None:
    """PEP 561: type checkers read the annotations of an installed package only if it
    has a py.typed marker, and only a marker inside the wheel reaches users."""
    pytest.importorskip("setuptools", reason="builds the wheel without build isolation")
    source = tmp_path / "source"  # a copy: the build leaves build/ and egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("gradcheckup", "pytest_gradcheckup"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", *build, "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("gradcheckup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"gradcheckup/py.typed", "pytest_gradcheckup/py.typed"} <= names
