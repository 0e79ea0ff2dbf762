"""The command line's parts in-process: parser, error texts, losses, batches.
End-to-end runs (subprocesses, files, exit codes) are in tests/integration/test_cli.py."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from gradcheckup.cli import EXIT_FINDINGS, EXIT_HEALTHY, EXIT_USAGE, _error_text, build_parser
from gradcheckup.cli.inputs import model_and_batches, named_loss, to_device
from gradcheckup.loading import LoadError
from tests.helpers import report_with_findings


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_exit_codes() -> None:
    assert (EXIT_HEALTHY, EXIT_FINDINGS, EXIT_USAGE) == (0, 1, 2)


def test_both_commands_share_input_output_and_threshold_options() -> None:
    for command in (["report"], ["check", "m:f"]):
        args = _args(*command, "--input-shape", "8x3", "--json", "r.json", "--max-grad-norm", "2")
        assert args.input_shapes == [(8, 3)] and str(args.json) == "r.json"
        assert args.config_max_grad_norm == 2.0 and args.config_train_mode is None
        assert (args.loss, args.steps, args.fail_on, args.seed) == ("auto", 1, "error", 0)
    help_text = build_parser()._subparsers._group_actions[0].choices["check"].format_help()
    for group in ("inputs:", "outputs:", "thresholds (also [tool.gradcheckup]"):
        assert group in help_text


def test_load_refusals_get_the_flag_that_lifts_them() -> None:
    assert _error_text(ValueError("plain")) == "plain"
    assert _error_text(LoadError("f.pt: is TorchScript", needs_trust=True)) == (
        "f.pt: is TorchScript; pass --trust only if you trust the file: it may run code"
    )
    assert _error_text(LoadError("f.pt: holds a state_dict (2 tensors)", needs_factory=True)) == (
        "f.pt: holds a state_dict (2 tensors); pass --factory package.module:callable that "
        "builds the model"
    )


def test_named_losses_equal_direct_computations() -> None:
    output = torch.randn(4, 5, 3)
    labels = torch.randint(0, 3, (4, 5))
    assert named_loss("auto", 0) is None
    assert torch.equal(named_loss("sum", 0)(output), output.sum())
    expected = F.cross_entropy(output.reshape(-1, 3), labels.reshape(-1))
    assert torch.equal(named_loss("cross_entropy", 0)(output, labels), expected)
    values = torch.randn(4, 5, 3)
    assert torch.equal(named_loss("mse", 0)(output, values), F.mse_loss(output, values))


def test_named_losses_draw_seeded_random_targets_per_call() -> None:
    output = torch.randn(6, 3)
    generator = torch.Generator().manual_seed(7 + 1)
    first = torch.randint(0, 3, (6,), generator=generator)
    second = torch.randint(0, 3, (6,), generator=generator)
    loss = named_loss("cross_entropy", 7)
    assert torch.equal(loss(output), F.cross_entropy(output, first))
    assert torch.equal(loss(output), F.cross_entropy(output, second))
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(
        named_loss("mse", 0)(output), F.mse_loss(output, torch.randn(6, 3, generator=generator))
    )


def test_to_device_moves_tensors_inside_containers() -> None:
    batch = {"x": torch.ones(1), "pair": (torch.zeros(1), 3), "items": [torch.ones(2)]}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["pair"][1] == 3 and isinstance(moved["pair"], tuple)
    assert isinstance(moved["items"], list) and torch.equal(moved["items"][0], torch.ones(2))


def test_random_batches_follow_shapes_dtype_and_seed() -> None:
    args = _args(
        "report",
        "--example",
        "he-relu-mlp",
        "--input-shape",
        "4,3",
        "--input-shape",
        "2",
        "--dtype",
        "int64",
        "--int-high",
        "5",
        "--seed",
        "2",
    )
    _, name, notes, make_batch = model_and_batches(args)
    (first, second), target = make_batch(0)
    assert name == "example he-relu-mlp" and notes == [] and target is None
    assert first.shape == (4, 3) and second.shape == (2,) and first.dtype == torch.int64
    assert int(first.max()) < 5
    generator = torch.Generator().manual_seed(2)
    assert torch.equal(first, torch.randint(0, 5, (4, 3), generator=generator))
    assert not torch.equal(make_batch(1)[0][0], first)  # fresh inputs for each pass


def test_an_example_brings_its_own_input_shape() -> None:
    model, _, _, make_batch = model_and_batches(_args("report", "--example", "deep-sigmoid"))
    inputs, _ = make_batch(0)
    assert isinstance(model, nn.Module) and inputs.dtype == torch.float32
    model(inputs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("report",), "give a MODEL_FILE"),
        (("report", "m.pt", "--example", "deep-sigmoid"), "not both"),
        (("check", "gradcheckup.examples:SigmoidChain"), "give --input-shape"),
    ],
)
def test_missing_model_or_inputs(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model_and_batches(_args(*argv))


def test_annotation_escaping() -> None:
    from gradcheckup.exports import github_annotations

    finding = gcu.Finding(
        kind="nonfinite",
        severity="warning",
        where="a:b,c",
        value=1.0,
        threshold=None,
        message="50% done\nnext: x",
        hint="h",
    )
    report = gcu.check(nn.Linear(2, 2), torch.ones(1, 2)).model_copy(update={"findings": [finding]})
    (line,) = github_annotations(report)
    assert (
        line == "::warning title=gradcheckup nonfinite at a%3Ab%2Cc::50%25 done%0Anext: x Hint: h"
    )


# ---- issue 10: one-line errors -----------------------------------------------------------
def test_usage_errors_are_one_line_without_the_usage_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gradcheckup.cli import main

    assert main(["check", "m:f", "--input-shape", "a,b"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("gradcheckup check: error: argument --input-shape: expected")
    assert err.rstrip().endswith("(see gradcheckup check --help)")
    assert main(["--version"]) == EXIT_HEALTHY


def test_negative_sizes_reach_the_shape_check() -> None:
    from gradcheckup.cli import _negative_values_attached

    assert _negative_values_attached(["--input-shape", "-2,4", "--seed", "-1"]) == [
        "--input-shape=-2,4",
        "--seed",
        "-1",
    ]
    assert _negative_values_attached(["--input-shape", "--json"]) == ["--input-shape", "--json"]


def test_forward_failures_name_the_inputs_and_the_last_line() -> None:
    from gradcheckup.cli.inputs import forward_failures

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(
                "first line\nTraceback (most recent call last):\n  x\nIndexError: at last"
            )

    with pytest.raises(ValueError) as caught, forward_failures(torch.ones(2, 3)):
        Broken()(torch.ones(2, 3))
    assert str(caught.value) == (
        "the model's forward pass failed on (tensor(2, 3) float32): IndexError: at last"
    )
    assert isinstance(caught.value.__cause__, RuntimeError)
    # Errors not raised inside a module's forward pass through unchanged.
    with pytest.raises(KeyError), forward_failures(torch.ones(1)):
        raise KeyError("not the model")


# ---- issue 13: a fast, self-explaining command line -----------------------------------------
def test_threshold_flags_are_generated_from_config_with_its_descriptions() -> None:
    """The light table --help reads matches Config; if not, regenerate it with
    ``python -m gradcheckup.cli._flag_table``."""
    from gradcheckup.cli._flag_table import first_sentence, flags_from_config
    from gradcheckup.cli.config_flags import CONFIG_FLAGS

    assert flags_from_config() == CONFIG_FLAGS, "run: python -m gradcheckup.cli._flag_table"
    flagged = {flag.name for flag in CONFIG_FLAGS}
    # Structured settings are set with --set KEY=JSON.
    assert set(gcu.Config.model_fields) - flagged == {"recurrent_modules", "forward_probes"}
    # Without whitespace: argparse wraps lines, and breaks them after hyphens too.
    help_text = "".join(
        build_parser()._subparsers._group_actions[0].choices["check"].format_help().split()
    )
    for name in flagged:
        field = gcu.Config.model_fields[name]
        sentence = first_sentence(field.description)
        assert len(sentence) > 25 and field.description.startswith(sentence)
        assert "".join(f"{sentence} (default: {field.default})".split()) in help_text, name


def test_first_sentence_keeps_abbreviations() -> None:
    from gradcheckup.cli._flag_table import first_sentence

    assert first_sentence("One (Lu et al. 2019). Two.") == "One (Lu et al. 2019)."
    assert first_sentence("Loops, e.g. Validation runs. Rest.") == "Loops, e.g. Validation runs."
    assert first_sentence("Only one sentence") == "Only one sentence"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["check", "--help"],
        ["report", "--help"],
        ["--version"],
        ["check"],  # no factory
        ["report", "--input-shape", "-2,4"],
        ["report", "--loss", "nope"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_and_usage_errors_import_neither_torch_nor_pydantic(argv: list[str]) -> None:
    """What makes ``gradcheckup --help`` take milliseconds instead of seconds."""
    code = (
        "import sys\nfrom gradcheckup.cli import main\n"
        f"code = main({argv!r})\n"
        "print('modules', 'torch' in sys.modules, 'pydantic' in sys.modules, code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    last = result.stdout.strip().splitlines()[-1]
    assert last in ("modules False False 0", "modules False False 2"), result.stderr


def test_option_errors_found_before_running_import_no_torch() -> None:
    code = (
        "import sys\nfrom gradcheckup.cli import main\n"
        "code = main(['check', 'm:f', '--steps', '0'])\n"
        "print('torch' in sys.modules, code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "2"], result.stderr
    assert "--steps: expected at least 1, got 0" in result.stderr


def test_quiet_verdict_names_the_worst_findings_up_to_three() -> None:
    from gradcheckup.cli.outputs import _counts

    assert _counts(report_with_findings()) == "0 error(s), 0 warning(s)"
    many = report_with_findings(
        ("vanishing", "error", "layers.0"),
        ("dead_relu", "warning", "fc1/relu"),
        ("saturation", "warning", "fc2/sigmoid"),
        ("dead_relu", "warning", "fc3/relu"),
        ("dead_relu", "warning", "fc4/relu"),
        ("not_measured", "info", "x"),
    )
    assert _counts(many) == (
        "1 error(s), 4 warning(s): vanishing at layers.0 (error); dead_relu at fc1/relu "
        "(warning); saturation at fc2/sigmoid (warning); 2 more"
    )
