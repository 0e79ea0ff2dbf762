"""Rendering: readable in a terminal and in plain CI logs, and pinned by golden files.

The golden files (tests/golden/NAME.json: a saved report; NAME.txt: its rendering at
width 100 without colour) pin what users see first. After a deliberate change of the
output, regenerate the .txt files and review their diff:

    GRADCHECKUP_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py -k golden

GRADCHECKUP_UPDATE_GOLDEN=reports also rebuilds the saved reports from the models in
``_golden_reports`` (new numbers and findings).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import gradcheckup as gcu
from gradcheckup.rendering import flow_chart
from tests import models


def _render_to_text(report: gcu.Report, width: int = 100) -> str:
    console = Console(record=True, width=width, color_system=None, force_terminal=False)
    report.print(console)
    return console.export_text()


def test_report_shows_layers_chart_and_findings_with_hints() -> None:
    report = gcu.check(
        models.sigmoid_mlp(depth=12, width=16),
        torch.randn(32, 16),
        target=torch.randint(0, 10, (32,)),
    )
    text = _render_to_text(report)
    assert "UNHEALTHY" in text
    for layer in report.layers:
        assert f" {layer.name} " in text
    assert "Gradient flow" in text and "█" in text
    finding = report.findings_of("vanishing")[0]
    assert "vanishing at 0" in text and "fix:" in text
    assert f"{finding.value:.3g}" in text
    # One bar per layer in the chart, longest for the head (largest signal, log scale).
    chart = text.split("Gradient flow")[1].split("Activations")[0]
    bars = [line.count("█") for line in chart.splitlines() if "█" in line]
    assert len(bars) == len(report.layers)
    assert bars[-1] == max(bars) and bars[0] == min(bars)


def test_healthy_report_says_so() -> None:
    report = gcu.check(
        models.he_relu_mlp(depth=3), torch.randn(32, 32), target=torch.randint(0, 10, (32,))
    )
    text = _render_to_text(report)
    assert "HEALTHY" in text and "UNHEALTHY" not in text and "No findings" in text


def test_nonfinite_values_render() -> None:
    report = gcu.check(models.nonfinite_model(), torch.randn(8, 8))
    text = _render_to_text(report)
    assert "nonfinite at 0" in text and ("nan" in text or "inf" in text)


def test_plain_output_when_not_a_tty_and_with_no_color() -> None:
    script = (
        "import torch, gradcheckup as gcu\n"
        "from tests import models\n"
        "gcu.check(models.sigmoid_mlp(depth=6), torch.randn(8, 64)).print()\n"
    )
    for env_extra in ({}, {"NO_COLOR": "1"}):
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("FORCE_COLOR", "NO_COLOR")
        }
        env.update(env_extra, TERM="xterm-256color")
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )
        assert "\x1b[" not in result.stdout  # no ANSI escapes in a pipe
        assert "Gradient flow" in result.stdout and "Findings" in result.stdout


def test_no_color_is_respected_on_a_terminal(monkeypatch) -> None:
    report = gcu.check(models.sigmoid_mlp(depth=6), torch.randn(8, 64))

    def rendered() -> str:
        stream = io.StringIO()
        report.print(Console(file=stream, force_terminal=True, width=100))
        return stream.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[31" in rendered() or "\x1b[1;31" in rendered()  # red for the error
    monkeypatch.setenv("NO_COLOR", "1")
    plain = rendered()
    assert "\x1b[31" not in plain and "\x1b[1;31" not in plain and "vanishing" in plain


def test_render_function_matches_print() -> None:
    report = gcu.check(models.he_relu_mlp(depth=2), torch.randn(16, 32))
    a = Console(record=True, width=90, color_system=None)
    b = Console(record=True, width=90, color_system=None)
    report.print(a)
    gcu.render(report, console=b)
    assert a.export_text() == b.export_text()


def test_many_activation_sites_show_the_worst_ten_and_say_so() -> None:
    model = models.SigmoidChain(depth=16, width=8)
    with torch.no_grad():
        model.layers[9].weight.mul_(50.0)  # saturates exactly one site: layers.9/sigmoid
    report = gcu.check(model, torch.randn(32, 8))
    text = _render_to_text(report, width=120)
    table = text.split("Activations")[1].split("Findings")[0]
    assert "layers.9/sigmoid " in table
    assert "6 more site(s) with the lowest dead/saturated fractions not shown" in table


# --- golden renders ---------------------------------------------------------------------
# Saved reports (tests/golden/*.json) rendered at a fixed width without colour and compared
# with tests/golden/*.txt. Rendering from JSON pins what users see first without depending
# on numeric noise. GRADCHECKUP_UPDATE_GOLDEN=1 rewrites the .txt files from the saved
# reports; GRADCHECKUP_UPDATE_GOLDEN=reports also rebuilds the reports (new numbers and
# findings: review the diff of both).

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_CASES = ("deep_sigmoid", "healthy_residual", "rnn_training_steps")


def _golden_reports() -> dict[str, gcu.Report]:
    """How the saved reports were made (run only when rebuilding them)."""
    from gradcheckup.examples import LastStepClassifier, SigmoidChain

    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 16), torch.randn(64, 1)
    reports = {
        "deep_sigmoid": gcu.check(SigmoidChain(depth=12, skip=False), inputs, target=targets),
        "healthy_residual": gcu.check(SigmoidChain(depth=12, skip=True), inputs, target=targets),
    }
    torch.manual_seed(0)
    model = LastStepClassifier("rnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gcu.watch(model, optimizer=optimizer, config=gcu.Config(max_grad_norm=1.0)) as monitor:
        for step in range(12):
            optimizer.zero_grad()
            logits = model(torch.randn(8, 30, 16))
            torch.nn.functional.cross_entropy(logits, torch.randint(0, 4, (8,))).backward()
            if step < 6:  # clipped loosely at first, then not at all
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
    reports["rnn_training_steps"] = monitor.report()
    return reports


def _golden_text(report: gcu.Report) -> str:
    console = Console(width=100, color_system=None, record=True, force_terminal=False)
    report.print(console)
    return console.export_text()


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_rendering_matches_the_golden_file(case: str) -> None:
    update = os.environ.get("GRADCHECKUP_UPDATE_GOLDEN", "")
    saved = GOLDEN / f"{case}.json"
    if update == "reports":
        saved.write_text(_golden_reports()[case].model_dump_json(indent=2) + "\n")
    report = gcu.Report.model_validate_json(saved.read_text(encoding="utf-8"))
    text = _golden_text(report)
    expected = GOLDEN / f"{case}.txt"
    if update:
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8")


# --- colours come from the findings ----------------------------------------------------


def _saved(case: str) -> gcu.Report:
    return gcu.Report.model_validate_json((GOLDEN / f"{case}.json").read_text(encoding="utf-8"))


def _bar_colours(report: gcu.Report) -> dict[str, str]:
    """Layer name -> style of its bar in the flow chart ('' when unstyled)."""
    chart = flow_chart(report, Console(width=100, color_system=None))
    colours = {}
    for line in chart.renderables[1:]:
        name = line.plain.split()[0]
        colours[name] = "".join(str(span.style) for span in line.spans)
    return colours


def test_bars_are_coloured_for_the_layers_a_depth_finding_is_about() -> None:
    report = _saved("deep_sigmoid")
    colours = _bar_colours(report)
    (finding,) = report.findings_of("vanishing")
    # It names layers.0 and compared the largest signals of the ends: layers.2 and head.
    assert "'layers.2'" in finding.message and "'head'" in finding.message
    assert {name for name, colour in colours.items() if colour} == {"layers.0", "layers.2", "head"}
    assert {colours["layers.0"], colours["layers.2"], colours["head"]} == {"red"}


def test_a_tiny_layer_in_a_healthy_report_is_not_coloured() -> None:
    # Attention query/key projections get ~1e-6 of the rest at init; the report is healthy,
    # so the chart must not paint them red by comparing with the largest bar.
    report = _saved("healthy_residual")
    layers = [
        layer.model_copy(update={"unit_signal": 1e-7}) if layer.name == "layers.5" else layer
        for layer in report.layers
    ]
    tiny = report.model_copy(update={"layers": layers})
    assert tiny.ok and set(_bar_colours(tiny).values()) == {""}


def test_warnings_are_yellow_and_a_collapse_colours_only_its_layer() -> None:
    report = _saved("healthy_residual")
    warning = gcu.Finding(
        kind="exploding",
        severity="warning",
        where="layers.0",
        value=20.0,
        threshold=10.0,
        message="grows",
        hint="-",
    )
    collapse = warning.model_copy(
        update={"kind": "vanishing", "severity": "error", "where": "layers.7", "threshold": None}
    )
    colours = _bar_colours(report.model_copy(update={"findings": [collapse, warning]}))
    styled = {name: colour for name, colour in colours.items() if colour}
    # window of 13 layers at 0.25 is 3: the first end is the largest of layers.0-2, the
    # last end the logits layer, head.
    assert styled == {"layers.0": "yellow", "head": "yellow", "layers.7": "red"}
