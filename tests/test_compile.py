"""Issue 14 item 4: a compiled model is measured like the eager one where the probes can
run, and the report says which probes could not run, and why (torch.compile with the
default inductor backend on CPU; a few tests use the cheaper eager backends)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.cli import main
from gradcheckup.report import Report
from tests.helpers import importable_module
from tests.test_trust_watch import grad_norms, mlp

# Inductor's own imports use torch.jit.script_method, which torch itself deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

# Inductor may order float math differently from eager; measured on CPU (torch 2.13),
# relative: parameter gradient norms agree to 5e-8, step norms to 7e-8 over three
# clipped SGD steps, weight norms exactly. 1e-5 leaves room for other CPUs and kernels.
TOLERANCE = 1e-5
LAYERS = ["inp", "block.lin", "out"]
NOT_SEEN = "no forward pass was seen"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


class Net(nn.Module):
    """A user's model class: dynamo compiles its forward (torch.nn's own classes are in
    dynamo's skip list, so ``nn.Sequential.compile()`` compiles nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.block = Block()
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(torch.relu(self.inp(x))))


def net() -> Net:
    torch.manual_seed(0)
    return Net()


def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(4, 8, generator=generator) for _ in range(3)]


def train(
    model: nn.Module, watched: nn.Module, compile_inside: Callable[[], nn.Module] | None = None
) -> Report:
    """Three clipped SGD steps of ``model``'s parameters under a watch of ``watched``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = watched
    with gcu.watch(watched, optimizer=optimizer) as monitor:
        if compile_inside is not None:
            runner = compile_inside()
        for x in batches():
            optimizer.zero_grad()
            runner(x).pow(2).sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
    return monitor.report()


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Each test compiles from scratch (inductor's on-disk cache keeps that quick)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def eager() -> Report:
    model = net()
    return train(model, model)


def assert_parameter_statistics_match(report: Report, eager: Report) -> None:
    """Layer by layer and step by step: what the parameter and step probes measure."""
    assert [layer.name for layer in report.layers] == [layer.name for layer in eager.layers]
    for layer in report.layers:
        reference = eager.layer(layer.name)
        assert layer.passes == reference.passes
        for field in ("grad_norm", "bias_grad_norm", "weight_norm"):
            assert getattr(layer, field) == pytest.approx(getattr(reference, field), rel=TOLERANCE)
    assert len(report.steps) == len(eager.steps) == 3
    for step, reference in zip(report.steps, eager.steps, strict=True):
        assert step.grad_norm == pytest.approx(reference.grad_norm, rel=TOLERANCE)
        assert step.grad_norm_at_step == pytest.approx(0.5, rel=TOLERANCE)  # clipped
        assert [(call.kind, call.bound) for call in step.clip_calls] == [("norm", 0.5)]
        assert step.clip_calls[0].returned_norm == pytest.approx(reference.grad_norm, rel=TOLERANCE)


def assert_forward_probes_reported_unavailable(report: Report) -> None:
    """Nothing the forward hooks measure, said in the notes and as an error."""
    assert report.passes == 0 and report.activations == [] and report.probe_errors == []
    assert all(layer.output_grad_norm is None for layer in report.layers)
    assert any(NOT_SEEN in note and "torch.compile" in note for note in report.unavailable)
    assert [f.kind.value for f in report.findings if f.severity.value == "error"] == [
        "not_measured"
    ]
    assert not report.ok


# -- watch: every way of compiling -------------------------------------------------------------
@pytest.mark.parametrize("fullgraph", [False, True], ids=["graph-breaks-allowed", "fullgraph"])
@pytest.mark.parametrize("when", ["before", "inside"])
@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_a_compiled_model_gives_the_eager_parameter_statistics(
    how: str, when: str, fullgraph: bool, eager: Report
) -> None:
    model = net()

    def compiled() -> nn.Module:
        if how == "module.compile":
            model.compile(fullgraph=fullgraph)
            return model
        return torch.compile(model, fullgraph=fullgraph)

    if when == "inside":
        report = train(model, model, compile_inside=compiled)
    else:
        runner = compiled()
        runner(batches()[0]).sum().backward()  # compiled before the watch opens
        model.zero_grad(set_to_none=True)
        report = train(model, runner)  # model = torch.compile(model); watch(model)
    assert eager.passes == 3 and eager.activations and eager.findings == []
    assert_parameter_statistics_match(report, eager)
    assert_forward_probes_reported_unavailable(report)


def test_wrappers_around_a_compiled_model_count_no_pass_they_cannot_see(eager: Report) -> None:
    model = net()
    wrapped = nn.DataParallel(torch.compile(model))
    report = train(model, wrapped)
    assert_parameter_statistics_match(report, eager)
    assert_forward_probes_reported_unavailable(report)


def test_passes_run_eagerly_inside_the_watch_are_measured_whole(eager: Report) -> None:
    """The recipe for the forward probes: the measured steps run eagerly."""
    model = net()
    compiled = torch.compile(model)
    compiled(batches()[0]).sum().backward()
    model.zero_grad(set_to_none=True)
    with torch.compiler.set_stance("force_eager"):
        report = train(model, compiled)
    assert report.passes == 3 and report.unavailable == [] and report.findings == []
    assert report.model_dump(include={"layers", "activations"}) == eager.model_dump(
        include={"layers", "activations"}
    )


class Outer(nn.Module):
    def __init__(self, how: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(8, 16)
        self.block = Block()
        if how == "torch.compile":
            self.block = torch.compile(self.block)
        elif how == "module.compile":
            self.block.compile()
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.first(x))))


@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_a_compiled_submodule_is_named_as_written_and_said_unmeasured(how: str) -> None:
    reports = []
    for model in (Outer(None), Outer(how)):
        with gcu.watch(model) as monitor:
            for x in batches():
                model(x).sum().backward()
        reports.append(monitor.report())
    eager, report = reports
    assert sorted(layer.name for layer in report.layers) == ["block.lin", "first", "head"]
    for layer in report.layers:
        reference = eager.layer(layer.name)
        assert layer.grad_norm == pytest.approx(reference.grad_norm, rel=TOLERANCE)
        measured = layer.name != "block.lin"
        assert (layer.output_grad_norm is not None) is measured
        if measured:
            assert layer.output_grad_norm == pytest.approx(
                reference.output_grad_norm, rel=TOLERANCE
            )
    assert report.passes == 3 and report.probe_errors == []
    assert [site.name for site in report.activations] == ["first/relu"]
    assert [note for note in report.unavailable if note.startswith("forward-pass probes")] == [
        "forward-pass probes (backward signal, gains, activation sites, time steps) inside "
        "block: compiled with torch.compile, whose code runs no module hooks; parameter "
        "statistics only for the layers there"
    ]


# -- check() and the command line run the compiled model eagerly ----------------------------------
@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_check_of_a_compiled_model_is_the_eager_check(how: str) -> None:
    x = batches()[0]
    expected = gcu.check(net(), x)
    model = net()
    if how == "module.compile":
        model.compile()
        compiled: nn.Module = model
    else:
        compiled = torch.compile(model)
    compiled(x).sum().backward()  # compiled and run before the check
    report = gcu.check(compiled, x)
    assert [layer.name for layer in report.layers] == LAYERS
    assert report.unavailable == [] and report.activations
    assert report.model_dump(include={"layers", "activations", "findings", "passes"}) == (
        expected.model_dump(include={"layers", "activations", "findings", "passes"})
    )


FACTORY = """
import torch
from tests.test_compile import net

def eager():
    return net()

def compiled():
    return torch.compile(net())

def compiled_in_place():
    model = net()
    model.compile()
    return model
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    importable_module(tmp_path, monkeypatch, "compile_models", FACTORY)
    return tmp_path


@pytest.mark.parametrize("steps", ["1", "2"])
def test_the_command_line_reports_a_compiled_forward_as_the_eager_one(
    factories: Path, steps: str
) -> None:
    layers = {}
    for factory in ("eager", "compiled", "compiled_in_place"):
        out = factories / f"{factory}.json"
        argv = ["check", f"compile_models:{factory}", "--input-shape", "4,8", "--steps", steps]
        assert main([*argv, "--json", str(out), "--quiet"]) in (0, 1)
        saved = json.loads(out.read_text())
        assert saved["unavailable"] == []
        layers[factory] = {layer["name"]: layer for layer in saved["layers"]}
    assert list(layers["eager"]) == LAYERS
    assert layers["compiled"] == layers["eager"] == layers["compiled_in_place"]


# -- eager and aot_eager backends (issue 10) -------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_inside_a_watch_measures_parameters_only(backend: str) -> None:
    model = mlp()
    x = torch.randn(4, 8)
    with gcu.watch(model) as monitor:
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        compiled(x).sum().backward()
    report = monitor.report()
    names = [layer.name for layer in report.layers]
    assert [layer.grad_norm for layer in report.layers] == pytest.approx(
        grad_norms(model, names), rel=1e-5
    )
    assert report.passes == 0 and report.activations == [] and report.probe_errors == []
    assert any(NOT_SEEN in note for note in report.unavailable)
    assert any("torch.compile" in note for note in report.unavailable)
    assert not report.ok


def test_a_model_compiled_before_the_watch_is_not_reported_healthy() -> None:
    model = mlp()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU unit dead
    compiled = torch.compile(model, backend="eager")
    compiled(torch.randn(4, 8)).sum().backward()
    with gcu.watch(model) as monitor:
        compiled(torch.randn(4, 8)).sum().backward()
    report = monitor.report()
    assert not report.ok
    errors = [f for f in report.findings if f.severity.value == "error"]
    assert any(f.kind.value == "dead_relu" for f in errors) or (
        report.passes == 0 and any(NOT_SEEN in note for note in report.unavailable)
    )


def test_a_compiled_submodule_inside_an_eager_forward_runs_under_the_activation_mode() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(8, 8)
            self.block = torch.compile(
                nn.Sequential(nn.Linear(8, 8), nn.Tanh()), fullgraph=True, backend="eager"
            )
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.block(self.first(x))))

    model = Outer()
    with gcu.watch(model) as monitor:
        model(torch.randn(4, 8)).sum().backward()
    report = monitor.report()
    assert report.passes == 1 and report.probe_errors == []
    assert report.layer("first").grad_norm == pytest.approx(grad_norms(model, ["first"])[0])
