"""``output_path_problem``: output paths judged before the work, creating nothing."""

from __future__ import annotations

from pathlib import Path

from gradcheckup._paths import output_path_problem


def test_writable_paths_pass_and_nothing_is_left_behind(tmp_path: Path) -> None:
    (tmp_path / "existing.json").write_text("kept")
    for path in ("new.json", "existing.json", "missing/folders/r.json"):
        assert output_path_problem(tmp_path / path) is None
    assert sorted(item.name for item in tmp_path.iterdir()) == ["existing.json"]
    assert (tmp_path / "existing.json").read_text() == "kept"


def test_unwritable_paths_say_why(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    assert output_path_problem(tmp_path) == "is a directory"
    assert output_path_problem(tmp_path / "a-file" / "deeper" / "r.json") == (
        f"{tmp_path / 'a-file'} is not a directory"
    )
    # Tried, not read from permission bits: /proc takes no new files, even from root.
    if Path("/proc/self").is_dir():
        assert output_path_problem(Path("/proc/gradcheckup/r.json")).startswith(
            "cannot create files in /proc"
        )
