"""Command line: ``gradcheckup report`` (a saved model) and ``gradcheckup check`` (a model
built from code, for CI). Exit codes: 0 healthy, 1 findings at or above --fail-on (or a
baseline regression), 2 usage or load error."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradcheckup._version import __version__
from gradcheckup.config import Config
from gradcheckup.examples import EXAMPLES

__all__ = ["build_parser", "main"]

_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32")
_LOSSES = ("auto", "cross_entropy", "mse", "sum")


def _shape(text: str) -> tuple[int, ...]:
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


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    inputs = common.add_argument_group("inputs")
    inputs.add_argument(
        "--input-shape",
        dest="input_shapes",
        type=_shape,
        action="append",
        default=[],
        metavar="8,3,32,32",
        help="a random input of this shape; repeat for several positional inputs.",
    )
    inputs.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="float32",
        help="dtype of random inputs (default float32).",
    )
    inputs.add_argument(
        "--int-high",
        type=int,
        default=2,
        metavar="N",
        help="integer inputs are drawn from [0, N) (default 2: valid for any embedding).",
    )
    inputs.add_argument(
        "--input",
        type=Path,
        metavar="FILE",
        help="inputs saved with torch.save (tensor, tuple or dict), loaded safely.",
    )
    inputs.add_argument(
        "--target",
        type=Path,
        metavar="FILE",
        help="target tensor saved with torch.save, loaded safely.",
    )
    inputs.add_argument(
        "--loss",
        choices=_LOSSES,
        default="auto",
        help="auto: gcu.check's default; cross_entropy/mse use --target or random targets; sum: output.sum().",
    )
    inputs.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    inputs.add_argument(
        "--seed", type=int, default=0, help="seed for torch, random inputs and targets (default 0)."
    )
    inputs.add_argument(
        "--steps",
        type=int,
        default=1,
        metavar="N",
        help="forward/backward passes (N > 1: fresh random inputs each, with a progress bar).",
    )
    outputs = common.add_argument_group("outputs")
    outputs.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the report as JSON (gcu.Report.model_validate_json reads it).",
    )
    outputs.add_argument(
        "--junit", type=Path, metavar="PATH", help="write JUnit XML for CI systems."
    )
    outputs.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).",
    )
    outputs.add_argument(
        "--plot",
        type=Path,
        metavar="PATH.png",
        help="write a gradient-flow plot (needs: pip install 'gradcheckup[plot]').",
    )
    outputs.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="compare the per-layer gradient profile with FILE; fail when a layer moved more than --baseline-factor or a finding appeared.",
    )
    outputs.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the profile to --baseline FILE instead of comparing.",
    )
    outputs.add_argument(
        "--baseline-factor",
        type=float,
        default=10.0,
        metavar="X",
        help="allowed factor for --baseline (default 10).",
    )
    outputs.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        default="error",
        help="exit 1 on findings of this severity or worse (default error).",
    )
    outputs.add_argument("--quiet", action="store_true", help="print only a one-line verdict.")
    outputs.add_argument("--debug", action="store_true", help="show tracebacks for errors.")
    _add_config_options(
        common.add_argument_group("thresholds (also [tool.gradcheckup] in pyproject.toml)")
    )
    return common


def build_parser() -> argparse.ArgumentParser:
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
    """Entry point of ``gradcheckup`` and ``python -m gradcheckup``."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from gradcheckup.loading import LoadError

        user_error = isinstance(
            error, (LoadError, ValueError, TypeError, FileNotFoundError, ImportError)
        )
        if args.debug:
            traceback.print_exc()
        elif not user_error:
            print(
                f"gradcheckup: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
                file=sys.stderr,
            )
            return 2
        print(f"gradcheckup: error: {error}", file=sys.stderr)
        return 2


def _settings(args: argparse.Namespace) -> Config:
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
    config = _settings(args)
    if args.update_baseline and args.baseline is None:
        raise ValueError("--update-baseline needs --baseline FILE")
    if args.steps < 1:
        raise ValueError(f"--steps: expected at least 1, got {args.steps}")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    torch.manual_seed(args.seed)
    model, name, notes, make_batch = _model_and_inputs(args)
    device = torch.device(args.device)
    model = model.to(device)
    report = _diagnose(model, lambda step: _to_device(make_batch(step), device), args, config)
    return _emit(report, name, notes, args)


def _model_and_inputs(
    args: argparse.Namespace,
) -> tuple[Any, str, list[str], Callable[[int], tuple[Any, Any]]]:
    """The model, its name, loading notes, and step -> (inputs, target)."""
    import torch

    from gradcheckup.examples import build_example
    from gradcheckup.loading import LoadError, load_model, load_tensors, resolve_callable

    notes: list[str] = []
    shapes = list(args.input_shapes)
    batch_factory = None
    if args.command == "report":
        if args.example and args.model_file:
            raise ValueError("report: give a MODEL_FILE or --example, not both")
        if args.example:
            model, shape = build_example(args.example)
            shapes = shapes or [shape]
            name = f"example {args.example}"
        elif args.model_file:
            loaded = load_model(args.model_file, factory=args.factory, trust=args.trust)
            model, name, notes = loaded.model, f"{args.model_file} ({loaded.format})", loaded.notes
        else:
            raise ValueError("report: give a MODEL_FILE (or --example NAME)")
    else:
        model = resolve_callable(args.factory, "factory")()
        if not isinstance(model, torch.nn.Module):
            raise LoadError(
                f"factory {args.factory!r}: returned {type(model).__name__}, expected an nn.Module"
            )
        name = args.factory
        if args.batch:
            batch_factory = resolve_callable(args.batch, "--batch")

    given_target = load_tensors(args.target, "--target") if args.target else None
    if batch_factory is not None:

        def from_factory(step: int) -> tuple[Any, Any]:
            # Each step's inputs come with that step's own target.
            batch = batch_factory()
            if isinstance(batch, dict) and "inputs" in batch and set(batch) <= {"inputs", "target"}:
                return batch["inputs"], batch.get("target", given_target)
            return batch, given_target

        return model, name, notes, from_factory
    if args.input:
        fixed = load_tensors(args.input, "--input")
        return model, name, notes, lambda step: (fixed, given_target)
    if not shapes:
        raise ValueError(
            "inputs: give --input-shape (e.g. 8,3,32,32), --input FILE or, for check, --batch"
        )
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)

    def random_inputs(step: int) -> Any:
        tensors = []
        for shape in shapes:
            if dtype.is_floating_point:
                tensors.append(torch.randn(shape, generator=generator).to(dtype))
            else:
                tensors.append(
                    torch.randint(0, args.int_high, shape, generator=generator, dtype=dtype)
                )
        inputs = tensors[0] if len(tensors) == 1 else tuple(tensors)
        return inputs, given_target

    return model, name, notes, random_inputs


def _to_device(value: Any, device: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


def _loss_function(kind: str, seed: int) -> Callable[..., Any] | None:
    if kind == "auto":
        return None
    import torch
    import torch.nn.functional as F

    from gradcheckup._inputs import primary_output

    generator = torch.Generator().manual_seed(seed + 1)

    def loss(output: Any, target: Any = None) -> Any:
        prediction = primary_output(output)
        wanted = target
        if kind == "sum":
            return prediction.float().sum()
        if kind == "mse":
            if wanted is None:
                wanted = torch.randn(prediction.shape, generator=generator).to(prediction.device)
            return F.mse_loss(prediction.float(), wanted.float())
        logits = (
            prediction.reshape(-1, prediction.shape[-1])
            if prediction.dim() > 1
            else prediction[None]
        )
        if wanted is None:
            wanted = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=generator).to(
                logits.device
            )
        return F.cross_entropy(logits.float(), wanted.reshape(-1))

    return loss


def _diagnose(
    model: Any,
    make_batch: Callable[[int], tuple[Any, Any]],
    args: argparse.Namespace,
    config: Config,
) -> Any:
    import gradcheckup as gcu

    loss_fn = _loss_function(args.loss, args.seed)
    if args.steps == 1:
        inputs, target = make_batch(0)
        return gcu.check(model, inputs, target=target, loss_fn=loss_fn, config=config)

    from rich.console import Console
    from rich.progress import track

    from gradcheckup._inputs import default_loss, split_inputs, validated_loss

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
            positional, keywords = split_inputs(inputs)
            output = model(*positional, **keywords)
            loss = (
                loss_fn(output, target)
                if loss_fn is not None
                else default_loss(output, target, config.loss_seed)
            )
            validated_loss(loss).backward()
            model.zero_grad(set_to_none=True)
    return monitor.report()


def _emit(report: Any, name: str, notes: list[str], args: argparse.Namespace) -> int:
    from rich.console import Console

    from gradcheckup.exports import (
        github_annotations,
        junit_xml,
        markdown_summary,
        severities_at_or_above,
    )

    failing = severities_at_or_above(args.fail_on)
    failed = [finding for finding in report.findings if finding.severity in failing]
    console = Console()
    if args.quiet:
        errors = sum(finding.severity.value == "error" for finding in report.findings)
        warnings = sum(finding.severity.value == "warning" for finding in report.findings)
        verdict = "UNHEALTHY" if failed else "HEALTHY"
        print(f"gradcheckup: {verdict} {name}: {errors} error(s), {warnings} warning(s)")
    else:
        console.rule(f"gradcheckup report: {name}")
        report.print(console)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        _write(args.json, report.model_dump_json(indent=2))
    if args.junit:
        _write(args.junit, junit_xml(report, name, args.fail_on))
    if args.markdown:
        _write(
            args.markdown,
            markdown_summary(report, name, args.fail_on),
            append=str(args.markdown) == os.environ.get("GITHUB_STEP_SUMMARY"),
        )
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(report, args.fail_on):
            print(line)
    if args.plot:
        try:
            from gradcheckup.plotting import plot_gradient_flow

            plot_gradient_flow(report, args.plot, title=name)
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'gradcheckup[plot]'") from None
    regressions = _baseline(report, args)
    return 1 if failed or regressions else 0


def _baseline(report: Any, args: argparse.Namespace) -> list[str]:
    if args.baseline is None:
        return []
    from gradcheckup.baseline import compare_with_baseline, write_baseline

    if args.update_baseline:
        write_baseline(args.baseline, [report])
        print(f"gradcheckup: baseline written to {args.baseline}", file=sys.stderr)
        return []
    if not args.baseline.is_file():
        print(
            f"gradcheckup: no baseline at {args.baseline}; write one with --update-baseline",
            file=sys.stderr,
        )
        return []
    problems = compare_with_baseline(args.baseline, [report], args.baseline_factor)
    for problem in problems:
        print(f"gradcheckup: baseline regression: {problem}", file=sys.stderr)
    return problems


def _write(path: Path, text: str, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        handle.write(text)
