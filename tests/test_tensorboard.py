"""The TensorBoard adapter, written with a real SummaryWriter and read back from the
event file with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from torch.utils.tensorboard import SummaryWriter

from gradcheckup.integrations import summary_scalars
from gradcheckup.integrations.tensorboard import log_report
from tests import sample_reports


def _written(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _text(events: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [
        (event.step, event.tensor_proto.string_val[0].decode())
        for event in events.Tensors(f"{tag}/text_summary")
    ]


def test_scalars_text_and_figure_land_in_the_event_file(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = sample_reports.deep_sigmoid()
    with SummaryWriter(tmp_path) as writer:
        logged = log_report(writer, report, step=7)
    events = _written(tmp_path)
    expected = summary_scalars(report)
    assert logged == expected
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, value in expected.items():
        (event,) = events.Scalars(tag)
        assert event.step == 7
        assert event.value == pytest.approx(value, rel=1e-6)  # stored as float32
    ((step, text),) = _text(events, "gradcheckup/findings")
    (finding,) = report.findings
    assert step == 7
    assert "**gradcheckup: UNHEALTHY: vanishing**" in text
    assert "| severity | kind | where | message | fix |" in text
    assert f"| error | vanishing | {finding.where} |" in text
    assert finding.hint.replace("|", "\\|") in text
    (image,) = events.Images("gradcheckup/flow")
    assert image.step == 7 and image.width > 500 and image.height > 300


def test_a_series_over_steps_with_chosen_layers_and_no_figure(tmp_path: Path) -> None:
    reports = [sample_reports.healthy_resnet(), sample_reports.dead_relu()]
    with SummaryWriter(tmp_path) as writer:
        for step, report in enumerate(reports):
            log_report(writer, report, step=step * 10, layers=["0"] if step else [], figure=False)
    events = _written(tmp_path)
    errors = events.Scalars("gradcheckup/errors")
    assert [(event.step, event.value) for event in errors] == [(0, 0.0), (10, 1.0)]
    (dead,) = [event for event in events.Scalars("gradcheckup/max_dead_fraction") if event.step]
    assert dead.value == pytest.approx(reports[1].activation("0/relu").dead_fraction)
    assert "gradcheckup/layer/0/grad_norm" in events.Tags()["scalars"]
    assert not any("head" in tag for tag in events.Tags()["scalars"])
    assert events.Tags()["images"] == []
    texts = _text(events, "gradcheckup/findings")
    assert texts[0] == (0, "**gradcheckup: healthy** (1 pass(es))\n\nNo findings.")
    assert texts[1][0] == 10 and "| error | dead_relu |" in texts[1][1]
