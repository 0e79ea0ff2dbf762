"""Run a job on two real processes: gloo on loopback, spawned by the test, time-bounded."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Job = Callable[[int, int], dict[str, Any]]


def run_ranks(
    job: Job, folder: Path, world: int = 2, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Run ``job(rank, world)`` in ``world`` spawned processes of one gloo process group;
    each returns a JSON-able dict. Fails the test on a timeout or an exception in a rank
    (with that rank's traceback)."""
    context = mp.get_context("spawn")
    processes = [
        context.Process(target=_rank_main, args=(job, rank, world, str(folder)), daemon=True)
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    if hung:
        pytest.fail(f"ranks {hung} did not finish within {timeout} s")
    failed = [rank for rank, process in enumerate(processes) if process.exitcode != 0]
    if failed:
        errors = [_read(folder / f"rank{rank}.error", "(no traceback)") for rank in failed]
        pytest.fail(
            "\n".join(f"rank {r} failed:\n{e}" for r, e in zip(failed, errors, strict=True))
        )
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(world)]


def _read(path: Path, default: str) -> str:
    return path.read_text() if path.exists() else default


def _rank_main(job: Job, rank: int, world: int, folder: str) -> None:
    out = Path(folder)
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world
        )
        try:
            (out / f"rank{rank}.json").write_text(json.dumps(job(rank, world)))
            dist.barrier()  # no rank tears gloo down while another still talks to it
        finally:
            dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    # Interpreter shutdown can abort in gloo's thread destructors ("terminate called
    # without an active exception"): the job is done, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
