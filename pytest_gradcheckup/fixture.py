"""The object behind the ``gradcheckup`` fixture: the library with the test's config,
deterministic seeding, and assertion helpers whose failures read well in pytest."""

from __future__ import annotations

import io
import random
from typing import TYPE_CHECKING, Any

from gradcheckup.settings import build_config

if TYPE_CHECKING:
    from gradcheckup.config import Config
    from gradcheckup.monitor import Monitor
    from gradcheckup.report import Report

_CHART_WIDTH = 100


class RecordingMonitor:
    """A ``gcu.watch`` monitor whose reports the fixture also records."""

    def __init__(self, monitor: Monitor, fixture: GradcheckupFixture) -> None:
        """Wrap ``monitor``; its reports go to ``fixture``."""
        self._monitor = monitor
        self._fixture = fixture

    def __enter__(self) -> RecordingMonitor:
        """Attach the monitor's hooks."""
        self._monitor.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Remove the monitor's hooks."""
        self._monitor.__exit__(*exc_info)

    def report(self) -> Report:
        """``Monitor.report()``, recorded for the session JSON, junit properties and baselines."""
        report = self._monitor.report()
        self._fixture._record(report)
        return report

    def __getattr__(self, name: str) -> Any:
        """Everything else is the monitor's own."""
        return getattr(self._monitor, name)


class GradcheckupFixture:
    """``gradcheckup.check`` / ``.watch`` with the test's config, plus the assertions.

    Config precedence: defaults < ``[tool.gradcheckup]`` in pyproject.toml < ini and
    command-line settings < ``@pytest.mark.gradcheckup(...)`` < keyword arguments here.
    """

    def __init__(self, config: Config, seed: int, verbose: bool, record_property: Any) -> None:
        """Seed torch and ``random`` with ``seed``, keeping their states for ``close``.

        Args:
            config: the test's config (session settings and marker).
            seed: the seed set for this test.
            verbose: failures show the full report instead of the chart.
            record_property: called with ``(name, value)`` per property; the plugin
                appends them to the test's ``user_properties`` (junit XML properties).
        """
        import torch

        self.config = config
        self.seed = seed
        self.reports: list[Report] = []
        self._verbose = verbose
        self._record_property = record_property
        self._monitors: list[RecordingMonitor] = []
        self._torch_state = torch.get_rng_state()
        self._cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._python_state = random.getstate()
        torch.manual_seed(seed)
        random.seed(seed)

    # -- the library, with this test's config -------------------------------------------
    def check(
        self, model: Any, inputs: Any, target: Any = None, loss_fn: Any = None, **overrides: Any
    ) -> Report:
        """``gcu.check`` with the fixture's config (``overrides`` are Config fields)."""
        import gradcheckup as gcu

        report = gcu.check(
            model, inputs, target=target, loss_fn=loss_fn, config=self._config_with(overrides)
        )
        self._record(report)
        return report

    def watch(self, model: Any, optimizer: Any = None, **overrides: Any) -> RecordingMonitor:
        """``gcu.watch`` with the fixture's config; its ``report()`` is recorded."""
        import gradcheckup as gcu

        monitor = RecordingMonitor(
            gcu.watch(model, optimizer=optimizer, config=self._config_with(overrides)), self
        )
        self._monitors.append(monitor)
        return monitor

    # -- assertions ----------------------------------------------------------------------
    def assert_healthy(self, report: Report, fail_on: str = "error") -> None:
        """Fail the test on findings of severity ``fail_on`` or worse.

        Args:
            report: a report from ``.check()`` or ``.watch()``.
            fail_on: ``"error"`` (default), ``"warning"`` or ``"info"``.

        Raises:
            AssertionError: listing the findings, followed by the gradient-flow chart
                (the full report with ``pytest -v``).
        """
        __tracebackhide__ = True
        from gradcheckup import testing

        self._assert(testing.assert_healthy, report, fail_on=fail_on)

    def assert_no_vanishing(self, report: Report, min_ratio: float | None = None) -> None:
        """Fail the test if gradients vanish through depth or time.

        Args:
            report: a report from ``.check()`` or ``.watch()``.
            min_ratio: a stricter or laxer ``Config.vanishing_ratio`` for this assertion;
                None: the report's own judgement.

        Raises:
            AssertionError: naming the layers and ratios, followed by the chart.
        """
        __tracebackhide__ = True
        from gradcheckup import testing

        self._assert(testing.assert_no_vanishing, report, min_ratio=min_ratio)

    def assert_no_exploding(self, report: Report, max_ratio: float | None = None) -> None:
        """Fail the test if gradients explode through depth or time.

        Args:
            report: a report from ``.check()`` or ``.watch()``.
            max_ratio: a stricter or laxer ``Config.exploding_ratio`` for this assertion;
                None: the report's own judgement.

        Raises:
            AssertionError: naming the layers and ratios, followed by the chart.
        """
        __tracebackhide__ = True
        from gradcheckup import testing

        self._assert(testing.assert_no_exploding, report, max_ratio=max_ratio)

    def assert_no_dead_relu(self, report: Report, max_fraction: float | None = None) -> None:
        """Fail the test if a ReLU site has too many units that never fired.

        Args:
            report: a report from ``.check()`` or ``.watch()``.
            max_fraction: a stricter or laxer ``Config.dead_relu_fraction`` for this
                assertion; None: the report's own judgement.

        Raises:
            AssertionError: naming the sites and fractions, followed by the chart.
        """
        __tracebackhide__ = True
        from gradcheckup import testing

        self._assert(testing.assert_no_dead_relu, report, max_fraction=max_fraction)

    def assert_clipped(self, report: Report, max_norm: float | None = None) -> None:
        """Fail the test if an optimizer step saw a gradient norm above the clip bound.

        Args:
            report: a report from ``.watch(model, optimizer=...)``.
            max_norm: the bound; None: the report's ``Config.max_grad_norm``.

        Raises:
            AssertionError: naming the steps, their norms and clip calls, followed by
                the chart.
        """
        __tracebackhide__ = True
        from gradcheckup import testing

        self._assert(testing.assert_clipped, report, max_norm=max_norm)

    # -- internals -----------------------------------------------------------------------
    def _assert(self, assertion: Any, report: Report, **kwargs: Any) -> None:
        __tracebackhide__ = True
        try:
            assertion(report, **kwargs)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n\n{self._explain(report)}") from None

    def _explain(self, report: Report) -> str:
        from rich.console import Console

        from gradcheckup.rendering import flow_chart, render

        # Rendered into a string only: printing it too would show the chart twice (in the
        # assertion and as captured stdout) and, under -s, on the terminal.
        console = Console(
            file=io.StringIO(),
            record=True,
            width=_CHART_WIDTH,
            color_system=None,
            force_terminal=False,
        )
        if self._verbose:
            render(report, console=console)
        else:
            chart = flow_chart(report, console)
            if chart is None:
                return "(full report: run with -v, or --gradcheckup-json=PATH)"
            console.print(chart)
            console.print("(full report: run with -v, or --gradcheckup-json=PATH)")
        return console.export_text().rstrip()

    def _config_with(self, overrides: dict[str, Any]) -> Config:
        return build_config([("gradcheckup fixture", overrides)], base=self.config)

    def _record(self, report: Report) -> None:
        from gradcheckup.report import Severity

        if any(report is known for known in self.reports):
            return
        self.reports.append(report)
        errors = sum(finding.severity is Severity.ERROR for finding in report.findings)
        prefix = f"gradcheckup_{len(self.reports)}" if len(self.reports) > 1 else "gradcheckup"
        self._record_property(f"{prefix}_ok", report.ok)
        self._record_property(f"{prefix}_errors", errors)
        self._record_property(f"{prefix}_findings", len(report.findings))
        worst = worst_of(report)
        if worst:
            self._record_property(f"{prefix}_worst", worst)

    def close(self) -> None:
        """Close the test's monitors and restore the torch and Python RNG states."""
        import torch

        for monitor in self._monitors:
            monitor.close()
        torch.set_rng_state(self._torch_state)
        if self._cuda_states is not None:
            torch.cuda.set_rng_state_all(self._cuda_states)
        random.setstate(self._python_state)


def worst_of(report: Report) -> str:
    """The most severe finding as 'kind at where (value)', or '' if none."""
    if not report.findings:
        return ""
    finding = report.findings[0]  # sorted: errors first
    value = "" if finding.value is None else f" ({finding.value:.3g})"
    return f"{finding.kind.value} at {finding.where}{value}"
