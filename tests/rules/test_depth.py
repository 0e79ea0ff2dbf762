"""The through-depth rules as pure functions of synthetic stats: thresholds, ends of the
depth profile, and the other per-layer rules."""

from __future__ import annotations

import pytest

from gradcheckup import Config
from gradcheckup.rules import (
    NonfiniteInput,
    PassFacts,
    all_zero_findings,
    collapse_findings,
    depth_findings,
    depth_ratio,
    diagnose,
    no_gradient_findings,
    nonfinite_findings,
)
from tests.rules.stats import layer as _layer
from tests.rules.stats import profile as _profile
from tests.rules.stats import site as _site


@pytest.mark.parametrize(
    ("ratio", "kind", "severity"),
    [
        (1e-3, "vanishing", "error"),  # VGG11 with weights N(0, 0.01): ~1.4e-3
        (5e-3, "vanishing", "warning"),  # a 6-layer ReLU MLP at default init
        (0.04, None, None),  # Wav2Vec2, the lowest healthy zoo model (10^-1.4)
        (0.5, None, None),
        (4e3, None, None),  # resnet152, the highest healthy zoo model (10^3.6)
        (2e4, "exploding", "warning"),
        (5e4, "exploding", "error"),
    ],
)
def test_depth_thresholds(ratio: float, kind: str | None, severity: str | None) -> None:
    layers = _profile([ratio, 1.0, 1.0, 1.0])
    findings = depth_findings(layers, [], Config())
    assert [(f.kind.value, f.severity.value) for f in findings] == (
        [(kind, severity)] if kind else []
    )
    if findings:
        assert findings[0].value == pytest.approx(ratio) and findings[0].where == "l0"


def test_the_first_end_is_its_largest_signal_so_tiny_outliers_do_not_decide() -> None:
    # 8 layers, window 2: query/key-like outliers (1e-7) in the first window are ignored.
    layers = _profile([1e-7, 1.0, 1e-7, 1.0, 1.0, 1.0, 1e-7, 2.0])
    ratio, first_end, last_end, _ = depth_ratio(layers, Config())
    assert ratio == pytest.approx(0.5) and first_end.name == "l1" and last_end.name == "l7"
    assert depth_findings(layers, [], Config()) == []


def test_the_last_end_is_the_logits_layer_not_a_final_norm_layer() -> None:
    # A final RMSNorm/LayerNorm sits before the head: the head (logits) is the last end,
    # even with a small signal; the norm layer after it in forward order does not count.
    layers = _profile([1e5, 1.0, 1.0, 1.0, 1.0, 1.0, 1e3, 1.0, 1e3])
    for index, kind in [(6, "LlamaRMSNorm"), (8, "LayerNorm")]:
        layers[index] = layers[index].model_copy(update={"module_type": kind})
    ratio, first_end, last_end, _ = depth_ratio(layers, Config())
    assert (first_end.name, last_end.name, ratio) == ("l0", "l7", 1e5)
    (finding,) = depth_findings(layers, [], Config())
    assert (finding.kind, finding.severity) == ("exploding", "error")
    assert "backward signal per unit grows 1e+05x" in finding.message
    assert "logits layer 'l7'" in finding.message
    # Only normalisation layers: the last layer stands for the logits side.
    only_norms = [layer.model_copy(update={"module_type": "BatchNorm2d"}) for layer in layers]
    assert depth_ratio(only_norms, Config())[2].name == "l8"


def test_too_few_layers_and_zero_or_missing_signals_give_no_depth_judgement() -> None:
    assert depth_findings(_profile([1e-9, 1.0]), [], Config()) == []
    # Exact zeros (zero-initialised head or branch) and unmeasured layers are left out.
    assert depth_findings(_profile([0.0, None, 1.0, 1.0]), [], Config()) == []
    assert depth_findings(_profile([1e-9, 1.0, 1.0]), [], Config(min_depth=4)) == []


def test_vanishing_names_first_layer_even_when_its_signal_underflowed_to_zero() -> None:
    layers = _profile([0.0, 0.0, 1e-12, 1e-8, 1e-4, 1.0, 1.0, 1.0])
    (finding,) = depth_findings(layers, [], Config())
    assert finding.where == "l0" and "2 layer(s) got exactly zero" in finding.message


def test_layers_that_never_ran_are_not_in_the_profile() -> None:
    layers = [*_profile([1e-6, 1.0, 1.0]), _layer("never", None, 1e-12)]
    (finding,) = depth_findings(layers, [], Config())
    assert finding.kind == "vanishing" and finding.where == "l0"


def test_an_error_threshold_milder_than_the_warning_one_still_errors() -> None:
    config = Config(
        vanishing_ratio=1e-2,
        vanishing_warn_ratio=1e-6,
        exploding_ratio=10.0,
        exploding_warn_ratio=1e6,
    )
    (vanishing,) = depth_findings(_profile([1e-3, 1.0, 1.0, 1.0]), [], config)
    assert vanishing.severity == "error" and vanishing.threshold == 1e-2
    (exploding,) = depth_findings(_profile([100.0, 1.0, 1.0, 1.0]), [], config)
    assert exploding.severity == "error" and exploding.threshold == 10.0


def test_bias_gradients_stand_in_when_no_backward_signal_was_hooked() -> None:
    layers = [
        _layer(f"l{i}", None, None).model_copy(update={"bias_grad_norm": value})
        for i, value in enumerate([1e-9, 1e-6, 1e-3, 1.0])
    ]
    (finding,) = depth_findings(layers, [], Config())
    assert finding.kind == "vanishing" and finding.where == "l0"
    assert "judged on bias gradients" in finding.message


def test_diagnose_combines_and_orders() -> None:
    findings = diagnose(_profile([1e-6, 1.0, 1.0]), [_site("a", dead=0.65)], Config())
    assert [f.kind.value for f in findings] == ["vanishing", "dead_relu"]


def test_findings_of_equal_severity_keep_the_rules_order() -> None:
    layers = _profile([1e-6, 1.0, 1.0])
    layers[2] = layers[2].model_copy(update={"zero_since_step": 3})
    sites = [_site("a", dead=0.9), _site("b", dead=0.65)]
    found = [(f.kind.value, f.severity.value, f.where) for f in diagnose(layers, sites, Config())]
    assert found == [
        ("vanishing", "error", "l0"),
        ("vanishing", "error", "l2"),
        ("dead_relu", "error", "a"),
        ("dead_relu", "warning", "b"),
    ]


def test_collapse_names_the_layer_and_the_step_it_stopped() -> None:
    layers = _profile([1.0, 1.0])
    layers[1] = layers[1].model_copy(update={"zero_since_step": 7})
    (finding,) = collapse_findings(layers)
    assert (finding.kind, finding.severity, finding.where) == ("vanishing", "error", "l1")
    assert finding.value == 7.0 and finding.threshold is None
    assert "exactly zero on every step from step 7 on" in finding.message


def test_nonfinite_origin_is_the_first_layer_in_backward_order() -> None:
    layers = _profile([1.0, 1.0, 1.0])
    layers[0] = layers[0].model_copy(update={"nonfinite_rank": 2, "nonfinite_count": 5})
    layers[2] = layers[2].model_copy(update={"nonfinite_rank": 1, "nonfinite_count": 3})
    (finding,) = nonfinite_findings(layers, loss=1.0)
    assert finding.where == "l2" and finding.value == 3.0 and finding.threshold == 0.0
    assert "(3 NaN/inf gradient entries); 2 layer(s) affected in all" in finding.message
    (from_loss,) = nonfinite_findings(layers, loss=float("nan"))
    assert from_loss.where == "loss" and "The loss itself is nan" in from_loss.message
    assert nonfinite_findings(_profile([1.0, 1.0]), loss=None) == []


def test_missing_gradients_per_layer_and_for_a_model_never_reached() -> None:
    layers = _profile([1.0, 1.0])
    layers[1] = layers[1].model_copy(update={"params_without_grad": ["weight", "bias"]})
    (finding,) = no_gradient_findings(layers)
    assert (finding.severity, finding.where, finding.value) == ("warning", "l1", 2.0)
    assert "Trainable parameter(s) weight, bias received no gradient" in finding.message
    unreached = [layer.model_copy(update={"passes": 0}) for layer in layers]
    (model,) = no_gradient_findings(unreached)
    assert (model.severity, model.where) == ("info", "(model)")


def test_parameters_feeding_only_outputs_outside_the_loss_are_info() -> None:
    layers = _profile([1.0, 1.0])
    layers[1] = layers[1].model_copy(update={"params_without_grad": ["weight", "bias"]})
    info, warning = sorted(
        no_gradient_findings(layers, outside_loss={("l1", "weight")}),
        key=lambda found: found.severity.rank,
    )
    assert (info.severity, info.where, info.value) == ("info", "l1", 1.0)
    assert "weight feed the model's output but not the loss that was differentiated" in (
        info.message
    )
    assert "loss_fn" in info.hint
    assert (warning.severity, warning.value) == ("warning", 1.0)
    assert "Trainable parameter(s) bias received no gradient" in warning.message


def test_every_gradient_exactly_zero_is_an_error_saying_why() -> None:
    zeros = [layer.model_copy(update={"grad_norm": 0.0}) for layer in _profile([0.0, 0.0])]
    (finding,) = all_zero_findings(zeros)
    assert (finding.kind, finding.severity, finding.where) == ("vanishing", "error", "(model)")
    assert "Every parameter gradient was exactly zero (2 layer(s))" in finding.message
    assert "underflow" in finding.hint and "GradScaler" in finding.hint
    # One non-zero layer, a NaN, or no gradient at all: not this finding.
    assert all_zero_findings([zeros[0], _layer("l1", 1, 1.0)]) == []
    assert all_zero_findings([zeros[0].model_copy(update={"grad_norm": float("nan")})]) == []
    assert all_zero_findings([zeros[0].model_copy(update={"grad_norm": None})]) == []
    assert any(found.kind == "vanishing" for found in diagnose(zeros, [], Config()))


def test_nonfinite_input_is_named_as_the_origin() -> None:
    layers = _profile([1.0, 1.0])
    layers[0] = layers[0].model_copy(update={"nonfinite_rank": 1, "nonfinite_count": 3})
    nan_input = NonfiniteInput(label="inputs['x']", nan_count=2, inf_count=1)
    (finding,) = nonfinite_findings(layers, loss=float("nan"), inputs=[nan_input])
    assert (finding.where, finding.value, finding.severity) == ("inputs['x']", 2.0, "error")
    assert finding.message.startswith("The input is not finite: inputs['x'] (2 NaN, 1 inf")
    assert "the problem is in the data" in finding.message and "forward" not in finding.message
    # Only inf (an additive attention mask uses -inf): named, but the loss stays the origin.
    mask = NonfiniteInput(label="inputs[1]", nan_count=0, inf_count=4)
    (from_loss,) = nonfinite_findings(layers, loss=float("nan"), inputs=[mask])
    assert from_loss.where == "loss" and "inputs[1] holds 4 inf entries" in from_loss.message
    # A finite pass says nothing about the inputs.
    assert nonfinite_findings(_profile([1.0]), loss=1.0, inputs=[nan_input, mask]) == []
    facts = PassFacts(nonfinite_inputs=(nan_input,))
    found = diagnose(layers, [], Config(), loss=float("nan"), facts=facts)
    assert [f.where for f in found if f.kind == "nonfinite"] == ["inputs['x']"]


def _without_gradient(layer, ran: bool = True):
    return layer.model_copy(
        update={
            "params_without_grad": ["weight", "bias"],
            "passes": 0,
            "grad_norm": None,
            "output_grad_norm": None,
            "unit_signal": None,
            "depth_index": layer.depth_index if ran else None,
        }
    )


def test_layers_that_ran_but_got_no_gradient_are_one_detached_error_per_run() -> None:
    # Forward order l0..l7; l0-l4 detached (a resnet stage's output .detach()ed), l6 too.
    layers = _profile([1.0] * 8)
    for index in (0, 1, 2, 3, 4, 6):
        layers[index] = _without_gradient(layers[index])
    never_ran = _without_gradient(_layer("spare", None, None), ran=False)
    findings = no_gradient_findings([*layers, never_ran])
    summary = [(f.severity.value, f.where, f.value) for f in findings]
    assert summary == [
        ("error", "l0", 5.0),
        ("error", "l6", 1.0),
        ("warning", "spare", 2.0),  # never ran: unused, not detached
    ]
    assert findings[0].kind == "no_gradient"
    assert "5 layer(s) ran in forward, but no gradient reached their parameters" in (
        findings[0].message
    )
    assert "'l0', 'l1', 'l2' and 2 more" in findings[0].message
    assert ".detach()" in findings[0].message and "torch.no_grad" in findings[0].hint


def test_a_layer_detached_only_from_the_loss_but_feeding_the_output_stays_info() -> None:
    layers = _profile([1.0, 1.0, 1.0])
    layers[2] = _without_gradient(layers[2])
    (info,) = no_gradient_findings(layers, outside_loss={("l2", "weight"), ("l2", "bias")})
    assert (info.severity, info.where) == ("info", "l2")
    # Some parameters of a layer got a gradient: the others are unused in forward.
    layers[2] = layers[2].model_copy(update={"passes": 1, "params_without_grad": ["bias"]})
    (warning,) = no_gradient_findings(layers)
    assert (warning.severity, warning.where) == ("warning", "l2")
    # Its output got a gradient, its own parameter none (a model's unused scale): unused.
    layers[2] = layers[2].model_copy(update={"passes": 0, "output_grad_norm": 1.0})
    (unused,) = no_gradient_findings(layers)
    assert (unused.severity, unused.where) == ("warning", "l2")
