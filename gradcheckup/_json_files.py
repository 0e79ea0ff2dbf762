"""Reading the JSON files gradcheckup wrote earlier (saved reports, baselines), with
one-line errors that name the file. Imports neither torch nor pydantic (the plugin
reads baselines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json_file"]


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value stored at ``path``.

    Args:
        path: the file.
        what: what the file should be, for messages (``"report"``, ``"baseline"``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``"{path}: cannot read the {what} (...)"`` (a folder, no permission,
            not UTF-8) or ``"{path}: not a gradcheckup {what}: invalid JSON (...)"``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = "is a directory" if path.is_dir() else error
        raise ValueError(f"{path}: cannot read the {what} ({reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a gradcheckup {what}: invalid JSON ({error})") from None
