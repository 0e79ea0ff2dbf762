"""Output paths, checked before the work that fills them.

The command line and the pytest plugin both ask, before any model runs, whether each
file they will write can be written, so that a typo in a path costs one line of error
instead of a whole run. The check creates nothing that stays: missing parent folders
are created only when the file is written, and the probe file is removed at once.
Importing this module imports neither torch nor pydantic (the plugin loads it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["output_path_problem"]


def output_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written as a file, or None when it can.

    A path whose parent folders are missing is fine when the nearest existing one is a
    folder that accepts new files (the writer creates the rest). Writability is tried,
    not read from permission bits, so read-only file systems and root are judged right.

    Args:
        path: the file to be written (created, replaced or appended to).

    Returns:
        A short reason (``"is a directory"``, ``"cannot create files in /x (Permission
        denied)"``, ...) or None.
    """
    if path.is_dir():
        return "is a directory"
    if path.exists():
        try:
            # Append mode changes neither the content nor the modification time.
            with path.open("a"):
                pass
        except OSError as error:
            return f"cannot be written ({error.strerror or error})"
        return None
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        return f"{folder} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot create files in {folder} ({error.strerror or error})"
    return None


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (a file, when one is in the way)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
