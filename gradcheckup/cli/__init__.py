"""Command line: ``gradcheckup report`` (a saved model) and ``gradcheckup check`` (a model
built from code, for CI).

This module holds the parser, ``main`` and the exit codes; ``cli.inputs`` makes the model,
its batches and the loss, ``cli.outputs`` prints and writes the report.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gradcheckup._version import __version__
from gradcheckup.config import Config
from gradcheckup.examples import EXAMPLES

if TYPE_CHECKING:
    from torch import nn

    from gradcheckup._inputs import LossFn
    from gradcheckup.cli.inputs import MakeBatch
    from gradcheckup.report import Report

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_HEALTHY",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_HEALTHY = 0
"""No finding at or above ``--fail-on`` and no baseline regression."""
EXIT_FINDINGS = 1
"""Findings at or above ``--fail-on``, or a baseline regression."""
EXIT_USAGE = 2
"""A usage, load or input error (argparse's own usage errors exit 2 as well)."""
EXIT_INTERRUPTED = 130
"""Interrupted with Ctrl-C."""

_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")
_LOSSES = ("auto", "cross_entropy", "mse", "sum")
# What the command line adds to a LoadError that names no flag (loading.py is not a CLI).
_TRUST_HINT = "pass --trust only if you trust the file: it may run code"
_FACTORY_HINT = "pass --factory package.module:callable that builds the model"
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)


def _shape(text: str) -> tuple[int, ...]:
    """``"8,3,32,32"`` (or ``"8x3x32x32"``) -> ``(8, 3, 32, 32)``, for argparse."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes like 8,3,32,32, got {text!r}"
        ) from None
    if not shape or any(size < 0 for size in shape):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes like 8,3,32,32, got {text!r}"
        )
    return shape


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(group: argparse._ArgumentGroup) -> None:
    """A flag for every number or switch in ``Config``, plus ``--set`` and ``--pyproject``."""
    for name, field in Config.model_fields.items():
        annotation = str(field.annotation)
        default = field.default
        help_text = f"Config.{name} (default {default!r})."
        if field.annotation is bool:
            group.add_argument(
                _config_flag(name),
                dest=f"config_{name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif field.annotation is int:
            group.add_argument(
                _config_flag(name), dest=f"config_{name}", type=int, metavar="N", help=help_text
            )
        elif "float" in annotation:
            group.add_argument(
                _config_flag(name), dest=f"config_{name}", type=float, metavar="X", help=help_text
            )
    group.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any Config setting, value as JSON (e.g. recurrent_modules='{\"rnn\": 1}'); repeatable.",
    )
    group.add_argument(
        "--pyproject",
        type=Path,
        metavar="FILE",
        help="read [tool.gradcheckup] from FILE (default: the nearest pyproject.toml).",
    )


def _input_options(group: argparse._ArgumentGroup) -> None:
    """Where the inputs, targets and loss come from, and how many passes run."""
    group.add_argument(
        "--input-shape",
        dest="input_shapes",
        type=_shape,
        action="append",
        default=[],
        metavar="8,3,32,32",
        help="a random input of this shape; repeat for several positional inputs.",
    )
    group.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="float32",
        help="dtype of random inputs (default float32).",
    )
    group.add_argument(
        "--int-high",
        type=int,
        default=2,
        metavar="N",
        help="integer inputs are drawn from [0, N) (default 2: valid for any embedding).",
    )
    group.add_argument(
        "--input",
        type=Path,
        metavar="FILE",
        help="inputs saved with torch.save (tensor, tuple or dict), loaded safely.",
    )
    group.add_argument(
        "--target",
        type=Path,
        metavar="FILE",
        help="target tensor saved with torch.save, loaded safely.",
    )
    group.add_argument(
        "--loss",
        choices=_LOSSES,
        default="auto",
        help="auto: gcu.check's default; cross_entropy/mse use --target or random targets; sum: output.sum().",
    )
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    group.add_argument(
        "--seed", type=int, default=0, help="seed for torch, random inputs and targets (default 0)."
    )
    group.add_argument(
        "--steps",
        type=int,
        default=1,
        metavar="N",
        help="forward/backward passes (N > 1: fresh random inputs each, with a progress bar).",
    )


def _output_options(group: argparse._ArgumentGroup) -> None:
    """Files written, the baseline, the exit-code threshold and verbosity."""
    group.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the report as JSON (gcu.Report.model_validate_json reads it).",
    )
    group.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML for CI systems.")
    group.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).",
    )
    group.add_argument(
        "--plot",
        type=Path,
        metavar="PATH.png",
        help="write a gradient-flow plot (needs: pip install 'gradcheckup[plot]').",
    )
    group.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="compare the per-layer gradient profile with FILE; fail when a layer moved more than --baseline-factor or a finding appeared.",
    )
    group.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the profile to --baseline FILE instead of comparing.",
    )
    group.add_argument(
        "--baseline-factor",
        type=float,
        default=10.0,
        metavar="X",
        help="allowed factor for --baseline (default 10).",
    )
    group.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        default="error",
        help="exit 1 on findings of this severity or worse (default error).",
    )
    group.add_argument("--quiet", action="store_true", help="print only a one-line verdict.")
    group.add_argument("--debug", action="store_true", help="show tracebacks for errors.")


def _common_options() -> argparse.ArgumentParser:
    """The options ``report`` and ``check`` share, in three groups."""
    common = argparse.ArgumentParser(add_help=False)
    _input_options(common.add_argument_group("inputs"))
    _output_options(common.add_argument_group("outputs"))
    _add_config_options(
        common.add_argument_group("thresholds (also [tool.gradcheckup] in pyproject.toml)")
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``gradcheckup`` parser with its ``report`` and ``check`` commands."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="gradcheckup",
        description="Gradient diagnostics for PyTorch models: vanishing, exploding, dead ReLU, saturation, clipping.",
    )
    parser.add_argument("--version", action="version", version=f"gradcheckup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{report,check}")
    report = commands.add_parser(
        "report",
        parents=[common],
        help="one-off report on a saved model file (or a bundled --example)",
        description="Load a saved model safely, run a batch forward and backward, print the report.",
    )
    report.add_argument(
        "model_file",
        type=Path,
        nargs="?",
        help="state_dict (.pt/.pth/.safetensors, with --factory), TorchScript, torch.export (.pt2) or a pickled module.",
    )
    report.add_argument(
        "--factory",
        metavar="module.path:callable",
        help="builds the model a state_dict belongs to.",
    )
    report.add_argument(
        "--trust",
        action="store_true",
        help="allow formats that can run code (pickled modules, TorchScript, unsafe .pt2): the file may run code, use only for files you trust.",
    )
    report.add_argument(
        "--example",
        choices=list(EXAMPLES),
        help="a bundled example model: "
        + "; ".join(f"{name}: {spec[2]}" for name, spec in EXAMPLES.items()),
    )
    check = commands.add_parser(
        "check",
        parents=[common],
        help="CI health check on a model built from code",
        description="Build the model with a factory, run a batch forward and backward, exit non-zero on findings.",
    )
    check.add_argument(
        "factory", metavar="module.path:factory", help="callable that returns the nn.Module."
    )
    check.add_argument(
        "--batch",
        metavar="module.path:make_batch",
        help="callable returning the inputs (tensor, tuple or dict), or {'inputs': ..., 'target': ...}.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gradcheckup`` and ``python -m gradcheckup``.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit code: ``EXIT_HEALTHY``, ``EXIT_FINDINGS``, ``EXIT_USAGE`` or
        ``EXIT_INTERRUPTED``. Errors are printed as one line (a traceback with --debug).
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        from gradcheckup.loading import LoadError

        if args.debug:
            traceback.print_exc()
        elif not isinstance(error, (LoadError, *_USER_ERRORS)):
            print(
                f"gradcheckup: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(f"gradcheckup: error: {_error_text(error)}", file=sys.stderr)
        return EXIT_USAGE


def _error_text(error: Exception) -> str:
    """The error's message, with the flag that would lift a load refusal."""
    hints = []
    if getattr(error, "needs_trust", False):
        hints.append(_TRUST_HINT)
    if getattr(error, "needs_factory", False):
        hints.append(_FACTORY_HINT)
    return "; ".join([str(error), *hints])


def _settings(args: argparse.Namespace) -> Config:
    """defaults < pyproject.toml < --set < threshold flags."""
    from gradcheckup.settings import (
        build_config,
        find_pyproject,
        load_pyproject_settings,
        parse_assignments,
    )

    pyproject = args.pyproject if args.pyproject is not None else find_pyproject(Path.cwd())
    if args.pyproject is not None and not args.pyproject.is_file():
        raise FileNotFoundError(f"--pyproject {args.pyproject}: no such file")
    flags = {
        name: getattr(args, f"config_{name}")
        for name in Config.model_fields
        if getattr(args, f"config_{name}", None) is not None
    }
    return build_config(
        [
            (f"{pyproject} [tool.gradcheckup]", load_pyproject_settings(pyproject)),
            ("--set", parse_assignments(args.settings, "--set")),
            ("command line", flags),
        ]
    )


def _run(args: argparse.Namespace) -> int:
    """Settings, model and batches, the passes, the outputs: the exit code."""
    config = _settings(args)
    if args.update_baseline and args.baseline is None:
        raise ValueError("--update-baseline needs --baseline FILE")
    if args.steps < 1:
        raise ValueError(f"--steps: expected at least 1, got {args.steps}")

    import torch

    from gradcheckup.cli import inputs, outputs

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    torch.manual_seed(args.seed)
    model, name, notes, make_batch = inputs.model_and_batches(args)
    device = torch.device(args.device)
    model = model.to(device)
    report = _diagnose(
        model,
        lambda step: inputs.to_device(make_batch(step), device),
        inputs.named_loss(args.loss, args.seed),
        args,
        config,
    )
    failed = outputs.emit(report, name, notes, args)
    return EXIT_FINDINGS if failed else EXIT_HEALTHY


def _diagnose(
    model: nn.Module,
    make_batch: MakeBatch,
    loss_fn: LossFn | None,
    args: argparse.Namespace,
    config: Config,
) -> Report:
    """One pass through ``gcu.check``, or ``--steps`` training passes under ``gcu.watch``."""
    import gradcheckup as gcu

    if args.steps == 1:
        inputs, target = make_batch(0)
        return gcu.check(model, inputs, target=target, loss_fn=loss_fn, config=config)

    from rich.console import Console
    from rich.progress import track

    from gradcheckup._inputs import training_loss

    model.train()
    with gcu.watch(model, config=config) as monitor:
        for step in track(
            range(args.steps),
            description="passes",
            console=Console(stderr=True),
            disable=args.quiet,
            transient=True,
        ):
            inputs, target = make_batch(step)
            training_loss(model, inputs, target, loss_fn, config.loss_seed).backward()
            model.zero_grad(set_to_none=True)
    return monitor.report()
