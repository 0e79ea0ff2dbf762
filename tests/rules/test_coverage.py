"""Coverage: a report whose forward-pass probes saw nothing is not healthy."""

from __future__ import annotations

from gradcheckup import Config
from gradcheckup.rules import coverage_findings, diagnose
from tests.rules.stats import layer


def test_gradients_without_any_recorded_forward_pass_are_an_error() -> None:
    layers = [layer("a", None, None), layer("b", None, None)]
    (found,) = coverage_findings(layers, passes=0)
    assert found.kind.value == "not_measured"
    assert found.severity.value == "error" and found.value == 1.0
    assert "no forward pass was seen" in found.message
    assert "uncompiled" in found.hint
    assert found in diagnose(layers, [], Config(), passes=0)


def test_recorded_passes_unknown_passes_or_no_gradient_give_nothing() -> None:
    ran = [layer("a", 0, 1.0)]
    assert coverage_findings(ran, passes=1) == []
    assert coverage_findings(ran, passes=None) == []
    never_reached = [layer("a", None, None).model_copy(update={"passes": 0})]
    assert coverage_findings(never_reached, passes=0) == []
