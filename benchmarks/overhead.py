"""What watching costs: variants of one training step measured side by side in one run.

    python benchmarks/overhead.py                    # step overhead table (~3 min on 2 cores)
    python benchmarks/overhead.py --scaling          # check()/report cost, 10 -> 10,000 layers
    python benchmarks/overhead.py --device cuda --json out.json
    python benchmarks/overhead.py --only mlp lstm --rounds 9

Step overhead: for each reference model, every variant runs ``--steps`` timed training
steps per round, variants interleaved round by round so that machine noise hits all
alike; the table shows the median step time of the plain loop and each variant's ratio
to it. Watched variants are timed in steady state: each round opens a watch and runs
``Config.full_passes`` untimed steps first (the passes observed in full), then the timed
steps, which the forward-pass probes sample every ``sample_every``-th. Variants:

- ``plain A/A``: the plain loop again, timed as a variant: how far from 1.00x noise
  alone moves a ratio in this run;
- ``item loop``: the peer baseline, ``p.grad.norm().item()`` per parameter after backward;
- ``foreach``: the floor for per-parameter norms, one ``torch._foreach_norm`` and one sync;
- ``watch``: ``gcu.watch(model)`` with the defaults; ``+optim``: with the optimizer too;
- ``params``: ``Config(forward_probes=())``, parameter gradients only;
- ``signal``/``activ``/``time``/``all``: one forward probe set (or all) on every pass
  (``sample_every=1``), to show what each costs when it runs.

Also printed: ``report()`` time after the rounds, ``check()`` time, and memory: on CUDA
the peak allocated by a plain step and a watched one; everywhere, the bytes the monitor
keeps between steps (its device vectors), which must not grow with steps.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradcheckup as gcu
from tests import models
from tests.helpers import bytes_kept_by

WATCH_VARIANTS: dict[str, dict[str, Any]] = {
    "watch": {},
    "+optim": {},
    "params": {"forward_probes": ()},
    "signal": {"forward_probes": ("signal",), "sample_every": 1},
    "activ": {"forward_probes": ("activations",), "sample_every": 1},
    "time": {"forward_probes": ("time",), "sample_every": 1},
    "all": {"sample_every": 1},
}
VARIANTS = ["plain", "plain A/A", "item loop", "foreach", *WATCH_VARIANTS]


def mlp(depth: int, width: int, activation: type[nn.Module]) -> nn.Sequential:
    """``depth`` Linear+activation blocks of ``width`` units and a 10-way head."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), activation()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def cases() -> Iterator[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """(name, model, inputs, targets) of the reference models."""
    yield "mlp 20x512 relu", mlp(20, 512, nn.ReLU), torch.randn(128, 512), _labels(128, 10)
    yield "mlp 8x256 tanh", mlp(8, 256, nn.Tanh), torch.randn(128, 256), _labels(128, 10)
    yield "resnet (bn)", models.SmallResNet(), torch.randn(32, 3, 32, 32), _labels(32, 10)
    yield (
        "lstm 2 layers",
        models.RecurrentClassifier("lstm"),
        torch.randint(0, 100, (32, 20)),
        _labels(32, 5),
    )
    yield (
        "transformer 4 layers",
        models.TransformerClassifier(),
        torch.randint(0, 100, (32, 32)),
        _labels(32, 5),
    )
    yield "tiny mlp 6x128", models.he_relu_mlp(depth=6), torch.randn(256, 32), _labels(256, 10)


def _labels(batch: int, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, (batch,))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Loop:
    """One model's training step, and the variants' extra work around it."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device):
        self.model, self.x, self.y, self.device = (
            model.to(device),
            x.to(device),
            y.to(device),
            device,
        )
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sink = 0.0

    def step(self, after_backward: Callable[[], None] | None = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        if after_backward is not None:
            after_backward()
        self.optimizer.step()

    def item_loop(self) -> None:
        self.sink += sum(p.grad.norm().item() for p in self.params)

    def foreach(self) -> None:
        norms = torch._foreach_norm([p.grad for p in self.params])
        self.sink += sum(torch.stack(norms).tolist())

    def timed(self, steps: int, after_backward: Callable[[], None] | None = None) -> list[float]:
        times = []
        for _ in range(steps):
            _sync(self.device)
            start = time.perf_counter()
            self.step(after_backward)
            _sync(self.device)
            times.append(time.perf_counter() - start)
        return times


def run_variant(loop: Loop, variant: str, steps: int) -> tuple[list[float], gcu.Monitor | None]:
    """Timed steps of one variant (watched variants after their full passes)."""
    if variant in ("plain", "plain A/A"):
        return loop.timed(steps), None
    if variant == "item loop":
        return loop.timed(steps, loop.item_loop), None
    if variant == "foreach":
        return loop.timed(steps, loop.foreach), None
    config = gcu.Config(**WATCH_VARIANTS[variant])
    optimizer = loop.optimizer if variant == "+optim" else None
    with gcu.watch(loop.model, optimizer=optimizer, config=config) as monitor:
        loop.timed(config.full_passes)
        return loop.timed(steps), monitor


def peak_step_memory(loop: Loop, watched: bool) -> int | None:
    """CUDA only: peak bytes allocated during one step (above what was allocated before)."""
    if loop.device.type != "cuda":
        return None
    context = gcu.watch(loop.model, config=gcu.Config(sample_every=1)) if watched else nullcontext()
    with context:
        loop.step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loop.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before


def measure_model(
    name: str, loop: Loop, rounds: int, steps: int, variants: list[str]
) -> dict[str, Any]:
    """All variants of one model, interleaved; ratios of medians to the plain step."""
    for _ in range(3):
        loop.step()  # warm-up
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    monitor = None
    for _ in range(rounds):
        for variant in variants:
            measured, watched = run_variant(loop, variant, steps)
            times[variant] += measured
            monitor = watched if variant == "watch" else monitor
    plain = statistics.median(times["plain"])
    row: dict[str, Any] = {
        "model": name,
        "plain_ms": plain * 1e3,
        "ratios": {v: statistics.median(times[v]) / plain for v in variants if v != "plain"},
    }
    if monitor is not None:
        start = time.perf_counter()
        monitor.report()
        row["report_ms"] = (time.perf_counter() - start) * 1e3
        row["retained_bytes"] = bytes_kept_by(monitor)
    start = time.perf_counter()
    gcu.check(loop.model, loop.x, target=loop.y)
    _sync(loop.device)
    row["check_ms"] = (time.perf_counter() - start) * 1e3
    row["peak_plain"] = peak_step_memory(loop, watched=False)
    row["peak_watched"] = peak_step_memory(loop, watched=True)
    return row


def print_row(row: dict[str, Any], variants: list[str]) -> None:
    ratios = " ".join(f"{row['ratios'][v]:>8.2f}x" for v in variants if v != "plain")
    memory = ""
    if row.get("peak_plain") is not None:
        memory = f" peak {row['peak_plain'] / 2**20:.1f}->{row['peak_watched'] / 2**20:.1f} MiB"
    print(
        f"{row['model']:21} {row['plain_ms']:8.2f} {ratios} {row.get('report_ms', 0):9.1f}"
        f" {row['check_ms']:8.1f} {row.get('retained_bytes', 0) / 1024:8.1f}{memory}",
        flush=True,
    )


def step_overhead(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    chosen = args.variants or VARIANTS
    variants = ["plain", *(v for v in VARIANTS if v != "plain" and v in chosen)]
    header = " ".join(f"{v:>9}" for v in variants if v != "plain")
    print(
        f"torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds x {args.steps} steps per variant, interleaved; "
        "ratio = median step / median plain step"
    )
    print(f"{'model':21} {'plain ms':>8} {header} {'report ms':>9} {'check ms':>8} {'kept KiB':>8}")
    rows = []
    for name, model, x, y in cases():
        if args.only and not any(word in name for word in args.only):
            continue
        torch.manual_seed(0)
        row = measure_model(name, Loop(model, x, y, device), args.rounds, args.steps, variants)
        print_row(row, variants)
        rows.append(row)
    return rows


def _chain(layers: int) -> nn.Sequential:
    """``layers`` small Linear+ReLU blocks: many modules, little arithmetic."""
    blocks: list[nn.Module] = []
    for _ in range(layers // 2):
        blocks += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*blocks)


def scaling(device: torch.device, rounds: int) -> list[dict[str, Any]]:
    """check(), report() and rendering against a plain forward+backward, 10 -> 10,000 modules.

    Each size runs ``rounds`` rounds of one plain pass then one check(), interleaved so
    that machine noise hits both alike; the table shows medians (render and JSON: one
    report of the size).
    """
    print(f"{rounds} rounds per size, medians; check() includes its report")
    print("modules  plain ms  check ms  ratio  render ms  json ms")
    rows = []
    for modules in (10, 100, 1000, 10000):
        row = _scaling_row(modules, device, rounds)
        print(
            f"{modules:7d} {row['plain_ms']:9.1f} {row['check_ms']:9.1f} {row['ratio']:6.2f}x "
            f"{row['render_ms']:10.1f} {row['json_ms']:8.1f}",
            flush=True,
        )
        rows.append(row)
    return rows


def _scaling_row(modules: int, device: torch.device, rounds: int) -> dict[str, Any]:
    """One size of the scaling curve: medians of plain and check() times, in ms."""
    from rich.console import Console

    from gradcheckup.rendering import render

    torch.manual_seed(0)
    model = _chain(modules).to(device)
    x = torch.randn(8, 16, device=device)

    def plain_pass() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    plain_pass()  # warm-up
    report = gcu.check(model, x)
    plain_times, check_times = [], []
    for _ in range(rounds):
        plain_times.append(_timed(device, plain_pass))
        check_times.append(_timed(device, lambda: gcu.check(model, x)))
    plain, checked = statistics.median(plain_times), statistics.median(check_times)
    return {
        "modules": modules,
        "plain_ms": plain * 1e3,
        "check_ms": checked * 1e3,
        "ratio": checked / plain,
        "render_ms": _timed(device, lambda: render(report, Console(file=io.StringIO(), width=120)))
        * 1e3,
        "json_ms": _timed(device, report.model_dump_json) * 1e3,
    }


def _timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds that ``work()`` takes, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per variant")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--only", nargs="*", help="models whose name contains a word")
    parser.add_argument("--variants", nargs="*", help="variants to run (plain always runs)")
    parser.add_argument("--scaling", action="store_true", help="the 10 -> 10,000 modules curve")
    parser.add_argument(
        "--scaling-rounds", type=int, default=5, help="rounds per size for --scaling"
    )
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if args.scaling:
        result["scaling"] = scaling(device, args.scaling_rounds)
    else:
        result["overhead"] = step_overhead(args, device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
