"""The W&B adapter, logged to a real offline run and read back from the run's files: the
``.wandb`` transaction log (LevelDB log format, protobuf records) and the media files."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from wandb.proto import wandb_internal_pb2  # noqa: E402

from gradcheckup.integrations import summary_scalars  # noqa: E402
from gradcheckup.integrations.wandb import log_report  # noqa: E402
from tests import sample_reports  # noqa: E402

_BLOCK = 32 * 1024  # LevelDB log: records never straddle a block's last 6 bytes
_FULL, _LAST = 1, 4


def _records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of a ``.wandb`` file: a 7-byte file header, then LevelDB log chunks
    (crc32, length, type; a record split over blocks comes as FIRST, MIDDLE..., LAST)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, parts = 7, []
    while position + 7 <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left_in_block < 7 or (length == 0 and kind == 0):
            position += left_in_block  # padding up to the next block
            continue
        parts.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _complete_records(run_dir: Path, timeout: float = 30.0) -> list[wandb_internal_pb2.Record]:
    """The run's records once its ``exit`` record is written: wandb's writer process may
    still be flushing when ``finish()`` returns on a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        logs = list(run_dir.glob("run-*.wandb"))
        try:
            records = list(_records(logs[0])) if len(logs) == 1 else []
        except Exception:  # a record still being written
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete .wandb log in {run_dir} after {timeout} s")
        time.sleep(0.1)


def _history(run_dir: Path) -> dict[int, dict[str, object]]:
    """Per logged step: top-level key to value (nested keys joined with '.')."""
    rows: dict[int, dict[str, object]] = {}
    for record in _complete_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows[record.history.step.num] = {
                ".".join(item.nested_key) or item.key: json.loads(item.value_json)
                for item in record.history.item
            }
    return rows


@pytest.fixture
def offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="gradcheckup-test", dir=tmp_path, mode="offline")
    yield run
    run.finish()


def test_scalars_findings_table_and_figure_reach_the_offline_run(offline_run, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    report = sample_reports.deep_sigmoid()
    healthy = sample_reports.healthy_resnet()
    log_report(offline_run, report, step=3)
    log_report(offline_run, healthy, step=8, figure=False)
    offline_run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    history = _history(run_dir)
    for step, logged in ((3, report), (8, healthy)):
        for key, value in summary_scalars(logged).items():
            assert history[step][key] == pytest.approx(value, rel=1e-12), key
    table_file = run_dir / "files" / history[3]["gradcheckup/findings.path"]
    table = json.loads(table_file.read_text())
    (finding,) = report.findings
    assert table["columns"] == ["severity", "kind", "where", "message", "fix"]
    assert table["data"] == [["error", "vanishing", finding.where, finding.message, finding.hint]]
    assert history[8]["gradcheckup/findings.nrows"] == 0
    image = run_dir / "files" / history[3]["gradcheckup/flow.path"]
    assert image.read_bytes().startswith(b"\x89PNG")
    assert "gradcheckup/flow.path" not in history[8]


def test_chosen_layers_and_the_logged_dictionary(offline_run) -> None:
    report = sample_reports.dead_relu()
    logged = log_report(offline_run, report, step=1, layers=["2"], figure=False)
    scalars = {key: value for key, value in logged.items() if key != "gradcheckup/findings"}
    assert scalars == summary_scalars(report, layers=["2"])
    assert "gradcheckup/layer/2/grad_norm" in scalars
    assert isinstance(logged["gradcheckup/findings"], wandb.Table)
