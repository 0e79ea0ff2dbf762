"""What logging gradients to W&B / TensorBoard costs: ``wandb.watch(log="gradients")``
against ``gcu.watch(model)`` plus ``log_report`` every N steps, side by side in one run.

    python benchmarks/loggers.py                         # ~4 min on 2 CPU cores
    python benchmarks/loggers.py --log-every 100 --rounds 9 --only mlp

For each model, every variant runs ``--log-every`` timed training steps per round (one
log per round), variants interleaved round by round so that machine noise hits all
alike. Two ratios to the plain loop per variant: ``step`` compares median step times
(what the hooks cost on every step), ``mean`` compares the median over rounds of the
mean step time (that plus the logging every N steps: histograms, report, figure).
W&B runs offline in a temporary folder, TensorBoard writes there too. Variants:

- ``wandb.watch``: ``wandb.watch(model, log="gradients", log_freq=N)``: a histogram of
  every parameter's gradient every N steps;
- ``gcu+wandb``: ``gcu.watch(model)`` and ``gradcheckup.integrations.wandb.log_report``
  of ``monitor.snapshot()`` every N steps (scalars, findings table, figure); ``-fig``:
  without the figure;
- ``gcu+tb``, ``gcu+tb -fig``: the same with a TensorBoard ``SummaryWriter``.

Watched variants are timed in steady state, after ``Config.full_passes`` untimed steps
(every variant runs as many untimed steps first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead import Loop, _labels, mlp

import gradcheckup as gcu
from gradcheckup.integrations import tensorboard as gcu_tensorboard
from gradcheckup.integrations import wandb as gcu_wandb
from tests import models

VARIANTS = ["plain", "wandb.watch", "gcu+wandb", "gcu+wandb -fig", "gcu+tb", "gcu+tb -fig"]


def cases() -> Iterator[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """(name, model, inputs, targets): a small MLP and the ResNet-style CNN of the tests."""
    yield "mlp 8x256 relu", mlp(8, 256, nn.ReLU), torch.randn(128, 256), _labels(128, 10)
    yield "resnet (bn)", models.SmallResNet(), torch.randn(16, 3, 16, 16), _labels(16, 10)


class Loggers:
    """One offline W&B run and one SummaryWriter for the whole benchmark, and the global
    step they log at (W&B needs it to grow across variants)."""

    def __init__(self, stack: ExitStack, folder: str) -> None:
        import wandb
        from torch.utils.tensorboard import SummaryWriter

        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=folder)
        self.wandb = wandb
        self.run = wandb.init(project="gradcheckup-benchmark", dir=folder, mode="offline")
        stack.callback(self.run.finish)
        self.writer = stack.enter_context(SummaryWriter(Path(folder) / "tb"))
        self.step = 0

    def every(self, interval: int, log: Callable[[int], None]) -> Callable[[], None]:
        """An after-backward callback that advances the global step and calls ``log`` on
        every ``interval``-th step."""

        def after_backward() -> None:
            self.step += 1
            if self.step % interval == 0:
                log(self.step)

        return after_backward


def _snapshot(monitor: gcu.Monitor) -> gcu.Report:
    """The window since the last snapshot where ``Monitor.snapshot`` exists, else the
    report since the start (the same one device fetch)."""
    snapshot = getattr(monitor, "snapshot", None)
    return snapshot() if snapshot is not None else monitor.report()


def run_variant(loop: Loop, loggers: Loggers, variant: str, steps: int) -> list[float]:
    """Untimed warm-up steps, then ``steps`` timed ones with the variant's logging."""
    warmup = gcu.Config().full_passes
    if variant == "plain":
        loop.timed(warmup)
        return loop.timed(steps)
    if variant == "wandb.watch":
        loggers.run.watch(loop.model, log="gradients", log_freq=steps)
        loop.timed(warmup)
        # The histograms are committed with the next log call, as in a real loop.
        commit = loggers.every(steps, lambda step: loggers.run.log({"step": step}, step=step))
        try:
            return loop.timed(steps, commit)
        finally:
            loggers.run.unwatch(loop.model)
    adapter = gcu_wandb if "wandb" in variant else gcu_tensorboard
    target = loggers.run if "wandb" in variant else loggers.writer
    with gcu.watch(loop.model) as monitor:
        loop.timed(warmup)
        log = loggers.every(
            steps,
            lambda step: adapter.log_report(
                target, _snapshot(monitor), step, figure="-fig" not in variant
            ),
        )
        return loop.timed(steps, log)


def measure_model(
    name: str, loop: Loop, loggers: Loggers, rounds: int, steps: int
) -> dict[str, Any]:
    """All variants of one model, interleaved; ratios to the plain loop."""
    loop.timed(3)  # warm-up
    times: dict[str, list[list[float]]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            times[variant].append(run_variant(loop, loggers, variant, steps))
    step = {
        variant: statistics.median(time for timed in per_round for time in timed)
        for variant, per_round in times.items()
    }
    mean = {
        variant: statistics.median(statistics.fmean(timed) for timed in per_round)
        for variant, per_round in times.items()
    }
    return {
        "model": name,
        "plain_ms": step["plain"] * 1e3,
        "step": {v: step[v] / step["plain"] for v in VARIANTS[1:]},
        "mean": {v: mean[v] / mean["plain"] for v in VARIANTS[1:]},
    }


def print_table(rows: list[dict[str, Any]], steps: int) -> None:
    print(f"\nlog every {steps} steps; ratio to the plain loop: median step / mean step")
    print(f"{'model':16} {'plain ms':>8} " + " ".join(f"{v:>16}" for v in VARIANTS[1:]))
    for row in rows:
        cells = " ".join(f"{row['step'][v]:>7.2f}x /{row['mean'][v]:>6.2f}x" for v in VARIANTS[1:])
        print(f"{row['model']:16} {row['plain_ms']:8.2f} {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant")
    parser.add_argument("--log-every", type=int, default=50, help="N: steps per log and round")
    parser.add_argument("--only", nargs="*", help="models whose name contains a word")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, cpu, threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds x {args.log_every} steps per variant, interleaved"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        loggers = Loggers(stack, folder)
        for name, model, x, y in cases():
            if args.only and not any(word in name for word in args.only):
                continue
            torch.manual_seed(0)
            loop = Loop(model, x, y, torch.device("cpu"))
            rows.append(measure_model(name, loop, loggers, args.rounds, args.log_every))
            print(f"{name}: done", flush=True)
    print_table(rows, args.log_every)


if __name__ == "__main__":
    main()
