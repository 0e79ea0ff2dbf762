"""The Report model: JSON round trip, lookups, ok."""

from __future__ import annotations

import json

import pytest
import torch

import gradcheckup as gcu
from tests import models


def test_json_round_trip_reproduces_the_report_exactly() -> None:
    report = gcu.check(
        models.sigmoid_mlp(depth=6), torch.randn(16, 64), target=torch.randint(0, 10, (16,))
    )
    text = report.model_dump_json()
    restored = gcu.Report.model_validate_json(text)
    assert restored == report
    assert restored.model_dump_json() == text
    data = json.loads(text)  # strict JSON: no bare NaN/Infinity tokens
    assert data["ok"] == report.ok
    assert {"layers", "activations", "findings", "config", "torch_version"} <= set(data)


def test_ok_is_false_iff_an_error_finding_exists() -> None:
    sick = gcu.check(models.sigmoid_mlp(depth=20), torch.randn(16, 64))
    assert not sick.ok and any(f.severity == "error" for f in sick.findings)
    healthy = gcu.check(models.he_relu_mlp(depth=3), torch.randn(32, 32))
    assert healthy.ok and all(f.severity != "error" for f in healthy.findings)


def test_lookup_errors_name_what_exists() -> None:
    report = gcu.check(models.he_relu_mlp(depth=2), torch.randn(8, 32))
    with pytest.raises(KeyError, match=r"no layer named 'nope'; layers: \['0', '2', '4'\]"):
        report.layer("nope")
    with pytest.raises(KeyError, match=r"no activation site named 'x'"):
        report.activation("x")
    with pytest.raises(ValueError):
        report.findings_of("not-a-kind")


def test_findings_are_sorted_errors_first() -> None:
    model = torch.nn.Sequential(
        models.biased_linear(8, 20, 0.2), torch.nn.ReLU(), models.sigmoid_mlp(depth=20, width=20)
    )
    report = gcu.check(model, torch.randn(32, 8))
    severities = [finding.severity.value for finding in report.findings]
    order = {"error": 0, "warning": 1, "info": 2}
    assert severities == sorted(severities, key=order.__getitem__)
    assert "error" in severities and "warning" in severities


def test_config_is_validated_and_merged() -> None:
    config = gcu.Config().merged(dead_relu_fraction=0.3)
    assert (
        config.dead_relu_fraction == 0.3 and config.vanishing_ratio == gcu.Config().vanishing_ratio
    )
    with pytest.raises(ValueError, match="dead_relu_fraction"):
        gcu.Config().merged(dead_relu_fraction=1.5)
    for name, field in gcu.Config.model_fields.items():
        assert field.description, f"Config.{name} needs its reason documented"
