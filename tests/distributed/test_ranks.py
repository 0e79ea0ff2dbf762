"""One report for a distributed job: two real processes (gloo on loopback) per job.

The data is chosen so that the ranks' own measurements differ and the combined answer
is known exactly (``_jobs``): each rank's batch kills a ReLU unit the other keeps
alive, and the reduced gradient is that of a single process on the whole batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist

from tests.distributed import _jobs
from tests.distributed._spawn import run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")


def layer_values(report: dict[str, Any], field: str) -> list[float]:
    return [layer[field] for layer in report["layers"]]


def dead_fraction(report: dict[str, Any]) -> float:
    (site,) = report["activations"]
    return site["dead_fraction"]


def step_norms(report: dict[str, Any]) -> list[float]:
    return [step["grad_norm_at_step"] for step in report["steps"]]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(_jobs.ddp_job, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(_jobs.fsdp_job, tmp_path_factory.mktemp("fsdp"))


def test_every_rank_gets_the_same_report(ddp: list[dict[str, Any]]) -> None:
    first, second = (rank["joint"] for rank in ddp)
    assert first == second
    assert first["ranks"] == 2 and first["passes"] == 2 * _jobs.STEPS
    assert ddp[0]["local"] != ddp[1]["local"]


def test_a_unit_is_dead_only_if_it_is_dead_on_every_rank(ddp: list[dict[str, Any]]) -> None:
    # Each rank alone: two of three units never active; together only unit 2 is dead.
    for rank in ddp:
        assert dead_fraction(rank["local"]) == pytest.approx(2 / 3)
        assert "dead_relu" in {finding["kind"] for finding in rank["local"]["findings"]}
        assert dead_fraction(rank["joint"]) == pytest.approx(1 / 3)
        assert "dead_relu" not in {finding["kind"] for finding in rank["joint"]["findings"]}


def test_ddp_gradient_norms_are_those_of_the_synchronised_gradient(
    ddp: list[dict[str, Any]],
) -> None:
    expected = ddp[0]["expected"]
    # The reduced gradient is a single process's on both batches, not either rank's own.
    assert expected["reduced"] != pytest.approx(expected["own"][0], rel=0.05)
    for rank in ddp:
        assert layer_values(rank["joint"], "grad_norm") == pytest.approx(
            expected["reduced"], rel=1e-5
        )
        assert layer_values(rank["joint"], "weight_norm") == pytest.approx(
            expected["weights"], rel=1e-6
        )
        assert step_norms(rank["joint"]) == pytest.approx(
            [expected["step_norm"]] * _jobs.STEPS, rel=1e-5
        )


def test_a_snapshot_combines_the_ranks_window(ddp: list[dict[str, Any]]) -> None:
    windows = [rank["window"] for rank in ddp]
    assert windows[0] == windows[1]
    assert windows[0]["ranks"] == 2 and windows[0]["passes"] == 2
    assert len(windows[0]["steps"]) == 1
    assert dead_fraction(windows[0]) == pytest.approx(1 / 3)


def test_the_arrival_marks_leave_the_store(ddp: list[dict[str, Any]]) -> None:
    assert not any(left for rank in ddp for left in rank["marks_left"])


def test_the_local_report_is_this_ranks_own(ddp: list[dict[str, Any]]) -> None:
    for rank in ddp:
        assert rank["local"]["ranks"] == 1 and rank["local"]["passes"] == _jobs.STEPS


def test_the_rendered_report_says_how_many_ranks_it_covers(ddp: list[dict[str, Any]]) -> None:
    assert "pass(es) on 2 ranks" in ddp[0]["rendered"]


def test_report_on_one_rank_only_fails_within_its_timeout(tmp_path: Path) -> None:
    first, second = run_ranks(_jobs.one_rank_reports_job, tmp_path, timeout=60)
    assert "ranks [1]" in first["error"] and "report(local=True)" in first["error"]
    assert first["local_passes"] == second["local_passes"] == 1
    assert "error" not in second
    assert first["ranks_after"] == second["ranks_after"] == 2


def test_fsdp2_norms_come_from_the_shards(fsdp: list[dict[str, Any]]) -> None:
    expected = fsdp[0]["expected"]
    first, second = (rank["joint"] for rank in fsdp)
    assert first == second and first["ranks"] == 2
    assert layer_values(first, "grad_norm") == pytest.approx(expected["reduced"], rel=1e-5)
    assert layer_values(first, "weight_norm") == pytest.approx(expected["weights"], rel=1e-6)
    assert step_norms(first) == pytest.approx([expected["step_norm"]] * _jobs.STEPS, rel=1e-5)
    assert dead_fraction(first) == pytest.approx(1 / 3)
    assert first["findings"] == [] and first["probe_errors"] == []


def test_a_local_fsdp2_report_says_its_norms_are_of_this_ranks_shards(
    fsdp: list[dict[str, Any]],
) -> None:
    expected = fsdp[0]["expected"]
    # Each rank's shard of the first weight is part of it: smaller than the whole.
    for rank in fsdp:
        local = rank["local"]
        assert local["layers"][0]["weight_norm"] < expected["weights"][0]
        assert any("this rank's shards" in note for note in local["unavailable"])


def test_ddp_accumulation_measures_the_gradient_the_optimizer_gets(tmp_path: Path) -> None:
    first, _ = run_ranks(_jobs.accumulation_job, tmp_path)
    report, expected = first["joint"], first["expected"]
    # Two equal micro-batches: the reduced .grad holds twice one pass's average, read once
    # (the no_sync() pass is not reduced, so not read); every micro-batch is a pass.
    assert layer_values(report, "grad_norm") == pytest.approx(
        [2 * norm for norm in expected["reduced"]], rel=1e-5
    )
    assert report["passes"] == 4
    assert [layer["passes"] for layer in report["layers"]] == [1, 1]


def test_ranks_that_watch_different_models_are_told_so_alike(tmp_path: Path) -> None:
    first, second = run_ranks(_jobs.different_models_job, tmp_path)
    assert first["error"] == second["error"]
    assert "same model on every rank" in first["error"] and "local=True" in first["error"]


def test_ddp_gradients_as_bucket_views_are_read_every_step(tmp_path: Path) -> None:
    first, _ = run_ranks(_jobs.bucket_view_job, tmp_path)
    report, expected = first["joint"], first["expected"]
    assert [layer["passes"] for layer in report["layers"]] == [_jobs.STEPS, _jobs.STEPS]
    assert layer_values(report, "grad_norm") == pytest.approx(expected["reduced"], rel=1e-5)


def test_hsdp_shards_held_by_several_ranks_count_once(tmp_path: Path) -> None:
    # Mesh (2 replicas x 1 shard): both ranks hold the whole of every shard.
    first, second = run_ranks(_jobs.hsdp_job, tmp_path)
    report, expected = first["joint"], first["expected"]
    assert report == second["joint"]
    assert layer_values(report, "grad_norm") == pytest.approx(expected["reduced"], rel=1e-5)
    assert layer_values(report, "weight_norm") == pytest.approx(expected["weights"], rel=1e-6)
    assert step_norms(report) == pytest.approx([expected["step_norm"]] * _jobs.STEPS, rel=1e-5)
