"""What every example in the gallery shares: its command line, how a report is shown,
the numbers read off a report, and the one kind of figure they draw.

Not an example itself. The examples import it as ``_gallery`` (Python puts a script's own
folder on ``sys.path``, and ``tests/test_examples.py`` does the same).
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import gradcheckup as gcu
from gradcheckup.report import LayerStats, Report, format_number

# One label -> (x values, y values) per line of a figure.
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def arguments(description: str | None, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line every example takes: ``--plot DIR`` and ``--brief``."""
    parser = argparse.ArgumentParser(
        description=(description or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--plot", metavar="DIR", type=Path, help="save the example's figure (PNG) in DIR"
    )
    parser.add_argument(
        "--brief", action="store_true", help="print only the findings, not the whole reports"
    )
    return parser.parse_args(argv)


def show(console: Console, title: str, report: Report, why: str, brief: bool = False) -> None:
    """Print one model's report under ``title``, then the sentence that explains it."""
    console.rule(title)
    if brief:
        verdict = "HEALTHY" if report.ok else "UNHEALTHY"
        console.print(f"gradcheckup: {verdict}", highlight=False)
        hinted = set()
        for finding in report.findings:
            line = f"  [{finding.severity.value}] {finding.kind.value} at {finding.where}: "
            console.print(line + finding.message, markup=False, highlight=False)
            if finding.hint not in hinted:
                hinted.add(finding.hint)
                console.print(f"      fix: {finding.hint}", markup=False, highlight=False)
    else:
        report.print(console)
    console.print(f"[bold]Why:[/bold] {why}\n")


def kinds(report: Report, at_least: str = "warning") -> set[str]:
    """The kinds of the report's findings of severity ``at_least`` or worse."""
    return {
        finding.kind.value for finding in report.findings if finding.severity.at_least(at_least)
    }


def summary(report: Report, with_values: bool = True) -> str:
    """One short line: each finding as ``kind (severity) value``, or 'no findings'."""
    found = [
        f"{finding.kind.value} ({finding.severity.value})"
        + (f" {format_number(finding.value)}" if with_values else "")
        for finding in report.findings
    ]
    return "; ".join(found) or "no findings"


def forward_layers(report: Report, module_type: str | None = None) -> list[LayerStats]:
    """The layers that ran, in forward order; only those of ``module_type`` if given."""
    ran = sorted(
        (layer for layer in report.layers if layer.depth_index is not None),
        key=lambda layer: layer.depth_index or 0,
    )
    return [layer for layer in ran if module_type in (None, layer.module_type)]


def layer_signals(report: Report, module_type: str | None = None) -> list[float]:
    """The backward signal reaching each layer (``LayerStats.unit_signal``), in forward
    order; only layers of ``module_type`` (e.g. ``"Linear"``) if given.

    For ``(batch, features)`` outputs it is the norm of dL/d(output) over the batch; the
    depth judgement compares its two ends.
    """
    return [layer.unit_signal or 0.0 for layer in forward_layers(report, module_type)]


def signal_series(
    reports: Mapping[str, Report], module_type: str | None = None
) -> dict[str, tuple[list[float], list[float]]]:
    """Each report's ``layer_signals`` against the layer's position, for ``line_figure``."""
    series = {}
    for label, report in reports.items():
        signals = layer_signals(report, module_type)
        series[label] = ([float(index) for index in range(len(signals))], signals)
    return series


def labelled_batch(size: int, features: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch (its own seeded generator): N(0, 1) inputs and class labels."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(size, features, generator=generator)
    return inputs, torch.randint(0, classes, (size,), generator=generator)


def check_each(
    models: Mapping[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor
) -> dict[str, Report]:
    """``gcu.check(model, inputs, target=labels, loss_fn=F.cross_entropy)`` for each model:
    one forward and backward pass, the model left as it was."""
    return {
        name: gcu.check(model, inputs, target=labels, loss_fn=F.cross_entropy)
        for name, model in models.items()
    }


def per_layer_factors(signals: Sequence[float]) -> list[float]:
    """How much the backward signal shrinks (< 1) or grows (> 1) going back one layer:
    ``signals[i] / signals[i + 1]``."""
    return [earlier / later for earlier, later in itertools.pairwise(signals)]


def geometric_mean(values: Sequence[float]) -> float:
    """The typical factor of a product of factors: exp(mean(log(values)))."""
    return math.exp(sum(math.log(value) for value in values) / len(values))


def relu_gain(fan_in: int, weight_variance: float) -> float:
    """Expected factor per layer of the backward signal in a ReLU network.

    Going back through ``y = relu(W x)``, each of the ``fan_in`` input units sums
    ``fan_out`` terms ``W_ij g_i``: E|W^T g|^2 = fan_in * Var(W) * |g|^2, and ReLU passes
    half of the units (He et al. 2015, eq. 13). So the factor is sqrt(fan_in * Var(W) / 2):
    1 for He's Var(W) = 2 / fan_in.
    """
    return math.sqrt(fan_in * weight_variance / 2)


def he_init(linear: nn.Linear) -> None:
    """He et al. 2015: Var(W) = 2 / fan_in keeps a ReLU layer's factor at 1; zero bias."""
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    nn.init.zeros_(linear.bias)


def mlp(
    activation: Callable[[], nn.Module],
    depth: int,
    width: int,
    inputs: int,
    outputs: int,
    init: Callable[[nn.Linear], None] | None = None,
    norm: Callable[[int], nn.Module] | None = None,
) -> nn.Sequential:
    """``depth`` hidden layers Linear -> [norm] -> activation, then a Linear head.

    ``init`` re-initialises every hidden Linear (the head keeps PyTorch's default), so
    the hidden stack is what an example varies.
    """
    layers: list[nn.Module] = []
    features = inputs
    for _ in range(depth):
        linear = nn.Linear(features, width)
        if init is not None:
            init(linear)
        layers.append(linear)
        if norm is not None:
            layers.append(norm(width))
        layers.append(activation())
        features = width
    return nn.Sequential(*layers, nn.Linear(features, outputs))


def line_figure(
    directory: Path,
    name: str,
    series: Series,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = True,
    guides: Mapping[str, float] | None = None,
) -> Path | None:
    """Save a line plot as ``directory/name.png``; None when matplotlib is not installed.

    ``guides`` are dashed horizontal lines (e.g. gradcheckup's thresholds), by label.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for label, (xs, ys) in series.items():
        axis.plot(xs, ys, marker="o", markersize=3, label=label)
    for label, level in (guides or {}).items():
        axis.axhline(level, color="grey", linestyle="--", linewidth=1)
        axis.annotate(label, (0.01, level), xycoords=("axes fraction", "data"), fontsize=7)
    if log_y:
        axis.set_yscale("log")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def signal_figure(
    directory: Path, name: str, series: Series, title: str, layer: str = "layer"
) -> Path | None:
    """``line_figure`` of backward signals per layer (``signal_series``), log scale."""
    return line_figure(
        directory,
        name,
        series,
        title,
        f"{layer} (forward order; the head is last)",
        "backward signal |dL/d output|",
    )


def print_saved(console: Console, path: Path | None) -> None:
    """Say where the figure went, or that matplotlib is missing."""
    if path is None:
        console.print("--plot: matplotlib is not installed (pip install 'gradcheckup[plot]')")
    else:
        console.print(f"figure: {path}")


__all__ = [
    "Series",
    "arguments",
    "check_each",
    "forward_layers",
    "geometric_mean",
    "he_init",
    "kinds",
    "labelled_batch",
    "layer_signals",
    "line_figure",
    "mlp",
    "per_layer_factors",
    "print_saved",
    "relu_gain",
    "show",
    "signal_figure",
    "signal_series",
    "summary",
]
