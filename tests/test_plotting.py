"""The PNG: one panel per chart, titled and with the thresholds in its legend."""

from __future__ import annotations

from pathlib import Path

import pytest

import gradcheckup as gcu
from gradcheckup.figures import charts
from tests import sample_reports

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The figures plot_gradient_flow saves, kept for inspection."""
    from matplotlib.figure import Figure

    figures: list[object] = []
    save = Figure.savefig

    def keep(self: Figure, *args: object, **kwargs: object) -> None:
        figures.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _panels(figure) -> list[tuple[str, list[str]]]:
    return [
        (axis.get_title(loc="left"), [text.get_text() for text in axis.get_legend().get_texts()])
        for axis in figure.axes
    ]


def test_the_plain_rnn_png_shows_the_gradient_through_time_first(
    tmp_path: Path, drawn: list[object]
) -> None:
    from gradcheckup.plotting import plot_gradient_flow

    report = sample_reports.plain_rnn()
    plot_gradient_flow(report, tmp_path / "deep" / "rnn.png", title="plain RNN")
    assert (tmp_path / "deep" / "rnn.png").read_bytes().startswith(b"\x89PNG")
    (figure,) = drawn
    (time_title, time_legend), (depth_title, _) = _panels(figure)
    assert time_title.startswith("Gradient through time: recurrent (RNN, 60 steps)")
    assert "vanishing through time: < 0.001 x last step" in time_legend
    assert "error finding here" in time_legend
    assert depth_title == "Gradient flow through depth"
    assert figure._suptitle.get_text() == "plain RNN — UNHEALTHY: vanishing_through_time"


@pytest.mark.parametrize(
    "make",
    [
        sample_reports.deep_sigmoid,
        sample_reports.healthy_resnet,
        sample_reports.unclipped_exploding_training,
        sample_reports.dead_relu,
    ],
    ids=["deep-sigmoid", "healthy-resnet", "exploding-training", "dead-relu"],
)
def test_every_chart_is_a_panel_with_its_thresholds_in_the_legend(
    make, tmp_path: Path, drawn: list[object]
) -> None:
    from gradcheckup.plotting import plot_gradient_flow

    report = make()
    plot_gradient_flow(report, tmp_path / "flow.png")
    (figure,) = drawn
    panels = _panels(figure)
    assert [title for title, _ in panels] == [chart.title for chart in charts(report)]
    for (_, legend), chart in zip(panels, charts(report), strict=True):
        labels = [series.label for series in chart.series]
        labels += [threshold.label for threshold in chart.thresholds]
        labels += [span.label for span in chart.spans]
        assert set(labels) <= set(legend)


def test_a_report_with_nothing_to_draw_still_gets_a_png(tmp_path: Path) -> None:
    from gradcheckup.plotting import plot_gradient_flow

    empty = gcu.Report(
        layers=[],
        activations=[],
        findings=[],
        passes=0,
        config=gcu.Config(),
        torch_version="9.9",
        gradcheckup_version="0",
    )
    plot_gradient_flow(empty, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 1000
