"""The activation-site rule (dead ReLU units, saturation) on synthetic stats."""

from __future__ import annotations

import pytest

from gradcheckup import Config
from gradcheckup.rules import unit_findings
from tests.rules.stats import site as _site


@pytest.mark.parametrize(
    ("dead", "severity"),
    [(0.05, None), (0.1, "warning"), (0.49, "warning"), (0.5, "error"), (1.0, "error")],
)
def test_dead_relu_grading(dead: float, severity: str | None) -> None:
    findings = unit_findings([_site("a", dead=dead)], Config())
    assert [f.severity.value for f in findings] == ([severity] if severity else [])


@pytest.mark.parametrize(
    ("saturated", "severity"), [(0.4, None), (0.5, "warning"), (0.95, "error")]
)
def test_saturation_grading(saturated: float, severity: str | None) -> None:
    findings = unit_findings([_site("t", saturated=saturated)], Config())
    assert [f.severity.value for f in findings] == ([severity] if severity else [])


def test_stricter_config_raises_severity() -> None:
    site = _site("a", dead=0.3)
    assert unit_findings([site], Config())[0].severity == "warning"
    assert unit_findings([site], Config(dead_relu_fraction=0.3))[0].severity == "error"


def test_too_few_samples_per_unit_downgrade_to_info_and_say_why() -> None:
    (finding,) = unit_findings([_site("a", dead=0.6, samples=4)], Config())
    assert finding.severity == "info" and finding.threshold == 0.5
    assert "Only 4 observations per unit (< min_samples_per_unit=8)" in finding.message
    (enough,) = unit_findings([_site("a", dead=0.6, samples=8)], Config())
    assert enough.severity == "error" and "Only" not in enough.message


def test_messages_count_the_units_and_name_the_margin() -> None:
    (dead,) = unit_findings([_site("a", dead=0.25)], Config())
    assert dead.kind == "dead_relu" and dead.where == "a" and dead.value == 0.25
    assert "25% of its units (25 of 100 features (last dim)) were never positive" in dead.message
    assert "over 64 observations each (threshold 10%)" in dead.message
    (saturated,) = unit_findings([_site("t", saturated=0.6)], Config(saturation_margin=0.05))
    assert saturated.kind == "saturation" and saturated.threshold == 0.5
    assert "60% of its tanh outputs are within 5% of the range's ends" in saturated.message


def test_dead_units_come_first_then_saturation_each_in_model_order() -> None:
    sites = [_site("t1", saturated=0.95), _site("r1", dead=0.6), _site("r2", dead=0.2)]
    found = [(f.kind.value, f.where) for f in unit_findings(sites, Config())]
    assert found == [("dead_relu", "r1"), ("dead_relu", "r2"), ("saturation", "t1")]
