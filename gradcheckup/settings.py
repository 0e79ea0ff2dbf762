"""Where a Config's values come from: ``[tool.gradcheckup]`` in pyproject.toml and
``key=value`` strings (command line, ini), merged in order of precedence over a base.

``config.py`` says what each setting means; this module reads and layers them. It
imports neither torch nor pydantic at import time (``build_config`` imports ``Config``
when called), so the pytest plugin reads pyproject.toml with it in every pytest run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradcheckup.config import Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["build_config", "find_pyproject", "load_pyproject_settings", "parse_assignments"]


_REPOSITORY_MARKERS = (".git", ".hg")


def find_pyproject(start: Path) -> Path | None:
    """The pyproject.toml whose ``[tool.gradcheckup]`` applies to ``start``.

    The one rule for the command line and the pytest plugin, which differ only in where
    they start: the command line from the current directory, the plugin from pytest's
    rootdir (the directory of pytest's own config file, or else the common ancestor of
    the test paths). From ``start`` it walks up to the nearest pyproject.toml that has a
    ``tool.gradcheckup`` entry, passing over pyproject.toml files without one (a
    sub-package's own file does not hide the repository's settings, as pytest and ruff
    pass over files without their table). It stops at the repository root (the first
    directory with a ``.git`` or ``.hg``), included, so no file outside the repository
    applies; outside a repository it walks up to the filesystem root.

    Args:
        start: the directory the walk starts from.

    Returns:
        The file, or None when no pyproject.toml on the way has ``tool.gradcheckup``.

    Raises:
        ValueError: a pyproject.toml on the way cannot be read or is not valid TOML.
    """
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and "gradcheckup" in _tool_table(candidate):
            return candidate
        if any((folder / marker).exists() for marker in _REPOSITORY_MARKERS):
            return None
    return None


def _tool_table(path: Path) -> dict[str, Any]:
    """The ``[tool]`` table of a pyproject.toml (empty if absent).

    Raises:
        ValueError: the file cannot be read or is not valid TOML, or ``tool`` is not a
            table.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from error
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ValueError(f"{path}: [tool] must be a table")
    return tool


def load_pyproject_settings(path: Path | None) -> dict[str, Any]:
    """The ``[tool.gradcheckup]`` table of a pyproject.toml (empty if absent).

    Raises:
        ValueError: the file cannot be read or is not valid TOML, or ``tool`` or
            ``tool.gradcheckup`` is not a table.
    """
    if path is None:
        return {}
    section = _tool_table(path).get("gradcheckup", {})
    if not isinstance(section, dict):
        raise ValueError(f"{path}: [tool.gradcheckup] must be a table of settings")
    return section


def parse_assignments(items: Iterable[str], source: str) -> dict[str, Any]:
    """``["max_grad_norm=1.0", "recurrent_modules={\\"rnn\\": 1}"]`` -> a dict.

    Values are read as JSON (numbers, true/false, null, objects), else kept as text.
    """
    settings: dict[str, Any] = {}
    for item in items:
        key, separator, raw = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{source}: expected KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        settings[key.strip()] = value
    return settings


def build_config(
    layers: Iterable[tuple[str, Mapping[str, Any]]], base: Config | None = None
) -> Config:
    """Apply settings layers, later ones winning, over ``base`` into a validated Config.

    The one way to make "a Config plus overrides": ``Config.merged``, the CLI, the pytest
    session and the fixture all call it.

    Args:
        layers: ``(source, settings)`` pairs; errors name the source, the key and, for
            an unknown key, the valid ones.
        base: the Config whose values the layers override; ``Config()`` by default.

    Returns:
        A new, validated ``Config`` (``base`` itself when no layer sets anything).

    Raises:
        ValueError: an unknown key or an invalid value.
    """
    # Imported here: the pytest plugin imports this module, and must stay light.
    from gradcheckup.config import layered_config

    return layered_config(layers, base)
