"""Overhead of watching a training loop, measured side by side in one run.

    python benchmarks/overhead.py [--device cuda] [--steps 30]

For each model: median step time of the plain loop and of the same loop under
gcu.watch(), interleaved (plain, watched, plain, ...) so that machine noise hits both
alike, and their ratio; plus the time of monitor.report() and of gcu.check().
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}, {args.steps} steps each, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"{'model':24} {'plain ms':>9} {'watched ms':>11} {'ratio':>6} "
        f"{'report ms':>10} {'check ms':>9}"
    )
    for name, model, x, y in _cases(device):
        model, x, y = model.to(device), x.to(device), y.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(3):
            _step(model, optimizer, x, y)
        plain, watched = [], []
        with gcu.watch(model) as monitor:
            pass  # attach/detach once to warm imports
        for _ in range(args.steps):
            _sync(device)
            start = time.perf_counter()
            _step(model, optimizer, x, y)
            _sync(device)
            plain.append(time.perf_counter() - start)
            with gcu.watch(model) as monitor:
                _sync(device)
                start = time.perf_counter()
                _step(model, optimizer, x, y)
                _sync(device)
                watched.append(time.perf_counter() - start)
        start = time.perf_counter()
        monitor.report()
        report_time = time.perf_counter() - start
        start = time.perf_counter()
        gcu.check(model, x, target=y)
        _sync(device)
        check_time = time.perf_counter() - start
        p, w = statistics.median(plain) * 1e3, statistics.median(watched) * 1e3
        print(
            f"{name:24} {p:9.2f} {w:11.2f} {w / p:6.2f} "
            f"{report_time * 1e3:10.2f} {check_time * 1e3:9.2f}"
        )


if __name__ == "__main__":
    main()
