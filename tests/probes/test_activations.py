"""Dead-unit and saturation statistics for modules and functional calls."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes import ProbeContext
from gradcheckup.probes.activations import ActivationProbe
from tests.helpers import probe_totals
from tests.models import biased_linear

RELU_FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU(inplace)": nn.ReLU(inplace=True),
    "F.relu": F.relu,
    "F.relu(inplace)": lambda x: F.relu(x, inplace=True),
    "torch.relu": torch.relu,
    "x.relu()": lambda x: x.relu(),
    "x.relu_()": lambda x: x.relu_(),
    "torch.relu_": torch.relu_,
    "F.relu6": F.relu6,
    # nn.ReLU6 calls F.hardtanh(x, 0.0, 6.0): the same function, reported as relu6.
    "nn.ReLU6": nn.ReLU6(),
    "nn.ReLU6(inplace)": nn.ReLU6(inplace=True),
    "F.relu6(inplace)": lambda x: F.relu6(x, inplace=True),
    "F.hardtanh(x, 0, 6)": lambda x: F.hardtanh(x, 0.0, 6.0),
    "F.hardtanh_(x, 0, 6)": lambda x: F.hardtanh_(x, 0.0, 6.0),
}


class LinearThen(nn.Module):
    def __init__(
        self, activation: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module
    ) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(layer.out_features, 2)
        self.activation = activation  # a module registers as a child; a function does not

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activation(self.layer(x)))


@pytest.mark.parametrize("form", list(RELU_FORMS))
def test_bias_forcing_seventy_percent_negative_gives_dead_fraction_070(
    form: str, device: torch.device
) -> None:
    model = LinearThen(RELU_FORMS[form], biased_linear(8, 20, dead_fraction=0.7)).to(device)
    report = gcu.check(model, torch.randn(32, 8, device=device))
    (site,) = report.activations
    assert site.dead_fraction == pytest.approx(0.70)
    assert site.units == 20 and site.samples_per_unit == 32
    # Module or functional call alike, the site is named after the layer it follows.
    is_module = isinstance(RELU_FORMS[form], nn.Module)
    assert site.name == f"layer/{site.function}"
    assert site.owner == ("activation" if is_module else "")
    assert site.function == ("relu6" if "6" in form else "relu")
    finding = report.findings_of("dead_relu")[0]
    # 0.7 lies between dead_relu_warn_fraction (0.6) and dead_relu_fraction (0.8).
    assert finding.severity == "warning" and finding.value == pytest.approx(0.70)
    assert report.probe_errors == []


def test_functional_call_inside_a_submodule_is_attributed_to_it() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = biased_linear(4, 10, dead_fraction=0.3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(F.relu(self.fc(x))) + F.relu(self.fc(x) - 5.0)

    model = nn.Sequential(Block(), nn.Linear(10, 1))
    report = gcu.check(model, torch.randn(16, 4))
    names = {site.name: site for site in report.activations}
    assert set(names) == {"0.fc/relu", "0.fc/relu#2", "0.fc/sigmoid"}
    assert names["0.fc/relu"].dead_fraction == pytest.approx(0.3)
    assert names["0.fc/relu#2"].dead_fraction == pytest.approx(1.0)  # every unit < 5 - 1
    assert all(site.owner == "0" for site in names.values())


def test_saturated_fraction_matches_direct_count() -> None:
    layer = nn.Linear(6, 40)
    with torch.no_grad():
        layer.weight.mul_(8.0)
    model = nn.Sequential(layer, nn.Tanh(), nn.Linear(40, 1))
    x = torch.randn(50, 6)
    report = gcu.check(model, x)
    with torch.no_grad():
        out = torch.tanh(layer(x))
    margin = report.config.saturation_margin
    expected = float((out.abs() > 1 - 2 * margin).float().mean())
    assert report.activation("0/tanh").saturated_fraction == pytest.approx(expected)
    assert 0.3 < expected < 1.0  # the check is meaningful


def test_sigmoid_saturation_definition() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([-10.0, -4.0, 0.0, 4.0, 4.7, 10.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(x * 0 + self.bias)

    report = gcu.check(Fixed(), torch.zeros(4, 6))
    # sigmoid(-10)=4.5e-5 and sigmoid(10) saturated; sigmoid(4.7)=0.991 > 0.99 too.
    assert report.activation("sigmoid").saturated_fraction == pytest.approx(3 / 6)


def test_unit_is_channel_for_images_and_feature_for_sequences() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
    report = gcu.check(conv, torch.randn(2, 3, 8, 8))
    site = report.activation("0/relu")
    assert (
        site.units == 6 and site.unit_axis == "channels (dim 1)" and site.samples_per_unit == 2 * 36
    )

    seq = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
    report = gcu.check(seq, torch.randn(2, 9, 5))
    site = report.activation("0/relu")
    assert (
        site.units == 7 and site.unit_axis == "features (last dim)" and site.samples_per_unit == 18
    )


def test_three_d_tensor_after_conv1d_is_per_channel() -> None:
    class Conv1dNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 12, 3, padding=1)
            self.norm = nn.BatchNorm1d(12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            direct = F.relu(self.conv(x))  # (N, C, L) straight from Conv1d
            shifted = F.relu(self.norm(self.conv(x)) + 0.5)  # through BatchNorm1d and an add
            return direct + shifted

    report = gcu.check(Conv1dNet(), torch.randn(3, 4, 12))
    for name in ("conv/relu", "norm/relu"):
        site = report.activation(name)
        assert (
            site.unit_axis == "channels (dim 1)"
            and site.units == 12
            and site.samples_per_unit == 36
        )


def test_empty_batch_is_not_dead() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with gcu.watch(model) as monitor:
        model(torch.randn(0, 3)).sum().backward()
    report = monitor.report()
    assert report.activations == []
    assert report.findings_of("dead_relu") == []


def test_watch_accumulates_activity_across_passes() -> None:
    # Units 0-9 are positive only for positive inputs, 10-19 only for negative ones.
    layer = nn.Linear(1, 20, bias=False)
    with torch.no_grad():
        layer.weight[:10] = 1.0
        layer.weight[10:] = -1.0
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(20, 1))
    positive, negative = torch.rand(16, 1) + 0.1, -torch.rand(16, 1) - 0.1
    with gcu.watch(model) as monitor:
        model(positive).sum().backward()
        after_one = monitor.report()
        model(negative).sum().backward()
    assert after_one.activation("0/relu").dead_fraction == pytest.approx(0.5)
    final = monitor.report()
    assert final.activation("0/relu").dead_fraction == 0.0
    site = final.activation("0/relu")
    assert site.samples_per_unit == 32 and site.calls == 2


def test_no_grad_passes_are_not_recorded_unless_asked() -> None:
    model = nn.Sequential(biased_linear(4, 10, 0.5), nn.ReLU(), nn.Linear(10, 1))
    with gcu.watch(model) as monitor, torch.no_grad():
        model(torch.randn(8, 4))
    assert monitor.report().activations == [] and monitor.report().passes == 0

    config = gcu.Config(include_no_grad_passes=True)
    with gcu.watch(model, config=config) as monitor, torch.no_grad():
        model(torch.randn(8, 4))
    assert monitor.report().activation("0/relu").dead_fraction == pytest.approx(0.5)


def test_few_observations_downgrade_dead_relu_to_info() -> None:
    model = LinearThen(nn.ReLU(), biased_linear(8, 10, dead_fraction=0.8))
    report = gcu.check(model, torch.randn(3, 8))
    (finding,) = report.findings_of("dead_relu")
    assert finding.severity == "info" and "too few" in finding.message


def test_one_activation_module_reused_after_several_layers_is_one_site_per_call() -> None:
    class SharedActivation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = biased_linear(4, 10, dead_fraction=0.2)
            self.second = biased_linear(10, 20, dead_fraction=0.5)
            self.act = nn.ReLU()
            self.head = nn.Linear(20, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.second(self.act(self.first(x)))))

    model = SharedActivation()
    with gcu.watch(model) as monitor:
        for _ in range(2):
            model(torch.randn(16, 4)).sum().backward()
    report = monitor.report()
    dead = {site.name: site.dead_fraction for site in report.activations}
    assert dead == pytest.approx({"first/relu": 0.2, "second/relu": 0.5})
    assert all(site.calls == 2 and site.owner == "act" for site in report.activations)


# -- ActivationProbe on its own: totals decoded from its device values ------------------


def _observed(
    calls: Callable[[], object],
    margin: float = 0.01,
    next_call: Callable[[str], tuple[str, str]] | None = None,
):
    """Run ``calls`` under an ActivationProbe driven as the tracker drives it; by default
    every call is its own site, named after the function and its position."""
    probe = ActivationProbe(ProbeContext(), saturation_margin=margin)
    counts: dict[str, int] = {}

    def numbered(function: str) -> tuple[str, str]:
        counts[function] = counts.get(function, 0) + 1
        return "owner", f"{function}#{counts[function]}"

    probe.start_forward(next_call or numbered)
    try:
        calls()
    finally:
        probe.end_forward()
    return probe, probe_totals(probe, probe._context)


def test_activation_totals_equal_direct_counts() -> None:
    generator = torch.Generator().manual_seed(0)
    pre_relu = torch.randn(64, 10, generator=generator) - torch.linspace(-2, 4, 10)
    pre_sigmoid = torch.randn(32, 6, generator=generator) * 8
    pre_tanh = torch.randn(5, 3, 7, generator=generator) * 3
    outputs = {}

    def calls() -> None:
        outputs["relu"] = F.relu(pre_relu)
        outputs["sigmoid"] = torch.sigmoid(pre_sigmoid)
        outputs["tanh"] = pre_tanh.tanh()

    probe, totals = _observed(calls, margin=0.01)

    never_positive = (outputs["relu"] <= 0).all(dim=0)  # per feature over the batch
    sigmoid_saturated = (outputs["sigmoid"] < 0.01) | (outputs["sigmoid"] > 0.99)
    tanh_saturated = outputs["tanh"].abs() > 0.98
    assert list(totals) == ["relu#1", "sigmoid#1", "tanh#1"]
    relu, sigmoid, tanh = totals.values()
    assert relu.dead_fraction == pytest.approx(never_positive.double().mean().item())
    assert 0 < relu.dead_fraction < 1 and relu.saturated_fraction is None
    assert (relu.units, relu.samples_per_unit, relu.unit_axis) == (10, 64, "features (last dim)")
    assert sigmoid.saturated_fraction == pytest.approx(sigmoid_saturated.double().mean().item())
    assert 0 < sigmoid.saturated_fraction < 1 and sigmoid.dead_fraction is None
    assert tanh.saturated_fraction == pytest.approx(tanh_saturated.double().mean().item())
    assert (tanh.units, tanh.samples_per_unit) == (7, 15)
    assert all(site.owner == "owner" and site.calls == 1 for site in totals.values())
    assert probe.unavailable() == []


def test_activation_totals_skip_and_report_calls_with_other_units() -> None:
    def calls() -> None:
        F.relu(torch.tensor([[1.0, -1.0, -1.0]]))
        F.relu(torch.tensor([[1.0, -1.0, -1.0, 1.0]]))  # 4 units where the site had 3

    probe, totals = _observed(calls, next_call=lambda function: ("", function))
    assert totals["relu"].calls == 1 and totals["relu"].dead_fraction == pytest.approx(2 / 3)
    assert probe.unavailable() == [
        "activation site 'relu': calls with a different number of units were skipped"
    ]


def test_activation_mode_failures_are_recorded_through_the_probe(monkeypatch) -> None:
    def broken(self, spec, source, output):
        raise RuntimeError("observe bug")

    monkeypatch.setattr(ActivationProbe, "observe", broken)
    x = torch.randn(4, 3)
    probe, totals = _observed(lambda: F.relu(x))
    assert totals == {}
    assert probe._context.errors.summary() == ["activation probe (relu): RuntimeError: observe bug"]


# -- every activation whose derivative can be exactly 0: measured against autograd -------


class ShiftedActivation(nn.Module):
    """activation(x + shift): a trainable zero shift gives the model a gradient."""

    def __init__(self, activation: Callable[[torch.Tensor], torch.Tensor], units: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(units))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.shift).sum(dim=1, keepdim=True)


# form -> (function reported, family: which fraction is measured)
FLAT_FORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str, str]] = {
    "nn.ReLU6": (nn.ReLU6(), "relu6", "dead"),
    "F.relu6": (F.relu6, "relu6", "dead"),
    "nn.Hardswish": (nn.Hardswish(), "hardswish", "dead"),
    "nn.Hardswish(inplace)": (nn.Hardswish(inplace=True), "hardswish", "dead"),
    "F.hardswish": (F.hardswish, "hardswish", "dead"),
    "nn.Hardtanh": (nn.Hardtanh(), "hardtanh", "saturated"),
    "nn.Hardtanh(-2, 3, inplace)": (nn.Hardtanh(-2.0, 3.0, inplace=True), "hardtanh", "saturated"),
    "F.hardtanh(min_val=-0.5, max_val=2)": (
        lambda x: F.hardtanh(x, min_val=-0.5, max_val=2.0),
        "hardtanh",
        "saturated",
    ),
    "nn.Hardsigmoid": (nn.Hardsigmoid(), "hardsigmoid", "saturated"),
    "nn.Hardsigmoid(inplace)": (nn.Hardsigmoid(inplace=True), "hardsigmoid", "saturated"),
    "F.hardsigmoid": (F.hardsigmoid, "hardsigmoid", "saturated"),
}


@pytest.mark.parametrize("form", list(FLAT_FORMS))
def test_dead_units_and_flat_outputs_are_where_autograd_gives_exactly_zero(form: str) -> None:
    activation, function, measured = FLAT_FORMS[form]
    generator = torch.Generator().manual_seed(0)
    # 12 units shifted from -9 to 9: some flat on every sample, some never, some partly.
    x = torch.randn(40, 12, generator=generator) * 2 + torch.linspace(-9, 9, 12)
    report = gcu.check(ShiftedActivation(activation, 12), x, loss_fn=lambda out: out.sum())

    inputs = x.clone().requires_grad_(True)
    (derivative,) = torch.autograd.grad(activation(inputs.clone()).sum(), inputs)
    flat = derivative == 0
    (site,) = report.activations
    assert site.function == function and site.units == 12 and site.samples_per_unit == 40
    is_module = isinstance(activation, nn.Module)
    assert site.name == ("activation" if is_module else function)
    if measured == "dead":
        expected = flat.all(dim=0).double().mean().item()
        assert site.dead_fraction == pytest.approx(expected) and site.saturated_fraction is None
    else:
        expected = flat.double().mean().item()
        assert site.saturated_fraction == pytest.approx(expected) and site.dead_fraction is None
    assert 0 < expected < 1  # the comparison is meaningful
    assert not site.nonfinite and report.probe_errors == []


def test_hardswish_at_exactly_zero_input_is_active() -> None:
    # Hardswish(0) = 0 but its slope there is 1/2: a zero-initialised layer is not dead.
    layer = nn.Linear(4, 6)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    report = gcu.check(LinearThen(nn.Hardswish(), layer), torch.randn(16, 4))
    assert report.activation("layer/hardswish").dead_fraction == 0.0


def test_relu6_dead_means_never_strictly_between_0_and_6() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([-1.0, 0.0, 3.0, 5.9, 6.0, 10.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu6(x * 0 + self.bias)

    report = gcu.check(Fixed(), torch.zeros(8, 6))
    # Stuck at 0 (bias -1, 0) or at 6 (bias 6, 10): 4 of 6 units pass no gradient.
    assert report.activation("relu6").dead_fraction == pytest.approx(4 / 6)


# -- activations that were not finite ------------------------------------------------------


def _nan_weight_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3),
        nn.Hardswish(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.Sigmoid(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


def test_nan_forward_gives_only_the_nonfinite_finding() -> None:
    report = gcu.check(_nan_weight_model(), torch.randn(16, 3, 10, 10))
    assert {f.kind.value for f in report.findings if f.severity != "info"} == {"nonfinite"}
    assert report.findings_of("dead_relu") == [] and report.findings_of("saturation") == []
    assert [site.nonfinite for site in report.activations] == [True] * 5


def test_nonfinite_flag_holds_over_passes_and_stays_off_when_finite() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1), nn.Sigmoid())
    with gcu.watch(model) as monitor:
        model(torch.randn(8, 4)).sum().backward()
        clean = monitor.report()
        model(torch.full((8, 4), float("nan"))).sum().backward()
        model(torch.randn(8, 4)).sum().backward()
    assert [site.nonfinite for site in clean.activations] == [False, False]
    assert [site.nonfinite for site in monitor.report().activations] == [True, True]


def test_activation_sums_record_no_graph() -> None:
    # The probe computes from detached outputs: nothing it keeps may hold a graph.
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Hardswish(), nn.Linear(8, 2), nn.Tanh()
    )
    with gcu.watch(model, config=gcu.Config(sample_every=1)) as monitor:
        for _ in range(2):
            model(torch.randn(5, 4)).sum().backward()
    probe = monitor._activations
    kept = [*probe._activity.values.values(), *probe._sums.values.values()]
    assert len(kept) == 4  # relu and hardswish activity, tanh peak and saturated count
    assert all(not value.requires_grad and value.grad_fn is None for value in kept)
    fetched = probe.device_values().values()  # the activity scores travel as one vector
    assert all(not value.requires_grad and value.grad_fn is None for value in fetched)
