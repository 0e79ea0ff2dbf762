"""The optimizer-step rules on synthetic steps: clipping bound and tolerance, earlier
steps, divergence without clipping, growth, non-finite and AMP-skipped steps."""

from __future__ import annotations

import pytest

from gradcheckup import Config
from gradcheckup.report import StepSummary
from gradcheckup.rules import (
    clipping_before_unscale_findings,
    diagnose,
    divergence_findings,
    earlier_steps_clipping_findings,
    missing_clipping_findings,
    nonfinite_step_findings,
    step_growth_findings,
)
from tests.rules.stats import clip, step


def _summary(earlier_max: float | None, earlier_clipped: int = 0) -> StepSummary:
    return StepSummary(
        total_steps=110,
        earlier_steps=100,
        earlier_clipped_steps=earlier_clipped,
        earlier_skipped_steps=0,
        earlier_max_grad_norm_at_step=earlier_max,
    )


def test_the_bound_has_the_configured_tolerance() -> None:
    config = Config(max_grad_norm=1.0, clip_tolerance=0.01)
    within = [step(0, 1.0099), step(1, 0.5)]
    assert missing_clipping_findings(within, config) == []
    (finding,) = missing_clipping_findings([*within, step(2, 1.02)], config)
    assert finding.where == "optimizer 0, step 2" and finding.value == 1.02
    assert finding.threshold == 1.0 and finding.severity == "error"


def test_missing_clipping_names_first_and_largest_step_and_the_clipping_seen() -> None:
    steps = [
        step(0, 3.0, clips=(clip(5.0),)),
        step(1, 0.5, clips=(clip(5.0),)),
        step(2, 4.0),
        step(3, 2.0, skipped=True),
    ]
    (finding,) = missing_clipping_findings(steps, Config(max_grad_norm=1.0))
    assert "2 of 3 step(s) reached optimizer 0" in finding.message
    assert "first step 0 with 3, largest 4 at step 2" in finding.message
    assert "max_norm 5 on 2 of 3 step(s) (looser than required)" in finding.message
    unclipped = missing_clipping_findings([step(0, 3.0)], Config(max_grad_norm=1.0))
    assert "no clip_grad_norm_ call was observed" in unclipped[0].message


def test_each_optimizer_is_judged_on_its_own_steps() -> None:
    steps = [step(0, 0.5, optimizer=0), step(0, 9.0, optimizer=1)]
    found = missing_clipping_findings(steps, Config(max_grad_norm=1.0))
    assert [f.where for f in found] == ["optimizer 1, step 0"]
    assert missing_clipping_findings(steps, Config()) == []


def test_an_earlier_step_over_the_bound_is_its_own_finding() -> None:
    config = Config(max_grad_norm=1.0)
    (finding,) = earlier_steps_clipping_findings(_summary(2.5), config)
    assert (finding.where, finding.value, finding.threshold) == ("earlier steps", 2.5, 1.0)
    assert "Among the 100 steps older than the history window" in finding.message
    assert earlier_steps_clipping_findings(_summary(1.0005), config) == []
    assert earlier_steps_clipping_findings(_summary(2.5), Config()) == []
    assert earlier_steps_clipping_findings(None, config) == []


def _run(norms: list[float], **options) -> list:
    return [step(i, norm, **options) for i, norm in enumerate(norms)]


def test_a_jump_over_every_earlier_step_without_clipping_is_a_divergence_error() -> None:
    # The zoo's resnet18 with SGD at lr 5.0 (seed 0): 567 is 9.8x the largest earlier norm.
    (finding,) = divergence_findings(_run([58, 567, 54, 26, 7, 5, 1.3, 2.7]), None, Config())
    assert (finding.kind, finding.severity) == ("exploding", "error")
    assert finding.where == "optimizer 0, step 1" and finding.threshold == 3.0
    assert finding.value == pytest.approx(567 / 58)
    assert "1 step(s) jumped over 3x the earlier maximum" in finding.message
    assert "learning rate" in finding.hint and "clip_grad_norm_" in finding.hint
    # Seed 1: 63 -> 287 (4.6x); the later rises stay below 3x the running maximum.
    (seed1,) = divergence_findings(_run([63, 287, 123, 220, 121, 455, 435, 303]), None, Config())
    assert seed1.where == "optimizer 0, step 1" and seed1.value == pytest.approx(287 / 63)


def test_ordinary_training_is_not_a_divergence() -> None:
    falling = [58, 45, 17, 1.8, 0.3, 0.2, 0.1, 0.3, 0.04]  # SGD: largest first, then falling
    adamw = [0.68 * 1.08**i for i in range(10)]  # AdamW: 0.68 -> 1.41, slowly rising
    noisy = [1.0, 2.9, 0.5, 2.5, 8.0]  # under 3x the running maximum every time
    for norms in (falling, adamw, noisy):
        assert divergence_findings(_run(norms), None, Config()) == []
    # A jump relative to a falling recent past, not to the maximum, is not one either.
    assert divergence_findings(_run([10.0, 0.1, 0.5, 9.0]), None, Config()) == []


def test_divergence_needs_no_bound_no_clipping_and_counts_evicted_steps() -> None:
    norms = [1.0, 2.0, 50.0, 1.5]
    assert len(divergence_findings(_run(norms), None, Config())) == 1
    assert divergence_findings(_run(norms), None, Config(max_grad_norm=1e6)) == []
    assert divergence_findings(_run(norms), _summary(None, earlier_clipped=1), Config()) == []
    clipped = [*_run(norms[:3]), step(3, 1.5, clips=(clip(1e6),))]
    assert divergence_findings(clipped, None, Config()) == []
    # Steps older than the history window had a norm of 20: 50 is only 2.5x that.
    assert divergence_findings(_run(norms), _summary(20.0), Config()) == []
    (evicted,) = divergence_findings(_run([100.0, 2.0]), _summary(20.0), Config())
    assert evicted.where == "optimizer 0, step 0" and evicted.value == pytest.approx(5.0)
    assert divergence_findings(_run(norms), None, Config(divergence_factor=30.0)) == []


def test_each_optimizer_diverges_on_its_own_and_skipped_or_nonfinite_steps_do_not_count() -> None:
    first = _run([1.0, 1.2, 1.1])
    second = _run([0.01, 0.5], optimizer=1)
    (finding,) = divergence_findings([*first, *second], None, Config())
    assert finding.where == "optimizer 1, step 1"
    skipped = [step(0, 1.0), step(1, 1e4, skipped=True), step(2, float("inf")), step(3, 1.1)]
    assert divergence_findings(skipped, None, Config()) == []


def test_growth_compares_the_median_of_the_last_quarter_with_the_first() -> None:
    norms = [1.0, 1.0, 2.0, 5.0, 20.0, 100.0, 2e3, 2e3]
    steps = [step(i, None, before_clipping=norm) for i, norm in enumerate(norms)]
    (finding,) = step_growth_findings(steps, Config())
    assert finding.kind == "exploding" and finding.value == pytest.approx(2e3)
    assert finding.where == "optimizer 0, step 4"  # first above 10x the start
    assert step_growth_findings(steps, Config(step_growth_ratio=2e3)) == []
    assert step_growth_findings(steps[:7], Config()) == []  # fewer than 8 steps


def test_nonfinite_steps_name_the_first_and_amp_skips_are_info() -> None:
    steps = [
        step(0, 1.0),
        step(1, float("nan"), nonfinite=True, first_nonfinite_layer="decoder.2"),
        step(2, float("inf"), nonfinite=True),
        step(3, None, skipped=True, nonfinite=True),
    ]
    error, info = nonfinite_step_findings(steps)
    assert (error.severity, error.where, error.value) == ("error", "decoder.2", 1.0)
    assert "NaN/inf first appear at 'decoder.2'" in error.message
    assert "2 step(s) reached the optimizer" in error.message
    assert (info.severity, info.where, info.value) == ("info", "amp", 1.0)
    assert "(steps 3)" in info.message


def test_clipping_before_unscale_once_per_optimizer() -> None:
    scaled = clip(1.0, before_unscale=True, returned=6.5e4)
    steps = [step(0, 0.5, clips=(scaled,)), step(1, 0.5, clips=(scaled,)), step(2, 0.5)]
    (finding,) = clipping_before_unscale_findings(steps)
    assert finding.where == "optimizer 0, step 0" and finding.value == 1.0
    assert "measuring 6.5e+04" in finding.message and "(2 step(s))" in finding.message


def test_diagnose_judges_nonfinite_per_step_when_steps_were_watched() -> None:
    steps = [step(0, 1.0), step(1, None, skipped=True, nonfinite=True)]
    found = diagnose([], [], Config(), steps=steps)
    # The skipped step is AMP calibrating (info), not an error; no layers: nothing reached.
    assert [(f.kind.value, f.severity.value, f.where) for f in found] == [
        ("nonfinite", "info", "amp"),
        ("no_gradient", "info", "(model)"),
    ]
