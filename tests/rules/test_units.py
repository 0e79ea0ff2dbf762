"""The activation-site rule (dead ReLU units, saturation) on synthetic stats."""

from __future__ import annotations

import pytest

from gradcheckup import ActivationStats, Config
from gradcheckup.rules import unit_findings
from tests.rules.stats import site as _site


def _with(site: ActivationStats, **changes: object) -> ActivationStats:
    return site.model_copy(update=changes)


# Zoo (benchmarks/README.md): healthy squeezenet1_1 0.50-0.52 stays clean, sick 0.95-1.00.
@pytest.mark.parametrize(
    ("dead", "severity"),
    [
        (0.52, None),
        (0.59, None),
        (0.6, "warning"),
        (0.79, "warning"),
        (0.8, "error"),
        (1.0, "error"),
    ],
)
def test_dead_relu_grading(dead: float, severity: str | None) -> None:
    findings = unit_findings([_site("a", dead=dead)], Config())
    assert [f.severity.value for f in findings] == ([severity] if severity else [])


@pytest.mark.parametrize(
    ("saturated", "severity"),
    [(0.4, None), (0.5, "warning"), (0.79, "warning"), (0.8, "error"), (0.85, "error")],
)
def test_saturation_grading(saturated: float, severity: str | None) -> None:
    findings = unit_findings([_site("t", saturated=saturated)], Config())
    assert [f.severity.value for f in findings] == ([severity] if severity else [])


def test_stricter_config_raises_severity() -> None:
    site = _site("a", dead=0.3)
    assert unit_findings([site], Config()) == []
    assert unit_findings([site], Config(dead_relu_warn_fraction=0.3))[0].severity == "warning"
    assert unit_findings([site], Config(dead_relu_fraction=0.3))[0].severity == "error"


def test_too_few_samples_per_unit_downgrade_to_info_and_say_why() -> None:
    (finding,) = unit_findings([_site("a", dead=0.9, samples=4)], Config())
    assert finding.severity == "info" and finding.threshold == 0.8
    assert "Only 4 observations per unit (< min_samples_per_unit=8)" in finding.message
    (enough,) = unit_findings([_site("a", dead=0.9, samples=8)], Config())
    assert enough.severity == "error" and "Only" not in enough.message


def test_every_unit_dead_on_every_sample_keeps_full_severity_at_any_batch() -> None:
    # 100 units x 2 samples all inactive: 2^-200 under a coin-flip null.
    (certain,) = unit_findings([_site("a", dead=1.0, samples=2)], Config())
    assert certain.severity == "error" and "Only" not in certain.message
    # ... but one unit seen on 4 samples (2^-4) is not certain.
    (single,) = unit_findings([_with(_site("a", dead=1.0, samples=4), units=1)], Config())
    assert single.severity == "info" and "Only 4 observations per unit" in single.message


def test_saturation_is_judged_on_all_outputs_not_per_unit() -> None:
    # Zoo: squeeze-excitation sigmoids stuck at 1.0 and a BERT pooler tanh 0.97
    # saturated, both at batch 4: units x 4 outputs is plenty.
    for saturated in (1.0, 0.97):
        (finding,) = unit_findings([_site("t", saturated=saturated, samples=4)], Config())
        assert finding.severity == "error" and "Only" not in finding.message
    (few,) = unit_findings([_with(_site("t", saturated=1.0, samples=4), units=1)], Config())
    assert few.severity == "info"
    assert "Only 4 outputs (< min_samples_per_unit=8): too few to be sure" in few.message


def test_sites_with_nonfinite_outputs_are_not_judged() -> None:
    sites = [
        _with(_site("r", dead=1.0), nonfinite=True),
        _with(_site("t", saturated=1.0), nonfinite=True),
        _site("ok", dead=1.0),
    ]
    assert [f.where for f in unit_findings(sites, Config())] == ["ok"]


def test_messages_count_the_units_and_name_the_margin() -> None:
    (dead,) = unit_findings([_site("a", dead=0.65)], Config())
    assert dead.kind == "dead_relu" and dead.where == "a" and dead.value == 0.65
    assert "65% of its units (65 of 100 features (last dim)) were never positive" in dead.message
    assert "over 64 observations each (threshold 60%)" in dead.message
    (saturated,) = unit_findings([_site("t", saturated=0.6)], Config(saturation_margin=0.05))
    assert saturated.kind == "saturation" and saturated.threshold == 0.5
    assert "60% of its tanh outputs are within 5% of the range's ends" in saturated.message


def test_messages_name_each_functions_flat_region() -> None:
    def message(function: str, **fraction: float) -> str:
        (found,) = unit_findings([_with(_site("s", **fraction), function=function)], Config())
        return found.message

    assert "were never strictly between 0 and 6 over" in message("relu6", dead=0.9)
    assert "were never non-zero (input > -3) over" in message("hardswish", dead=0.9)
    for clamped in ("hardtanh", "hardsigmoid"):
        assert f"of its {clamped} outputs are exactly at the range's ends" in message(
            clamped, saturated=0.9
        )


def test_dead_units_come_first_then_saturation_each_in_model_order() -> None:
    sites = [_site("t1", saturated=0.95), _site("r1", dead=0.9), _site("r2", dead=0.65)]
    found = [(f.kind.value, f.where) for f in unit_findings(sites, Config())]
    assert found == [("dead_relu", "r1"), ("dead_relu", "r2"), ("saturation", "t1")]
