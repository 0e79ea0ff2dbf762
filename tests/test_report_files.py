"""Saved reports: schema_version, reading old and future files, and the published JSON
Schema (checked in as gradcheckup/report.schema.json, shipped in the wheel).

After a deliberate change of the report models, regenerate the schema and review its diff:

    GRADCHECKUP_UPDATE_SCHEMA=1 python -m pytest tests/test_report_files.py -k checked_in
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import gradcheckup as gcu
from gradcheckup.report import SCHEMA_VERSION
from gradcheckup.report_files import (
    LEGACY_SCHEMA_VERSION,
    SCHEMA_FILE,
    read_report,
    report_json_schema,
    schema_text,
)
from tests import models, sample_reports

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def test_the_checked_in_schema_is_the_one_the_models_generate() -> None:
    if os.environ.get("GRADCHECKUP_UPDATE_SCHEMA"):
        SCHEMA_FILE.write_text(schema_text(), encoding="utf-8")
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "gradcheckup/report.schema.json is stale: regenerate it (see this module's docstring)"
    )
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["properties"]["schema_version"]["default"] == SCHEMA_VERSION


def _nonfinite_report() -> gcu.Report:
    report = gcu.check(models.nonfinite_model(), torch.randn(8, 8))
    saved = report.model_dump_json()
    assert '"NaN"' in saved or '"Infinity"' in saved  # what the schema's strings are for
    return report


@pytest.mark.parametrize(
    "make",
    [_nonfinite_report, sample_reports.plain_rnn, sample_reports.unclipped_exploding_training],
    ids=["nonfinite", "plain-rnn", "training-steps"],
)
def test_a_produced_report_validates_against_the_schema_and_round_trips(make) -> None:
    report = make()
    saved = report.model_dump_json()
    assert json.loads(saved)["schema_version"] == SCHEMA_VERSION
    # Re-serialised, not compared as models: NaN != NaN.
    assert gcu.Report.model_validate_json(saved).model_dump_json() == saved
    try:
        import jsonschema
    except ImportError:
        return  # the pydantic round trip above is the check without jsonschema
    jsonschema.Draft202012Validator.check_schema(report_json_schema())
    jsonschema.validate(json.loads(saved), report_json_schema())


def test_old_golden_files_without_schema_version_validate_too() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for path in sorted(GOLDEN.glob("*.json")):
        stored = json.loads(path.read_text(encoding="utf-8"))
        assert "schema_version" not in stored
        jsonschema.validate(stored, report_json_schema())


def test_a_file_without_schema_version_is_read_as_version_1_and_says_so() -> None:
    path = GOLDEN / "deep_sigmoid.json"
    report, notes = read_report(path)
    assert report.schema_version == LEGACY_SCHEMA_VERSION == 1
    assert notes == [
        f"{path} has no schema_version (written before reports carried one): read as "
        "schema version 1"
    ]
    assert report == gcu.Report.model_validate_json(path.read_text()).model_copy(
        update={"schema_version": 1}
    )


def test_a_current_file_reads_back_without_notes(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    report = sample_reports.dead_relu()
    path.write_text(report.model_dump_json(indent=2))
    assert read_report(path) == (report, [])


def test_non_finite_numbers_read_back_as_they_were_written(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    saved = _nonfinite_report().model_dump_json()
    path.write_text(saved)
    report, notes = read_report(path)
    assert report.model_dump_json() == saved and notes == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema_version": 99}', "report schema version 99 is newer than this gradcheckup reads"),
        ('{"schema_version": "1"}', "schema_version must be a positive integer, found '1'"),
        ('{"schema_version": true}', "schema_version must be a positive integer, found True"),
        ("[1, 2]", "not a gradcheckup report: expected a JSON object, found list"),
        ("{oops", "not a gradcheckup report: invalid JSON"),
        (
            '{"layers": 3}',
            "not a gradcheckup report: layers: Input should be a valid list (and 6 more)",
        ),
    ],
    ids=["future", "string-version", "bool-version", "list", "invalid-json", "invalid-report"],
)
def test_files_that_are_no_readable_report_are_refused_in_one_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ValueError) as raised:
        read_report(path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"none\.json: no such file"):
        read_report(tmp_path / "none.json")
    with pytest.raises(ValueError, match="cannot read the report \\(is a directory\\)"):
        read_report(tmp_path)


def test_the_wheel_ships_the_schema(tmp_path: Path) -> None:
    """Build a wheel from a copy of the sources, as a release would."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("gradcheckup", "pytest_gradcheckup"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("gradcheckup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("gradcheckup/report.schema.json").decode("utf-8")
    assert shipped == schema_text()
