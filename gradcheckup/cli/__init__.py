"""Command line: ``gradcheckup report`` (a saved model), ``gradcheckup check`` (a model
built from code, for CI), ``gradcheckup show`` and ``gradcheckup compare`` (saved reports).

This module holds the parser, ``main`` and the exit codes; ``cli.inputs`` makes the model,
its batches and the loss, ``cli.outputs`` prints and writes the report, ``cli.saved``
reads saved reports back.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gradcheckup._example_catalog import EXAMPLE_CATALOG
from gradcheckup._version import __version__
from gradcheckup.cli.config_flags import CONFIG_FLAGS
from gradcheckup.cli.saved import add_saved_report_commands, run_compare, run_show

# Parsing (--help, usage errors) imports neither torch nor pydantic: commands import
# what they need when they run.
if TYPE_CHECKING:
    from torch import nn

    from gradcheckup._inputs import LossFn
    from gradcheckup.cli.inputs import MakeBatch
    from gradcheckup.config import Config
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
MAX_INPUT_ELEMENTS = 2**31
"""Most elements one random ``--input-shape`` tensor may have (refused before allocating)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage text is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message`` on one line and exit with ``EXIT_USAGE``."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape(text: str) -> tuple[int, ...]:
    """``"8,3,32,32"`` (or ``"8x3x32x32"``) -> ``(8, 3, 32, 32)``, for argparse.

    Raises:
        argparse.ArgumentTypeError: not sizes, a size below 1, or more than
            ``MAX_INPUT_ELEMENTS`` elements.
    """
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes like 8,3,32,32, got {text!r}"
        ) from None
    if not shape or any(size < 1 for size in shape):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes of at least 1 like 8,3,32,32, got {text!r}"
        )
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} makes {elements:,} elements, more than the {MAX_INPUT_ELEMENTS:,} "
            "a random input may have"
        )
    return shape


def _negative_values_attached(argv: Sequence[str]) -> list[str]:
    """``--input-shape -2,4`` as ``--input-shape=-2,4``, so that argparse reads the value
    (and ``_shape`` rejects it) rather than taking it for an unknown option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] == "--input-shape" and token[:1] == "-" and token[1:2].isdigit():
            joined[-1] = f"--input-shape={token}"
        else:
            joined.append(token)
    return joined


def _config_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(group: argparse._ArgumentGroup) -> None:
    """A flag for every number or switch in ``Config``, plus ``--set`` and ``--pyproject``."""
    for flag in CONFIG_FLAGS:
        # argparse %-formats help texts ("1% = two orders of magnitude").
        help_text = f"{flag.help} (default: {flag.default})".replace("%", "%%")
        if flag.kind == "bool":
            group.add_argument(
                _config_flag(flag.name),
                dest=f"config_{flag.name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                _config_flag(flag.name),
                dest=f"config_{flag.name}",
                type=int if flag.kind == "int" else float,
                metavar="N" if flag.kind == "int" else "X",
                help=help_text,
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
        help="read [tool.gradcheckup] from FILE (default: the nearest pyproject.toml with a [tool.gradcheckup] table, from the current directory up to the repository root).",
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
    _file_options(group)
    _baseline_options(group)
    _fail_on_option(group)
    _verbosity_options(group)


def _file_options(group: argparse._ArgumentGroup) -> None:
    """The files a report is written to (``show`` has them too)."""
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
        help="write the charts of what the findings are about as a PNG (needs: pip install 'gradcheckup[plot]').",
    )
    group.add_argument(
        "--html",
        type=Path,
        metavar="PATH.html",
        help="write a self-contained HTML report: findings, charts and tables, readable offline.",
    )


def _baseline_options(group: argparse._ArgumentGroup) -> None:
    """Comparing with (or writing) a stored gradient profile."""
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


def _fail_on_option(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        default="error",
        help="exit 1 on findings of this severity or worse (default error).",
    )


def _verbosity_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--quiet", action="store_true", help="print only a one-line verdict.")
    group.add_argument("--debug", action="store_true", help="show tracebacks for errors.")


def _saved_report_parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options of ``show`` (files, --fail-on, verbosity) and of ``compare``
    (verbosity), shared with ``report`` and ``check``."""
    files = _Parser(add_help=False)
    group = files.add_argument_group("outputs")
    _file_options(group)
    _fail_on_option(group)
    _verbosity_options(group)
    verbosity = _Parser(add_help=False)
    _verbosity_options(verbosity.add_argument_group("outputs"))
    return files, verbosity


def _common_options() -> argparse.ArgumentParser:
    """The options ``report`` and ``check`` share, in three groups."""
    common = _Parser(add_help=False)
    _input_options(common.add_argument_group("inputs"))
    _output_options(common.add_argument_group("outputs"))
    _add_config_options(
        common.add_argument_group("thresholds (also [tool.gradcheckup] in pyproject.toml)")
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``gradcheckup`` parser with its ``report``, ``check``, ``show`` and ``compare``
    commands."""
    common = _common_options()
    parser = _Parser(
        prog="gradcheckup",
        description="Gradient diagnostics for PyTorch models: vanishing, exploding, dead ReLU, saturation, clipping.",
    )
    parser.add_argument("--version", action="version", version=f"gradcheckup {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{report,check,show,compare}"
    )
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
        help="allow formats that can run code (pickled modules, TorchScript, every torch.export .pt2) and zips that declare over 1 GiB and 100x their size unpacked: use only for files you trust.",
    )
    report.add_argument(
        "--example",
        choices=list(EXAMPLE_CATALOG),
        help="a bundled example model: "
        + "; ".join(f"{name}: {spec[1]}" for name, spec in EXAMPLE_CATALOG.items()),
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
    add_saved_report_commands(commands, *_saved_report_parents())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gradcheckup`` and ``python -m gradcheckup``.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit code: ``EXIT_HEALTHY``, ``EXIT_FINDINGS``, ``EXIT_USAGE`` or
        ``EXIT_INTERRUPTED``. Errors are printed as one line (a traceback with --debug).
    """
    try:
        args = build_parser().parse_args(
            _negative_values_attached(sys.argv[1:] if argv is None else argv)
        )
    except SystemExit as exit_:  # --help, --version and usage errors: already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        elif not _is_user_error(error):
            print(
                f"gradcheckup: internal error: {type(error).__name__}: {_one_line(str(error))} "
                "(run with --debug for the traceback)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(f"gradcheckup: error: {_one_line(_error_text(error))}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(error: Exception) -> bool:
    """A mistake in the command's inputs (one line, exit 2), not a bug in gradcheckup."""
    # A LoadError comes from gradcheckup.loading, which imports torch: where that module
    # was never imported, importing it now only to compare would cost seconds.
    loading = sys.modules.get("gradcheckup.loading")
    load_errors = () if loading is None else (loading.LoadError,)
    return isinstance(error, (*_USER_ERRORS, *load_errors))


def _error_text(error: Exception) -> str:
    """The error's message, with the flag that would lift a load refusal."""
    hints = []
    if getattr(error, "needs_trust", False):
        hints.append(_TRUST_HINT)
    if getattr(error, "needs_factory", False):
        hints.append(_FACTORY_HINT)
    return "; ".join([str(error), *hints])


def _one_line(text: str) -> str:
    """A message on one line: its lines joined, for the one-line error contract."""
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


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
        what = "is a directory" if args.pyproject.is_dir() else "no such file"
        raise FileNotFoundError(f"--pyproject {args.pyproject}: {what}")
    flags = {
        flag.name: getattr(args, f"config_{flag.name}")
        for flag in CONFIG_FLAGS
        if getattr(args, f"config_{flag.name}", None) is not None
    }
    return build_config(
        [
            (f"{pyproject} [tool.gradcheckup]", load_pyproject_settings(pyproject)),
            ("--set", parse_assignments(args.settings, "--set")),
            ("command line", flags),
        ]
    )


def _run(args: argparse.Namespace) -> int:
    """Settings, model and batches, the passes, the outputs: the exit code.

    Every option that can be checked without running the model is checked first, so a
    mistake costs one line of error and leaves no file half-written.
    """
    if args.command in ("show", "compare"):  # saved reports: no model, no settings
        failed = run_show(args) if args.command == "show" else run_compare(args)
        return EXIT_FINDINGS if failed else EXIT_HEALTHY
    config = _settings(args)
    _check_counts(args)

    import torch

    from gradcheckup.cli import inputs, outputs

    outputs.check_destinations(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    torch.manual_seed(args.seed)
    model, name, notes, make_batch = inputs.model_and_batches(args)
    inputs.require_values(model)
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


def _check_counts(args: argparse.Namespace) -> None:
    """The numeric options argparse cannot judge alone, and option pairs."""
    if args.update_baseline and args.baseline is None:
        raise ValueError("--update-baseline needs --baseline FILE")
    if args.steps < 1:
        raise ValueError(f"--steps: expected at least 1, got {args.steps}")
    if not args.baseline_factor >= 1:  # also refuses nan
        raise ValueError(
            f"--baseline-factor: expected a factor of at least 1, got {args.baseline_factor}"
        )


def _diagnose(
    model: nn.Module,
    make_batch: MakeBatch,
    loss_fn: LossFn | None,
    args: argparse.Namespace,
    config: Config,
) -> Report:
    """One pass through ``gcu.check``, or ``--steps`` training passes under ``gcu.watch``.

    Raises:
        ValueError: the model's own forward raised (``inputs.forward_failures``).
    """
    import gradcheckup as gcu
    from gradcheckup.cli.inputs import forward_failures

    if args.steps == 1:
        inputs, target = make_batch(0)
        with forward_failures(inputs):
            return gcu.check(model, inputs, target=target, loss_fn=loss_fn, config=config)

    from rich.console import Console
    from rich.progress import track

    from gradcheckup._inputs import training_loss
    from gradcheckup.probes._hooks import compiled_code_run_eagerly

    model.train()
    # A compiled forward runs eagerly here, as in check(): every probe sees it.
    with gcu.watch(model, config=config) as monitor, compiled_code_run_eagerly():
        for step in track(
            range(args.steps),
            description="passes",
            console=Console(stderr=True),
            disable=args.quiet,
            transient=True,
        ):
            inputs, target = make_batch(step)
            with forward_failures(inputs):
                loss = training_loss(model, inputs, target, loss_fn, config.loss_seed)
            loss.backward()
            model.zero_grad(set_to_none=True)
    return monitor.report()
