"""Example 6: plain RNN vs LSTM vs GRU over growing sequence length: the gradient through
time, and the rho^(T-1) law for a plain RNN.

    python examples/recurrent_through_time.py [--plot DIR] [--brief]

Backpropagation through time multiplies the gradient by the recurrent Jacobian
W_hh^T diag(tanh') at every step back (Pascanu, Mikolov & Bengio 2013). For a plain
(Elman) RNN with W_hh = rho * Q (Q orthogonal: every eigenvalue has modulus rho) and
inputs small enough that tanh' ~ 1, each step back multiplies the gradient's norm by
exactly rho, so the first step's input gradient is rho^(T-1) times the last step's:
below 1 it vanishes, above 1 it explodes, and it crosses gradcheckup's thresholds
(1e-3 and 1e3) once the sequence is long enough.

At PyTorch's default initialisation, read out at the last step only, a plain RNN loses
the first steps within 20 steps (an error: a tanh RNN cannot learn its way out), and so
do LSTM and GRU (a warning): their forget/update gates start near 0.5, halving the
gradient at each step until they learn to open. Starting the LSTM's forget-gate bias at
2 (sigmoid(2) = 0.88), or the GRU's update-gate bias at 3, keeps the first step in reach
over 60 steps.

Theory checked here: for the Elman RNNs the measured first-to-last ratio equals
rho(W_hh)^(T-1), rho(W_hh) being the spectral radius computed from the weights. Exit
code 0 when the verdicts and the law hold.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from _gallery import arguments, kinds, line_figure, print_saved, show, summary
from rich.console import Console
from rich.table import Table

import gradcheckup as gcu
from gradcheckup.examples import LastStepClassifier
from gradcheckup.report import Report

LENGTHS = (10, 20, 40, 60)
RADII = (0.85, 1.0, 1.15)
FEATURES, HIDDEN, CLASSES, BATCH = 8, 32, 4, 16
ELMAN_SIZE = 16
# Inputs of 1e-6 keep the hidden state tiny: at rho = 1.15 and T = 60 its norm is about
# 1e-6 * |x| * sqrt(sum_k 1.15^(2k)) ~ 0.035 (|x| ~ 4 for 16 N(0, 1) features), ~0.009
# per unit, so tanh' = 1 - h^2 differs from 1 by < 1e-4 per step, and only over the last
# few steps, where h is that large: ~3e-4 in all. Rounding (QR, the eigenvalues, 60
# float32 products) adds ~1e-5. Measured: at most 2.6e-4 off. 2% is far above both, and
# far below what a wrong law would give (rho^T instead of rho^(T-1): 15% off at 0.85).
LAW_TOLERANCE = 0.02
ELMAN_INPUT_SCALE = 1e-6
FORGET_GATE_BIAS = 2.0
UPDATE_GATE_BIAS = 3.0
CELLS = ("RNN", "LSTM", "GRU", "LSTM, forget bias 2", "GRU, update bias 3")


def elman(rho: float) -> LastStepClassifier:
    """A plain RNN with W_hh = rho * Q (Q orthogonal), W_ih = I and no biases."""
    model = LastStepClassifier("rnn", features=ELMAN_SIZE, hidden=ELMAN_SIZE, classes=CLASSES)
    with torch.no_grad():
        orthogonal, _ = torch.linalg.qr(torch.randn(ELMAN_SIZE, ELMAN_SIZE))
        model.recurrent.weight_hh_l0.copy_(rho * orthogonal)
        model.recurrent.weight_ih_l0.copy_(torch.eye(ELMAN_SIZE))
        model.recurrent.bias_hh_l0.zero_()
        model.recurrent.bias_ih_l0.zero_()
    return model


def cell(name: str) -> LastStepClassifier:
    """One of ``CELLS`` at PyTorch's default init, the gated ones optionally with their
    carry gate opened by a positive bias (PyTorch orders the gates i, f, g, o for LSTM
    and r, z, n for GRU, so the forget gate f and the update gate z are both the second
    block of HIDDEN rows)."""
    kind = name.split(",")[0].lower()
    model = LastStepClassifier(kind, features=FEATURES, hidden=HIDDEN, classes=CLASSES)
    bias = {"LSTM": FORGET_GATE_BIAS, "GRU": UPDATE_GATE_BIAS}.get(name.split(",")[0])
    if "," in name and bias is not None:
        with torch.no_grad():
            # The gate sees bias_ih + bias_hh: put the whole bias in one of them.
            model.recurrent.bias_ih_l0[HIDDEN : 2 * HIDDEN].fill_(bias)
            model.recurrent.bias_hh_l0[HIDDEN : 2 * HIDDEN].zero_()
    return model


def build_models() -> dict[str, LastStepClassifier]:
    """The Elman RNNs keyed ``'Elman rho=<rho>'`` and the cells keyed by ``CELLS``."""
    models: dict[str, LastStepClassifier] = {}
    for rho in RADII:
        torch.manual_seed(0)
        models[f"Elman rho={rho:g}"] = elman(rho)
    for name in CELLS:
        torch.manual_seed(0)
        models[name] = cell(name)
    return models


def batch(name: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of ``steps``-long sequences and labels for model ``name``."""
    generator = torch.Generator().manual_seed(steps)
    features = ELMAN_SIZE if name.startswith("Elman") else FEATURES
    sequences = torch.randn(BATCH, steps, features, generator=generator)
    if name.startswith("Elman"):
        sequences *= ELMAN_INPUT_SCALE
    return sequences, torch.randint(0, CLASSES, (BATCH,), generator=generator)


def run(models: dict[str, LastStepClassifier] | None = None) -> dict[str, dict[int, Report]]:
    """``gcu.check`` every model at every sequence length: ``reports[name][steps]``."""
    models = models or build_models()
    reports: dict[str, dict[int, Report]] = {}
    for name, model in models.items():
        reports[name] = {}
        for steps in LENGTHS:
            sequences, labels = batch(name, steps)
            reports[name][steps] = gcu.check(
                model, sequences, target=labels, loss_fn=F.cross_entropy
            )
    return reports


def first_to_last(report: Report) -> float:
    """The recurrent module's first-step over last-step input gradient."""
    (profile,) = report.temporal
    return profile.first_to_last or 0.0


def spectral_radius(model: LastStepClassifier) -> float:
    """The largest modulus among W_hh's eigenvalues."""
    weight = model.recurrent.weight_hh_l0.detach()
    return float(torch.linalg.eigvals(weight).abs().max())


def law_holds(models: dict[str, LastStepClassifier], reports: dict[str, dict[int, Report]]) -> bool:
    """first_to_last == rho(W_hh)^(T-1) within LAW_TOLERANCE for every Elman RNN and T."""
    for name, by_length in reports.items():
        if not name.startswith("Elman"):
            continue
        rho = spectral_radius(models[name])
        for steps, report in by_length.items():
            if not math.isclose(first_to_last(report), rho ** (steps - 1), rel_tol=LAW_TOLERANCE):
                return False
    return True


def plot(reports: dict[str, dict[int, Report]], directory: Path) -> Path | None:
    """first_to_last against the sequence length for every model, log scale."""
    series = {
        name: (list(by_length), [first_to_last(report) for report in by_length.values()])
        for name, by_length in reports.items()
    }
    return line_figure(
        directory,
        "recurrent_through_time",
        series,
        "Gradient reaching the first step / the last step (gradcheckup: 1e-3 and 1e3)",
        "sequence length T",
        "first_to_last",
        guides={"vanishing_through_time": 1e-3, "exploding_through_time": 1e3},
    )


def _table(reports: dict[str, dict[int, Report]]) -> Table:
    table = Table(title="first_to_last by sequence length, and the verdict at the longest")
    table.add_column("model")
    for steps in LENGTHS:
        table.add_column(f"T={steps}")
    table.add_column(f"gradcheckup at T={LENGTHS[-1]}")
    for name, by_length in reports.items():
        ratios = [f"{first_to_last(report):.2g}" for report in by_length.values()]
        table.add_row(name, *ratios, summary(by_length[LENGTHS[-1]], with_values=False))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example and explain it; exit code 0 when it came out as expected."""
    return explain(run(), arguments(__doc__, argv))


def explain(reports: dict[str, dict[int, Report]], args: argparse.Namespace) -> int:
    """Print the RNN and the fixed LSTM at the longest length, every ratio, and check
    the law; 0 when all holds."""
    console = Console()
    models = build_models()
    longest = LENGTHS[-1]
    show(
        console,
        f"Broken: plain RNN (default init) over {longest} steps",
        reports["RNN"][longest],
        "Every step back multiplies by W_hh^T diag(tanh'), whose size stays below 1: "
        "the first steps' gradient is gone.",
        args.brief,
    )
    show(
        console,
        f"Fixed: LSTM with forget-gate bias {FORGET_GATE_BIAS:g} over {longest} steps",
        reports["LSTM, forget bias 2"][longest],
        "The cell state is carried by the forget gate, now ~0.88 instead of ~0.5, so the "
        "gradient reaches the first step.",
        args.brief,
    )
    console.print(_table(reports))
    default_rnn = models["RNN"]
    rate = first_to_last(reports["RNN"][40]) ** (1 / 39)
    console.print(
        f"Default RNN: spectral radius of W_hh {spectral_radius(default_rnn):.3f}, measured "
        f"factor per step {rate:.3f} (tanh' < 1 on real inputs shrinks it further)."
    )
    holds = law_holds(models, reports)
    console.print(f"Elman RNNs follow rho(W_hh)^(T-1) within {LAW_TOLERANCE:.0%}: {holds}")
    if args.plot:
        print_saved(console, plot(reports, args.plot))
    expected = (
        "vanishing_through_time" in kinds(reports["RNN"][longest], "error")
        and not kinds(reports["LSTM, forget bias 2"][longest])
        and "vanishing_through_time" in kinds(reports["Elman rho=0.85"][longest], "error")
        and "exploding_through_time" in kinds(reports["Elman rho=1.15"][longest], "error")
    )
    return 0 if expected and holds else 1


if __name__ == "__main__":
    sys.exit(main())
