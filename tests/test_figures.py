"""The charts the pictures draw: each shows what its findings are about, with the Config
thresholds the numbers were judged against, recomputed here from the report itself."""

from __future__ import annotations

import pytest

import gradcheckup as gcu
from gradcheckup.figures import Chart, Note, charts, label_positions
from gradcheckup.report import Severity, display_name, exceeds_clip_limit
from tests import sample_reports
from tests.rules.stats import layer, site


def _chart(report: gcu.Report, title_start: str) -> Chart:
    (chart,) = [chart for chart in charts(report) if chart.title.startswith(title_start)]
    return chart


def _by_name(chart: Chart) -> dict[str, float]:
    return {threshold.label.split(":")[0]: threshold.value for threshold in chart.thresholds}


def test_a_plain_rnn_vanishing_through_time_shows_its_time_profile_first() -> None:
    # The issue: the old PNG showed two healthy-looking bars for this model.
    report = sample_reports.plain_rnn()
    (finding,) = report.findings_of("vanishing_through_time")
    first = charts(report)[0]
    stats = report.temporal[0]
    norms = stats.step_grad_norms
    assert first.title == f"Gradient through time: recurrent (RNN, {len(norms)} steps)"
    assert first.severity is Severity.ERROR and first.kind == "lines"
    assert first.series[0].values == tuple(norms)
    assert first.series[0].mark(0) is Severity.ERROR  # the judged first step
    assert {first.series[0].mark(index) for index in range(1, len(norms))} == {None}
    lines = _by_name(first)
    vanishing = norms[-1] * report.config.temporal_vanishing_ratio
    assert lines["vanishing through time"] == pytest.approx(vanishing)
    assert lines["exploding through time"] == pytest.approx(
        norms[-1] * report.config.temporal_exploding_ratio
    )
    assert lines["memory horizon"] == pytest.approx(
        norms[-1] * report.config.memory_horizon_fraction
    )
    assert norms[0] < vanishing  # what the finding says, visible
    (horizon,) = first.spans
    assert (horizon.start, horizon.end) == (len(norms) - 1 - stats.memory_horizon, len(norms) - 1)
    assert finding.where == "recurrent"
    depth = _chart(report, "Gradient flow")
    assert depth.thresholds == () and "not judged" in depth.caption  # 2 layers < min_depth


def test_a_deep_sigmoid_mlp_shows_its_first_end_in_the_vanishing_band() -> None:
    report = sample_reports.deep_sigmoid()
    config = report.config
    chart = charts(report)[0]
    assert chart.title == "Gradient flow through depth" and chart.severity is Severity.ERROR
    ordered = sorted(report.layers, key=lambda layer: layer.depth_index)
    assert chart.categories == tuple(display_name(layer.name) for layer in ordered)
    signals = [layer.unit_signal for layer in ordered]
    assert chart.series[0].values == tuple(signals)
    logits = signals[-1]
    assert [(t.value, t.severity, t.bad_side) for t in chart.thresholds] == [
        (pytest.approx(logits * config.vanishing_ratio), Severity.ERROR, "below"),
        (pytest.approx(logits * config.vanishing_warn_ratio), Severity.WARNING, "below"),
        (pytest.approx(logits * config.exploding_warn_ratio), Severity.WARNING, "above"),
        (pytest.approx(logits * config.exploding_ratio), Severity.ERROR, "above"),
    ]
    window = int(len(signals) * config.depth_window)
    (span,) = chart.spans
    assert (span.start, span.end, span.label) == (0, window - 1, "first-end window")
    first_end = max(range(window), key=lambda index: signals[index])
    assert chart.notes == (Note(first_end, "first end"), Note(len(signals) - 1, "logits end"))
    assert signals[first_end] < logits * config.vanishing_ratio
    (finding,) = report.findings_of("vanishing")
    marked = {i for i in range(len(signals)) if chart.series[0].mark(i) is Severity.ERROR}
    assert marked == {chart.categories.index(finding.where), first_end, len(signals) - 1}


def test_a_healthy_resnet_stays_between_the_warning_lines_and_nothing_is_marked() -> None:
    report = sample_reports.healthy_resnet()
    assert report.ok
    for chart in charts(report):
        assert chart.severity is None
        assert all(series.mark(i) is None for series in chart.series for i in range(99))
    depth = _chart(report, "Gradient flow")
    lines = _by_name(depth)
    window = depth.series[0].values[: depth.spans[0].end + 1]
    assert lines["vanishing warning"] < max(window) < lines["exploding warning"]
    units = _chart(report, "Dead and saturated")
    assert [t.label for t in units.thresholds] == ["dead warning: >= 0.6", "dead error: >= 0.8"]


def test_unclipped_exploding_steps_are_drawn_against_max_grad_norm() -> None:
    report = sample_reports.unclipped_exploding_training()
    chart = _chart(report, "Optimizer 0")
    norms = [step.grad_norm for step in report.steps]
    assert chart.series[0].values == tuple(norms) and norms[-1] > 1e6 * norms[0]
    (bound,) = chart.thresholds
    (missing,) = report.findings_of("missing_clipping")
    assert (bound.value, bound.bad_side, bound.severity) == (1.0, "above", missing.severity)
    over = {i for i, step in enumerate(report.steps) if exceeds_clip_limit(step, report.config)}
    marked = {i for i in range(len(norms)) if chart.series[0].mark(i)}
    assert over and over <= marked and 0 not in marked  # step 0 (0.66) kept the bound
    assert "0 of 16 steps clipped" in chart.caption


def test_without_max_grad_norm_no_bound_is_drawn_and_the_diverging_step_is_marked() -> None:
    report = sample_reports.unclipped_exploding_training(max_grad_norm=None)
    chart = _chart(report, "Optimizer 0")
    assert chart.thresholds == () and "max_grad_norm not set" in chart.caption
    steps = {f.where for f in report.findings_of("exploding") if f.where.startswith("optimizer")}
    marked = {
        f"optimizer 0, step {report.steps[i].step}" for i in range(16) if chart.series[0].mark(i)
    }
    assert steps and steps <= marked


def test_a_dead_relu_site_is_marked_against_its_family_thresholds() -> None:
    report = sample_reports.dead_relu()
    chart = charts(report)[0]
    assert chart.kind == "hbars" and not chart.log_scale and chart.value_limits() == (0.0, 1.0)
    assert chart.categories == ("0/relu (relu, dead)", "2/sigmoid (sigmoid, saturated)")
    dead = report.activation("0/relu").dead_fraction
    assert chart.series[0].values[0] == dead and dead >= report.config.dead_relu_fraction
    assert [chart.series[0].mark(0), chart.series[0].mark(1)] == [Severity.ERROR, None]
    assert [t.label for t in chart.thresholds] == [
        "dead warning: >= 0.6",
        "dead and saturated error: >= 0.8",  # one line for the two families' equal bound
        "saturated warning: >= 0.5",
    ]


def _report(**fields: object) -> gcu.Report:
    return gcu.Report(
        **{"layers": [], "activations": [], "findings": [], "passes": 1, **fields},
        config=gcu.Config(),
        torch_version="9.9",
        gradcheckup_version="0",
    )


def test_a_report_without_data_has_no_charts() -> None:
    assert charts(_report()) == []


def test_without_hooked_signals_the_bias_gradients_are_drawn_as_the_rule_judges_them() -> None:
    layers = [
        layer(f"l{i}", i, None).model_copy(update={"bias_grad_norm": 10.0**-i}) for i in range(4)
    ]
    (chart,) = charts(_report(layers=layers))
    assert chart.series[0].label.startswith("dL/d bias")
    assert chart.series[0].values == (1.0, 0.1, 0.01, 0.001)


def test_many_sites_show_the_worst_ten_and_say_how_many_are_left_out() -> None:
    sites = [site(f"r{i}", dead=i / 100) for i in range(20)]
    (chart,) = charts(_report(activations=sites))
    assert chart.categories == tuple(f"r{i} (relu, dead)" for i in range(10, 20))
    assert "10 more site(s)" in chart.caption


def test_value_limits_hold_every_value_and_threshold() -> None:
    chart = _chart(sample_reports.deep_sigmoid(), "Gradient flow")
    low, high = chart.value_limits()
    values = [*chart.series[0].values, *(t.value for t in chart.thresholds)]
    assert low < min(values) and max(values) < high


def test_labels_are_thinned_to_every_kth_and_notes_keep_theirs() -> None:
    assert label_positions(5) == [0, 1, 2, 3, 4]
    assert label_positions(100, [99], most=50) == [*range(0, 100, 2), 99]
    assert [Note(i, "x").alignment(5) for i in (0, 2, 4)] == ["start", "middle", "end"]
    assert Note(0, "x").alignment(1) == "middle"
