"""Training-step diagnostics: clipping, AMP, accumulation, step history."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcheckup as gcu
from gradcheckup.probes import HookSet, ProbeContext
from gradcheckup.probes.inventory import take_inventory
from gradcheckup.probes.parameters import ParameterProbe
from gradcheckup.probes.steps import LayerSlots, StepProbe
from gradcheckup.testing import assert_clipped
from tests.helpers import hook_count, probe_totals

BOUND = 1.0


def _loud_model() -> nn.Sequential:
    """Gradient norms of ~10-100 per step on the batches below."""
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(6.0)
    return model


def _batches(count: int = 6, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        (torch.randn(size, 8, generator=generator) * 3, torch.randn(size, 4, generator=generator))
        for _ in range(count)
    ]


def _train(model, optimizer, batches, clip=None, config=None, accumulate=1, before_step=None):
    config = config or gcu.Config(max_grad_norm=BOUND)
    with gcu.watch(model, optimizer=optimizer, config=config) as monitor:
        for position, (x, y) in enumerate(batches):
            loss = F.mse_loss(model(x), y) / accumulate
            loss.backward()
            if (position + 1) % accumulate:
                continue
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if before_step is not None:
                before_step(position)
            optimizer.step()
            optimizer.zero_grad()
    return monitor.report()


def test_unclipped_loud_training_is_missing_clipping() -> None:
    model = _loud_model()
    report = _train(model, torch.optim.SGD(model.parameters(), lr=1e-4), _batches())
    (finding,) = report.findings_of("missing_clipping")
    assert finding.severity == "error" and finding.where == "optimizer 0, step 0"
    assert finding.value == pytest.approx(report.steps[0].grad_norm_at_step)
    assert finding.value > BOUND and "no clip_grad_norm_ call was observed" in finding.message
    assert len(report.steps) == 6 and all(step.clip_calls == [] for step in report.steps)
    assert not report.ok


def test_step_norm_equals_direct_computation() -> None:
    model = _loud_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same model
    batches = _batches(count=2)
    report = _train(model, optimizer, batches)
    for step, (x, y) in zip(report.steps, batches, strict=True):
        grads = torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))
        expected = float(torch.cat([g.flatten() for g in grads]).norm())
        assert step.grad_norm_at_step == pytest.approx(expected, rel=1e-5)
        assert step.grad_norm == pytest.approx(expected, rel=1e-5)


def test_clipping_at_the_bound_is_clean() -> None:
    model = _loud_model()
    report = _train(model, torch.optim.SGD(model.parameters(), lr=1e-4), _batches(), clip=BOUND)
    assert report.findings_of("missing_clipping") == []
    for step in report.steps:
        (clip,) = step.clip_calls
        assert clip.kind == "norm" and clip.bound == BOUND and not clip.before_unscale
        assert step.grad_norm == pytest.approx(clip.returned_norm) and step.grad_norm > BOUND
        assert step.grad_norm_at_step == pytest.approx(BOUND, rel=1e-4)
    assert_clipped(report, max_norm=BOUND)


def test_clipping_imported_by_name_before_watching_is_seen() -> None:
    from torch.nn.utils import clip_grad_norm_

    model = _loud_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    with gcu.watch(model, optimizer=optimizer, config=gcu.Config(max_grad_norm=BOUND)) as monitor:
        for x, y in _batches(count=2):
            F.mse_loss(model(x), y).backward()
            clip_grad_norm_(model.parameters(), BOUND)
            optimizer.step()
            optimizer.zero_grad()
    assert [len(step.clip_calls) for step in monitor.report().steps] == [1, 1]


def test_clipping_too_loosely_is_missing_clipping() -> None:
    model = _loud_model()
    report = _train(model, torch.optim.SGD(model.parameters(), lr=1e-4), _batches(), clip=5.0)
    (finding,) = report.findings_of("missing_clipping")
    assert "max_norm 5 on 6 of 6 step(s) (looser than required)" in finding.message
    with pytest.raises(AssertionError, match=r"optimizer 0, step 0: .*gradient norm 5"):
        assert_clipped(report, max_norm=BOUND)


def test_accumulating_four_micro_batches_then_clipping_is_clean() -> None:
    model = _loud_model()
    report = _train(
        model, torch.optim.SGD(model.parameters(), lr=1e-4), _batches(8), clip=BOUND, accumulate=4
    )
    assert len(report.steps) == 2 and report.passes == 8
    assert report.findings == [] or all(f.kind != "missing_clipping" for f in report.findings)
    assert all(step.grad_norm_at_step == pytest.approx(BOUND, rel=1e-4) for step in report.steps)


def test_zero_grad_without_set_to_none_and_frozen_parameters_are_clean() -> None:
    model = _loud_model()
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with gcu.watch(model, optimizer=optimizer, config=gcu.Config(max_grad_norm=BOUND)) as monitor:
        for x, y in _batches(3):
            optimizer.zero_grad(set_to_none=False)
            F.mse_loss(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), BOUND)
            optimizer.step()
    assert monitor.report().ok


def _amp_train(correct_order: bool, steps: int = 4, poison_step: int | None = None):
    model = _loud_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with gcu.watch(model, optimizer=optimizer, config=gcu.Config(max_grad_norm=BOUND)) as monitor:
        for position, (x, y) in enumerate(_batches(steps)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            if position == poison_step:
                model[2].bias.grad[0] = float("inf")
            if correct_order:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), BOUND)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), BOUND)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    return monitor.report()


def test_amp_unscale_then_clip_is_clean() -> None:
    report = _amp_train(correct_order=True)
    assert report.ok, [finding.describe() for finding in report.findings]
    for step in report.steps:
        assert step.amp_scale == 2.0**16 and not step.skipped
        assert step.grad_norm_at_step == pytest.approx(BOUND, rel=1e-3)
        assert step.grad_norm > BOUND and step.grad_norm < 1e4  # unscaled


def test_amp_clipping_before_unscale_is_a_clipping_finding() -> None:
    report = _amp_train(correct_order=False)
    (finding,) = report.findings_of("clipping_before_unscale")
    assert finding.severity == "error" and "scaler.unscale_(optimizer)" in finding.hint
    assert all(step.clip_calls[0].before_unscale for step in report.steps)
    # The pre-clip norm is reported unscaled even though the clip measured scaled values.
    assert report.steps[0].grad_norm < 1e4 < report.steps[0].clip_calls[0].returned_norm


def test_amp_skipped_step_is_reported_not_an_explosion() -> None:
    report = _amp_train(correct_order=True, steps=4, poison_step=1)
    skipped = [step.step for step in report.steps if step.skipped]
    assert skipped == [1]
    assert report.ok
    (info,) = [f for f in report.findings_of("nonfinite") if f.severity == "info"]
    assert info.where == "amp" and "skipped 1 step" in info.message
    assert report.findings_of("missing_clipping") == []


def test_nan_in_the_middle_of_training_names_step_and_layer() -> None:
    model = _loud_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    batches = _batches(5)
    batches[3] = (batches[3][0].clone(), batches[3][1])
    batches[3][0][0, 0] = float("nan")
    report = _train(model, optimizer, batches, clip=BOUND)
    (finding,) = [f for f in report.findings_of("nonfinite") if f.severity == "error"]
    assert finding.where == "2" and finding.value == 3.0  # the head is first in backward order
    assert "optimizer 0, step 3" in finding.message
    assert [step.nonfinite for step in report.steps] == [False, False, False, True, True]
    assert report.steps[3].first_nonfinite_layer == "2"


def test_two_optimizers_are_judged_on_their_own_parameters() -> None:
    model = _loud_model()
    first = torch.optim.SGD(model[0].parameters(), lr=1e-4)
    second = torch.optim.SGD(model[2].parameters(), lr=1e-4)
    with gcu.watch(
        model, optimizer=[first, second], config=gcu.Config(max_grad_norm=BOUND)
    ) as monitor:
        for x, y in _batches(3):
            F.mse_loss(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model[2].parameters(), BOUND)  # only the head
            first.step()
            second.step()
            first.zero_grad()
            second.zero_grad()
    report = monitor.report()
    assert {step.optimizer for step in report.steps} == {0, 1}
    findings = report.findings_of("missing_clipping")
    assert [finding.where for finding in findings] == ["optimizer 0, step 0"]
    for step in report.steps:
        expected_clips = 1 if step.optimizer == 1 else 0
        assert len(step.clip_calls) == expected_clips


def test_hooks_and_patches_are_removed_when_the_loop_raises() -> None:
    import torch.nn.utils.clip_grad as clip_grad
    from torch.amp import GradScaler

    originals = (clip_grad._clip_grads_with_norm_, GradScaler.step, torch.nn.utils.clip_grad_value_)
    model = _loud_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    with pytest.raises(RuntimeError, match="boom"), gcu.watch(model, optimizer=optimizer):
        assert clip_grad._clip_grads_with_norm_ is not originals[0]
        raise RuntimeError("boom")
    assert (
        clip_grad._clip_grads_with_norm_,
        GradScaler.step,
        torch.nn.utils.clip_grad_value_,
    ) == originals
    assert hook_count(model) == 0
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_step_history_is_bounded_with_a_summary_beyond_it() -> None:
    model = _loud_model()
    config = gcu.Config(max_grad_norm=BOUND, step_history=4)
    report = _train(
        model, torch.optim.SGD(model.parameters(), lr=1e-4), _batches(10), config=config
    )
    assert [step.step for step in report.steps] == [6, 7, 8, 9]
    summary = report.step_summary
    assert summary.total_steps == 10 and summary.earlier_steps == 6
    assert summary.earlier_max_grad_norm_at_step > BOUND
    assert any(
        finding.where == "earlier steps" for finding in report.findings_of("missing_clipping")
    )


def test_a_jump_without_clipping_and_without_a_bound_is_a_divergence_error() -> None:
    model = _loud_model()
    batches = _batches(6)
    batches[4] = (batches[4][0] * 1000, batches[4][1])
    report = _train(
        model, torch.optim.SGD(model.parameters(), lr=0.0), batches, config=gcu.Config()
    )
    (finding,) = report.findings_of("exploding")
    assert finding.severity == "error" and finding.where == "optimizer 0, step 4"
    assert "jumped" in finding.message and finding.value > 100
    assert report.findings_of("missing_clipping") == []
    # Clipped training with the same jump: no divergence finding.
    clipped = _train(
        model, torch.optim.SGD(model.parameters(), lr=0.0), batches, clip=10.0, config=gcu.Config()
    )
    assert clipped.findings_of("exploding") == []


def test_growing_norms_are_exploding_with_the_step_it_started() -> None:
    model = _loud_model()
    batches = [(x * (10.0 ** (i // 4)), y) for i, (x, y) in enumerate(_batches(16))]
    report = _train(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        batches,
        config=gcu.Config(sample_every=1),
    )
    # Both the quarter medians (grew 1e3x) and the jumps over the running maximum (10x at
    # steps 4, 8, 12) start at step 4.
    growth, jump = sorted(report.findings_of("exploding"), key=lambda f: "jumped" in f.message)
    assert "grew" in growth.message and "jumped" in jump.message
    assert growth.where == "optimizer 0, step 4" and growth.value > 1e3
    assert jump.where == "optimizer 0, step 4" and "3 step(s) jumped" in jump.message


def test_a_layer_dying_during_training_is_named_with_its_step() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def kill_after_step_two(position: int) -> None:
        if position == 2:
            with torch.no_grad():
                model[0].bias.fill_(-1e3)  # every ReLU unit dead from the next pass on

    report = _train(
        model, optimizer, _batches(6), config=gcu.Config(), before_step=kill_after_step_two
    )
    collapsed = [f for f in report.findings_of("vanishing") if f.where == "0"]
    (finding,) = collapsed
    assert finding.severity == "error" and finding.value == 3.0
    assert report.layer("0").zero_since_step == 3 and report.layer("2").zero_since_step is None


@pytest.mark.parametrize(
    ("activation", "pinned", "cause"),
    [(nn.ReLU, -1e3, "Units that are never active"), (nn.Tanh, 1e3, "Saturated activations")],
)
def test_a_collapsed_layer_gets_the_fix_for_its_activation(activation, pinned, cause) -> None:
    """Behind ReLU the units died; behind tanh they saturated at exactly 1 (tanh'(x) is
    exactly 0 in float32 for x > ~9): the same zero gradient, different fixes."""
    model = nn.Sequential(nn.Linear(8, 16), activation(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def pin_after_step_two(position: int) -> None:
        if position == 2:
            with torch.no_grad():
                model[0].bias.fill_(pinned)

    report = _train(
        model, optimizer, _batches(6), config=gcu.Config(), before_step=pin_after_step_two
    )
    (finding,) = [f for f in report.findings_of("vanishing") if f.where == "0"]
    assert finding.hint.startswith(cause)


def test_lbfgs_closure_steps_are_measured_after_the_step() -> None:
    model = nn.Linear(4, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    with gcu.watch(model, optimizer=optimizer) as monitor:
        for _ in range(2):
            optimizer.step(closure)
    report = monitor.report()
    assert len(report.steps) == 2 and all(step.closure for step in report.steps)
    assert report.passes > 2  # several backward passes inside each step
    assert all(step.grad_norm_at_step is not None for step in report.steps)


def test_watch_rejects_what_is_not_an_optimizer() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"optimizer: expected a torch.optim.Optimizer"):
        gcu.watch(model, optimizer="sgd")
    with pytest.raises(TypeError, match=r"optimizer\[1\]: expected"):
        gcu.watch(model, optimizer=[torch.optim.SGD(model.parameters(), lr=1), 3])
    with pytest.raises(TypeError, match="pass it by name"):
        gcu.watch(model, gcu.Config())


def test_assert_clipped_requires_steps() -> None:
    report = gcu.check(nn.Linear(2, 2), torch.ones(1, 2))
    with pytest.raises(AssertionError, match="no optimizer step was observed"):
        assert_clipped(report, max_norm=1.0)


def test_steps_are_rendered_and_round_trip() -> None:
    from rich.console import Console

    model = _loud_model()
    report = _train(model, torch.optim.SGD(model.parameters(), lr=1e-4), _batches(3), clip=5.0)
    assert gcu.Report.model_validate_json(report.model_dump_json()) == report
    console = Console(record=True, width=120, color_system=None)
    report.print(console)
    text = console.export_text()
    assert "Optimizer steps: 3 (3 of the last 3 clipped, 0 skipped by AMP; max_grad_norm 1)" in text
    assert "norm 5" in text and "over max_grad_norm" in text


def test_fused_optimizer_under_amp_reports_the_unscaled_norm() -> None:
    # Fused optimizers get grad_scale and unscale inside step(): at the step hook the
    # gradients are still scaled, and gradcheckup divides the scale out.
    def first_step_norm(fused: bool) -> float:
        torch.manual_seed(0)
        model = _loud_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        with gcu.watch(model, optimizer=optimizer) as monitor:
            x, y = _batches(1)[0]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        (step,) = monitor.report().steps
        assert not step.skipped and step.amp_scale == 2.0**12
        return step.grad_norm_at_step

    fused, plain = first_step_norm(True), first_step_norm(False)
    assert fused == pytest.approx(plain, rel=1e-5)
    assert fused < 2.0**12  # unscaled


# -- StepProbe on its own: what device_values encodes, totals decodes -------------------


def _attached_step_probe(model: nn.Module, optimizer: torch.optim.Optimizer, history: int):
    context, inventory, hooks = ProbeContext(), take_inventory(model), HookSet()
    # The parameter probe feeds the per-step layer values (zero runs, first NaN/inf).
    parameters = ParameterProbe(context, inventory)
    probe = StepProbe(
        context, inventory, [optimizer], history, LayerSlots(parameters.slot_layers(), {})
    )
    parameters.attach(hooks)
    probe.attach(hooks)
    return probe, hooks


def _global_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters())))


def test_step_totals_round_trip_against_independent_norms() -> None:
    model = _loud_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    probe, hooks = _attached_step_probe(model, optimizer, history=2)
    before_clip, at_step = [], []
    try:
        for x, y in _batches(count=4):
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            before_clip.append(_global_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), BOUND)
            at_step.append(_global_norm(model))
            optimizer.step()
    finally:
        hooks.remove_all()
    totals = probe_totals(probe, probe._context)

    assert [step.index for step in totals.steps] == [2, 3]
    for step, norm, norm_at_step in zip(totals.steps, before_clip[2:], at_step[2:], strict=True):
        (clip,) = step.clips
        assert clip.kind == "norm" and clip.bound == BOUND and clip.scale is None
        assert clip.returned_norm == pytest.approx(norm, rel=1e-5)
        assert step.norm_at_step == pytest.approx(norm_at_step, rel=1e-5)
        assert step.optimizer == 0 and not step.skipped and step.amp_scale is None
        assert step.first_nonfinite_layer is None and not step.closure
    assert (totals.earlier_steps, totals.earlier_clipped_steps) == (2, 2)
    assert totals.earlier_skipped_steps == 0
    assert totals.earlier_max_norm_at_step == pytest.approx(max(at_step[:2]), rel=1e-5)
    assert totals.zero_since == {}


class _Scaled(nn.Module):
    """Two layers with a multiplier between them. An infinite one makes both gradients
    infinite, the later layer's first in backward; zero makes the first layer's
    gradient exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(4, 4), nn.Linear(4, 1)
        self.factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x) * self.factor)


def _scaled_steps(factors: list[float]):
    """One step of ``_Scaled`` per factor: the step totals, and per step the gradients
    of each layer, as the hooks saw them."""
    model = _Scaled()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe, hooks = _attached_step_probe(model, optimizer, history=10)
    grads = []
    try:
        for factor in factors:
            model.factor = factor
            optimizer.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            grads.append(
                {
                    name: [p.grad.clone() for p in module.parameters()]
                    for name, module in (("first", model.first), ("last", model.last))
                }
            )
            optimizer.zero_grad()  # keep the weights finite for the next step
            optimizer.step()
    finally:
        hooks.remove_all()
    return probe_totals(probe, probe._context), grads


def test_step_totals_name_the_layer_whose_gradient_turned_nonfinite_first() -> None:
    totals, grads = _scaled_steps([1.0, math.inf, 1.0])
    nonfinite = [
        [name for name, layer in step.items() if not all(g.isfinite().all() for g in layer)]
        for step in grads
    ]
    assert nonfinite == [[], ["first", "last"], []]
    # Backward reaches 'last' (inventory index 1) before 'first' (index 0).
    assert [step.first_nonfinite_layer for step in totals.steps] == [None, 1, None]


def test_step_totals_find_a_layer_whose_gradient_stayed_exactly_zero() -> None:
    totals, grads = _scaled_steps([1.0, 0.0, 0.0, 0.0])
    zero = [all(bool((g == 0).all()) for g in step["first"]) for step in grads]
    assert zero == [False, True, True, True]
    assert not any(all(bool((g == 0).all()) for g in step["last"]) for step in grads)
    assert totals.zero_since == {0: zero.index(True)}


def test_a_norm_measured_with_an_infinite_bound_is_not_clipping() -> None:
    """clip_grad_norm_(params, inf) only measures: the run counts as unclipped."""
    model = _loud_model()
    report = _train(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-4),
        _batches(),
        clip=math.inf,
        config=gcu.Config(max_grad_norm=BOUND),
    )
    assert all(step.clip_calls == [] for step in report.steps)
    (finding,) = report.findings_of("missing_clipping")
    assert finding.severity == "error"
