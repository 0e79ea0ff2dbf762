"""Overhead of watching a training loop, measured side by side in one run.

    python benchmarks/overhead.py [--device cuda] [--rounds 6]

For each model: median step time of the plain loop, and the ratio to it of the same
loop under gcu.watch(model) and under gcu.watch(model, optimizer=...), interleaved in
rounds so that machine noise hits all alike; plus monitor.report() and gcu.check() time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradcheckup as gcu
from tests import models


def _cases(device: torch.device):
    yield (
        "he_relu_mlp (6x128)",
        models.he_relu_mlp(depth=6),
        torch.randn(256, 32),
        torch.randint(0, 10, (256,)),
    )
    yield (
        "small_resnet",
        models.SmallResNet(),
        torch.randn(32, 3, 32, 32),
        torch.randint(0, 10, (32,)),
    )
    yield (
        "transformer (4 layers)",
        models.TransformerClassifier(),
        torch.randint(0, 100, (32, 32)),
        torch.randint(0, 5, (32,)),
    )
    yield (
        "lstm (2 layers)",
        models.RecurrentClassifier("lstm"),
        torch.randint(0, 100, (32, 20)),
        torch.randint(0, 5, (32,)),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _timed_steps(model, optimizer, x, y, device, count: int) -> list[float]:
    times = []
    for _ in range(count):
        _sync(device)
        start = time.perf_counter()
        _step(model, optimizer, x, y)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of 5 steps per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}, {args.rounds} x 5 steps per variant, "
        f"threads {torch.get_num_threads()}; median step time, variants interleaved per round"
    )
    print(
        f"{'model':24} {'plain ms':>9} {'watch':>7} {'+optim':>7} {'report ms':>10} {'check ms':>9}"
    )
    for name, model, x, y in _cases(device):
        model, x, y = model.to(device), x.to(device), y.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        _timed_steps(model, optimizer, x, y, device, 3)  # warm-up
        plain, watched, with_optimizer = [], [], []
        for _ in range(args.rounds):
            plain += _timed_steps(model, optimizer, x, y, device, 5)
            with gcu.watch(model) as monitor:
                watched += _timed_steps(model, optimizer, x, y, device, 5)
            with gcu.watch(model, optimizer=optimizer):
                with_optimizer += _timed_steps(model, optimizer, x, y, device, 5)
        start = time.perf_counter()
        monitor.report()
        report_time = time.perf_counter() - start
        start = time.perf_counter()
        gcu.check(model, x, target=y)
        _sync(device)
        check_time = time.perf_counter() - start
        p = statistics.median(plain)
        w, o = statistics.median(watched) / p, statistics.median(with_optimizer) / p
        print(
            f"{name:24} {p * 1e3:9.2f} {w:6.2f}x {o:6.2f}x "
            f"{report_time * 1e3:10.2f} {check_time * 1e3:9.2f}"
        )


if __name__ == "__main__":
    main()
