"""Settings from pyproject.toml and KEY=VALUE strings, layered into a Config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gradcheckup as gcu
from gradcheckup.settings import (
    build_config,
    find_pyproject,
    load_pyproject_settings,
    parse_assignments,
)

ROOT = Path(__file__).resolve().parent.parent


_SETTINGS = "[tool.gradcheckup]\nmax_grad_norm = 1.0\n"


def test_find_pyproject_takes_the_nearest(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(_SETTINGS)
    assert find_pyproject(nested) == (tmp_path / "pyproject.toml").resolve()
    (tmp_path / "a" / "pyproject.toml").write_text(_SETTINGS)
    assert find_pyproject(nested) == (tmp_path / "a" / "pyproject.toml").resolve()


def test_find_pyproject_passes_over_files_without_gradcheckup_settings(tmp_path: Path) -> None:
    """A sub-package's own pyproject.toml does not hide the repository's settings."""
    package = tmp_path / "packages" / "model"
    package.mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(_SETTINGS)
    (package / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-q'\n")
    assert find_pyproject(package) == (tmp_path / "pyproject.toml").resolve()
    # A gradcheckup entry that is not a table is found, so that its error is reported.
    (package / "pyproject.toml").write_text("[tool]\ngradcheckup = 3\n")
    assert find_pyproject(package) == (package / "pyproject.toml").resolve()
    assert find_pyproject(tmp_path / "packages") == (tmp_path / "pyproject.toml").resolve()


@pytest.mark.parametrize("marker", [".git", ".hg", ".git file"])
def test_find_pyproject_stops_at_the_repository_root(tmp_path: Path, marker: str) -> None:
    repository = tmp_path / "repository"
    (repository / "src").mkdir(parents=True)
    if marker == ".git file":  # a git worktree or submodule
        (repository / ".git").write_text("gitdir: /elsewhere\n")
    else:
        (repository / marker).mkdir()
    (tmp_path / "pyproject.toml").write_text(_SETTINGS)  # outside: never applies
    assert find_pyproject(repository / "src") is None
    (repository / "pyproject.toml").write_text(_SETTINGS)  # the root itself: included
    assert find_pyproject(repository / "src") == (repository / "pyproject.toml").resolve()


def test_find_pyproject_names_a_broken_file_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.gradcheckup\n")
    with pytest.raises(ValueError, match="not valid TOML") as caught:
        find_pyproject(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "pyproject.toml"))


def test_load_pyproject_settings(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    assert load_pyproject_settings(None) == {}
    path.write_text("[tool.other]\nx = 1\n")
    assert load_pyproject_settings(path) == {}
    path.write_text("[tool.gradcheckup]\nmax_grad_norm = 1.0\nrecurrent_modules = { rnn = 1 }\n")
    assert load_pyproject_settings(path) == {"max_grad_norm": 1.0, "recurrent_modules": {"rnn": 1}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.gradcheckup\n", "not valid TOML"),
        ("[tool]\ngradcheckup = 3\n", r"\[tool.gradcheckup\] must be a table"),
    ],
)
def test_load_pyproject_settings_errors_name_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_pyproject_settings(path)
    assert str(caught.value).startswith(str(path))


def test_parse_assignments_reads_json_else_text() -> None:
    parsed = parse_assignments(
        ["max_grad_norm=1.0", 'recurrent_modules={"rnn": 1}', " train_mode =false", "x=a b"],
        "--set",
    )
    assert parsed == {
        "max_grad_norm": 1.0,
        "recurrent_modules": {"rnn": 1},
        "train_mode": False,
        "x": "a b",
    }


@pytest.mark.parametrize("item", ["novalue", "=1", " =1"])
def test_parse_assignments_needs_key_and_value(item: str) -> None:
    with pytest.raises(ValueError, match=f"^ini: expected KEY=VALUE, got {item!r}$"):
        parse_assignments([item], "ini")


def test_build_config_later_layers_win_over_the_base() -> None:
    base = gcu.Config(dead_relu_fraction=0.4, vanishing_ratio=1e-4)
    config = build_config(
        [
            ("pyproject", {"vanishing_ratio": 1e-5, "max_grad_norm": 2.0}),
            ("cli", {"vanishing_ratio": 1e-6}),
        ],
        base=base,
    )
    assert config.vanishing_ratio == 1e-6 and config.max_grad_norm == 2.0
    assert config.dead_relu_fraction == 0.4  # from the base
    assert build_config([]) == gcu.Config()
    assert build_config([("empty", {})], base=base) is base


def test_build_config_errors_name_source_key_and_valid_keys() -> None:
    with pytest.raises(
        ValueError, match=r"^cli: unknown setting 'max_grad_nrom'; valid settings: .*max_grad_norm"
    ):
        build_config([("pyproject", {"max_grad_norm": 1.0}), ("cli", {"max_grad_nrom": 1.0})])
    with pytest.raises(
        ValueError, match=r"^marker: dead_relu_fraction=3 is invalid: .*less than or equal to 1"
    ):
        build_config([("marker", {"dead_relu_fraction": 3})], base=gcu.Config())


def test_settings_imports_neither_torch_nor_pydantic() -> None:
    code = (
        "import sys, gradcheckup.settings; print('torch' in sys.modules, 'pydantic' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.split() == ["False", "False"]
