"""The Hugging Face callback in a real two-process DDP ``Trainer`` run (gloo, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from tests.distributed._spawn import run_ranks
from tests.distributed._transformers_job import trainer_job


def test_a_ddp_trainer_run_reports_both_ranks_reduced_gradients(tmp_path: Path) -> None:
    first, second = run_ranks(trainer_job, tmp_path, timeout=240)
    assert first["wrapped"] == second["wrapped"] == "DistributedDataParallel"
    report = first["report"]
    assert report["ranks"] == 2 and report["passes"] == 2 * 3
    # Found through the Trainer's wrapper: the reduced gradient is read once per step,
    # not once per rank and micro-batch.
    measured = [layer["passes"] for layer in report["layers"] if layer["passes"]]
    assert measured and set(measured) == {3}
    assert len(report["steps"]) == 3 and report["probe_errors"] == []
