"""The through-time rule on synthetic per-step profiles."""

from __future__ import annotations

import pytest

from gradcheckup import Config
from gradcheckup.rules import through_time_findings
from tests.rules.stats import temporal


@pytest.mark.parametrize(
    ("ratio", "gated", "expected"),
    [
        (1e-4, False, ("vanishing_through_time", "error")),
        (1e-4, True, ("vanishing_through_time", "warning")),
        (1e-3, False, None),  # at the threshold: not below it
        (0.5, False, None),
        (1e3, True, None),  # at the threshold: not above it
        (2e3, True, ("exploding_through_time", "error")),
    ],
)
def test_first_to_last_against_the_thresholds(
    ratio: float, gated: bool, expected: tuple[str, str] | None
) -> None:
    findings = through_time_findings([temporal("rnn", ratio, gated=gated)], Config())
    assert [(f.kind.value, f.severity.value) for f in findings] == ([expected] if expected else [])


def test_the_finding_names_module_ratio_steps_and_horizon() -> None:
    (finding,) = through_time_findings([temporal("encoder.rnn", 1e-5, steps=40)], Config())
    assert finding.where == "encoder.rnn" and finding.value == 1e-5
    assert finding.threshold == Config().temporal_vanishing_ratio
    assert "is 1e-05 of the last step's (< 0.001) over 40 steps" in finding.message
    assert "memory horizon: 3 step(s) back stay above 0.01" in finding.message
    assert finding.hint.startswith("Use LSTM/GRU instead of a plain RNN")


def test_unmeasured_single_step_and_nonfinite_profiles_are_not_judged() -> None:
    profiles = [
        temporal("a", None),
        temporal("b", 1e-9, steps=1),
        temporal("c", float("inf")),
        temporal("d", float("nan")),
    ]
    assert through_time_findings(profiles, Config()) == []


def test_thresholds_come_from_the_config() -> None:
    config = Config(temporal_vanishing_ratio=0.1, temporal_exploding_ratio=5.0)
    found = through_time_findings([temporal("a", 0.05), temporal("b", 6.0)], config)
    assert [(f.where, f.threshold) for f in found] == [("a", 0.1), ("b", 5.0)]
