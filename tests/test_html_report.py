"""The HTML report: self-contained, escaped, its charts well-formed SVG, and readable in a
real headless browser (Chromium from Debian's packages; skipped only without it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from gradcheckup.figures import charts
from gradcheckup.html_report import html_report, write_html_report
from gradcheckup.svg import chart_svg
from tests import sample_reports

SAMPLES = {
    "plain-rnn": sample_reports.plain_rnn,
    "deep-sigmoid": sample_reports.deep_sigmoid,
    "healthy-resnet": sample_reports.healthy_resnet,
    "exploding-training": sample_reports.unclipped_exploding_training,
    "dead-relu": sample_reports.dead_relu,
}


def test_the_page_holds_verdict_findings_charts_and_every_layer() -> None:
    report = sample_reports.deep_sigmoid()
    page = html_report(report, title="sigmoid MLP")
    assert page.startswith("<!DOCTYPE html>") and "<title>gradcheckup: sigmoid MLP</title>" in page
    assert "UNHEALTHY: vanishing" in page
    (finding,) = report.findings_of("vanishing")
    assert f"<code>{finding.where}</code>" in page and "Fix: " in page
    assert page.count("<svg ") == len(charts(report)) == 2
    for layer in report.layers:
        assert f"<code>{layer.name}</code>" in page
    assert "vanishing error: &lt; 0.003 x logits end" in page  # the legend, escaped


def test_the_page_needs_nothing_from_elsewhere() -> None:
    page = html_report(sample_reports.unclipped_exploding_training())
    assert not re.search(r"<script|<link|<img|<iframe|src=|url\(|@import", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}


def test_text_from_the_report_is_escaped() -> None:
    report = sample_reports.dead_relu()
    hostile = report.findings[0].model_copy(
        update={"message": "<script>alert(1)</script>", "hint": "a & b"}
    )
    page = html_report(report.model_copy(update={"findings": [hostile]}), title="<b>x</b>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &amp; b" in page and "&lt;b&gt;x&lt;/b&gt;" in page


@pytest.mark.parametrize("name", SAMPLES)
def test_every_chart_is_well_formed_svg(name: str) -> None:
    for chart in charts(SAMPLES[name]()):
        svg = ElementTree.fromstring(chart_svg(chart))
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
        assert svg.get("aria-label") == chart.title


def test_a_healthy_report_says_so(tmp_path: Path) -> None:
    path = tmp_path / "new" / "healthy.html"
    write_html_report(sample_reports.healthy_resnet(), path, title="resnet")
    page = path.read_text(encoding="utf-8")
    assert 'class="verdict healthy">healthy<' in page
    assert "No findings: gradients look healthy." in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browse(page: Path, workdir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    browser = _chromium()
    assert browser is not None
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={workdir / 'profile'}",
            *flags,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_chromium_renders_the_page_with_its_charts_and_the_finding(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    report = sample_reports.plain_rnn()
    page = tmp_path / "report.html"
    write_html_report(report, page, title="plain RNN")
    shot = tmp_path / "shot.png"
    # One browser run: the DOM as Chromium built it on stdout, and the screenshot.
    dom = _browse(page, tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1100,1400")
    (finding,) = report.findings_of("vanishing_through_time")
    assert f"<code>{finding.where}</code>" in dom.stdout and "vanishing_through_time" in dom.stdout
    assert (
        dom.stdout.count("<svg ") == len(charts(report)) and "Gradient through time" in dom.stdout
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 1400)
    colours = image.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 50  # text, charts, colours: not blank
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    assert pixels.std(axis=0).max() > 20
    # The verdict badge and the error-coloured first step: the finding is on screen.
    red, green, blue = pixels.T
    assert ((red > 190) & (green < 70) & (blue < 70)).sum() > 2000
