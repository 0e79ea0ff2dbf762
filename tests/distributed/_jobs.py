"""The jobs the distributed tests run on each rank (importable by spawned processes).

Every job knows every rank's data, so it can compute the exact combined answer from a
plain copy of the model, and returns it beside what gradcheckup reported.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import gradcheckup as gcu

# Unit 0 of the first layer is active for x[0] > 0, unit 1 for x[1] > 0, unit 2 never:
# rank 0's batch keeps unit 0 alive and kills unit 1, rank 1's the other way round.
BATCHES = {
    0: torch.tensor([[1.0, -1.0], [2.0, -0.5]]),
    1: torch.tensor([[-1.0, 1.0], [-0.5, 3.0]]),
}
TARGETS = {0: torch.tensor([[0.5], [-1.0]]), 1: torch.tensor([[2.0], [0.0]])}
STEPS = 3


def relu_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    return model


def loss_of(model: nn.Module, rank: int) -> torch.Tensor:
    return ((model(BATCHES[rank]) - TARGETS[rank]) ** 2).mean()


def local_gradients(reference: nn.Module, rank: int) -> list[torch.Tensor]:
    """Per parameter: the gradient rank ``rank`` computes before any reduction."""
    return list(torch.autograd.grad(loss_of(reference, rank), list(reference.parameters())))


def layer_norm(gradients: list[torch.Tensor], layer: int) -> float:
    """The norm of layer ``layer``'s (weight, bias) gradients."""
    weight, bias = gradients[2 * layer], gradients[2 * layer + 1]
    return float(torch.sqrt(weight.square().sum() + bias.square().sum()))


def expected_numbers(reference: nn.Module, world: int) -> dict[str, Any]:
    """What a report of the whole job must say, from a plain copy of the model."""
    per_rank = [local_gradients(reference, rank) for rank in range(world)]
    mean = [torch.stack(parts).mean(0) for parts in zip(*per_rank, strict=True)]
    return {
        # RMS over every rank's passes of each pass's local norm (all passes alike).
        "combined": [
            (sum(layer_norm(g, layer) ** 2 for g in per_rank) / world) ** 0.5 for layer in (0, 1)
        ],
        "own": [[layer_norm(g, layer) for layer in (0, 1)] for g in per_rank],
        "reduced": [layer_norm(mean, layer) for layer in (0, 1)],
        "step_norm": float(torch.sqrt(sum(g.square().sum() for g in mean))),
        "weights": [
            float(
                torch.sqrt(
                    reference[i].weight.detach().square().sum()
                    + reference[i].bias.detach().square().sum()
                )
            )
            for i in (0, 2)
        ],
    }


def rendered(report: gcu.Report) -> str:
    from rich.console import Console

    console = Console(record=True, width=120, file=io.StringIO())
    gcu.render(report, console)
    return console.export_text()


def dumped(report: gcu.Report) -> dict[str, Any]:
    return report.model_dump(mode="json")


def ddp_job(rank: int, world: int) -> dict[str, Any]:
    """DDP: three steps, a joint report, a snapshot and a local report on every rank."""
    model = relu_model()
    reference = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.0)  # weights stay: every pass alike
    with gcu.watch(ddp, optimizer) as monitor:
        for step in range(STEPS):
            loss_of(ddp, rank).backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 0:
                window = monitor.snapshot()
    joint = monitor.report()
    local = monitor.report(local=True)
    store = dist.distributed_c10d._get_default_store()
    dist.barrier()
    return {
        "marks_left": [
            store.check([f"gradcheckup/report/{call}/{r}"]) for call in (0, 1) for r in range(world)
        ],
        "joint": dumped(joint),
        "local": dumped(local),
        "window": dumped(window),
        "rendered": rendered(joint),
        "expected": expected_numbers(reference, world),
    }


def one_rank_reports_job(rank: int, world: int) -> dict[str, Any]:
    """Only rank 0 calls report(): it must fail within its timeout, not hang."""
    model = relu_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    with gcu.watch(ddp) as monitor:
        loss_of(ddp, rank).backward()
    result: dict[str, Any] = {"local_passes": monitor.report(local=True).passes}
    if rank == 0:
        try:
            monitor.report(timeout=1.0)
        except gcu.RanksDidNotJoin as error:
            result["error"] = str(error)
    dist.barrier()
    # The failed call left nothing behind: the next reports of both ranks pair up.
    result["ranks_after"] = monitor.report(timeout=60.0).ranks
    return result


def fsdp_job(rank: int, world: int) -> dict[str, Any]:
    """FSDP2: sharded parameters; norms from the shards, with clipping and a step."""
    from torch.distributed.fsdp import fully_shard

    model = relu_model()
    reference = copy.deepcopy(model)
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gcu.watch(model, optimizer) as monitor:
        for _ in range(STEPS):
            loss_of(model, rank).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
            optimizer.step()
            optimizer.zero_grad()
    return {
        "joint": dumped(monitor.report()),
        "local": dumped(monitor.report(local=True)),
        "expected": expected_numbers(reference, world),
    }


def accumulation_job(rank: int, world: int) -> dict[str, Any]:
    """DDP with gradient accumulation: the first micro-batch under no_sync()."""
    model = relu_model()
    reference = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    with gcu.watch(ddp) as monitor:
        with ddp.no_sync():
            loss_of(ddp, rank).backward()
        loss_of(ddp, rank).backward()
    expected = expected_numbers(reference, world)
    return {"joint": dumped(monitor.report()), "expected": expected}


def different_models_job(rank: int, world: int) -> dict[str, Any]:
    """Each rank watches a model of its own (as in pipeline parallelism)."""
    model = relu_model() if rank == 0 else nn.Linear(2, 1)
    with gcu.watch(model) as monitor:
        model(BATCHES[rank]).sum().backward()
    try:
        monitor.report()
    except ValueError as error:
        return {"error": str(error)}
    return {}


def bucket_view_job(rank: int, world: int) -> dict[str, Any]:
    """DDP whose gradients are views into its buckets (the same tensors every step)."""
    model = relu_model()
    reference = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.0)
    with gcu.watch(ddp, optimizer) as monitor:
        for _ in range(STEPS):
            loss_of(ddp, rank).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
    return {"joint": dumped(monitor.report()), "expected": expected_numbers(reference, world)}


def hsdp_job(rank: int, world: int) -> dict[str, Any]:
    """HSDP: FSDP2 on a 2-d mesh whose replicate dimension spans the ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
    model = relu_model()
    reference = copy.deepcopy(model)
    for module in (model[0], model[2], model):
        fully_shard(module, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with gcu.watch(model, optimizer) as monitor:
        for _ in range(STEPS):
            loss_of(model, rank).backward()
            optimizer.step()
            optimizer.zero_grad()
    return {"joint": dumped(monitor.report()), "expected": expected_numbers(reference, world)}
