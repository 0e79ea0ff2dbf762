"""Config: copies with overrides go through settings.build_config."""

from __future__ import annotations

import pytest

import gradcheckup as gcu


def test_merged_overrides_and_validates() -> None:
    base = gcu.Config(max_grad_norm=1.0)
    merged = base.merged(dead_relu_fraction=0.3)
    assert merged.dead_relu_fraction == 0.3 and merged.max_grad_norm == 1.0
    assert base.dead_relu_fraction == gcu.Config().dead_relu_fraction  # base unchanged
    assert base.merged() is base
    with pytest.raises(ValueError, match=r"^Config.merged: unknown setting 'dead_relu_fractoin'"):
        base.merged(dead_relu_fractoin=0.3)
    with pytest.raises(ValueError, match=r"^Config.merged: dead_relu_fraction=1.5 is invalid"):
        base.merged(dead_relu_fraction=1.5)


def test_clip_limit_adds_the_tolerance() -> None:
    assert gcu.Config().clip_limit is None
    assert gcu.Config(max_grad_norm=2.0, clip_tolerance=0.5).clip_limit == 3.0
