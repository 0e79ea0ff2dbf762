"""What the training-framework callbacks (Lightning, Hugging Face) share: one watch over
a training run, a window report at every log step, warnings once per new finding, the
decision to stop, and the final report written at the end.

Imports no framework: each callback translates its framework's hooks into these calls.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gradcheckup.integrations._scalars import DEFAULT_PREFIX, summary_scalars
from gradcheckup.report import Finding, Report, Severity, display_name

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gradcheckup.config import Config
    from gradcheckup.monitor import Monitor

__all__ = ["TrainingCallback", "TrainingWatch", "window_report", "with_clip_bound"]


def window_report(monitor: Monitor) -> Report:
    """The report of the passes and steps since the previous call (``Monitor.snapshot``),
    or of everything so far where the monitor has no windows yet (``Monitor.report``)."""
    snapshot = getattr(monitor, "snapshot", None)
    return snapshot(reset=True) if snapshot is not None else monitor.report()


def with_clip_bound(config: Config | None, bound: float | None) -> Config | None:
    """``config`` with ``max_grad_norm=bound`` where the trainer clips by norm and the
    config names no bound of its own, so that steps the clipping missed are errors.

    A bound the user set in ``config`` wins; ``bound`` None or not positive (the trainer
    does not clip) leaves ``config`` as it is.
    """
    if bound is None or bound <= 0 or (config is not None and config.max_grad_norm is not None):
        return config
    from gradcheckup.config import Config

    fields = {} if config is None else config.model_dump()
    return Config.model_validate({**fields, "max_grad_norm": float(bound)})


class TrainingWatch:
    """One ``gcu.watch`` over a training run, driven by a framework's callback hooks.

    Args:
        config: thresholds; ``gcu.Config()`` by default.
        layers: layer names whose gradient norm and backward signal are logged (as in
            ``summary_scalars``); None for the two ends of the depth ratio.
        prefix: put before every logged name.
        stop_on: stop training at the first window with a finding of this severity or
            worse ("error" or "warning"); None never stops.
        warn_on: warn once per new finding (kind and place) of this severity or worse.
        report_path: where the final report is written as JSON, if given.
        html_path: where the final report is written as an HTML page, if given.

    Raises:
        ValueError: ``stop_on`` or ``warn_on`` names no severity.
    """

    def __init__(
        self,
        config: Config | None,
        *,
        layers: Sequence[str] | None,
        prefix: str,
        stop_on: Severity | str | None,
        warn_on: Severity | str,
        report_path: str | Path | None,
        html_path: str | Path | None,
    ) -> None:
        self.config = config
        self.layers = None if layers is None else list(layers)
        self.prefix = prefix
        self.stop_on = None if stop_on is None else _severity("stop_on", stop_on)
        self.warn_on = _severity("warn_on", warn_on)
        self.report_path = None if report_path is None else Path(report_path)
        self.html_path = None if html_path is None else Path(html_path)
        self.monitor: Monitor | None = None
        self.report: Report | None = None
        self.stop_reason: str | None = None
        self._seen: set[tuple[str, str]] = set()
        self._writes_files = True

    def open(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        clip_bound: float | None = None,
        writes_files: bool = True,
        data_parallel: nn.Module | None = None,
    ) -> None:
        """Start watching ``model`` and its optimizers' steps (closing a previous watch).

        Args:
            model: the module being trained.
            optimizers: the optimizers that step it.
            clip_bound: the norm the trainer clips gradients to, if it clips by norm;
                used as ``Config.max_grad_norm`` unless the config names one.
            writes_files: False on processes other than the main one in distributed
                training: they neither warn nor write the report.
            data_parallel: the trainer's DDP wrapper around ``model``, if any.
        """
        from gradcheckup.monitor import Monitor, require_optimizers

        self.close()
        self._seen.clear()
        self.report, self.stop_reason = None, None
        self._writes_files = writes_files
        config = with_clip_bound(self.config, clip_bound)
        monitor = Monitor(
            model, config, require_optimizers(list(optimizers)), data_parallel=data_parallel
        )
        _require_layers(self.layers, monitor)
        self.monitor = monitor.open()

    def window_scalars(self, step: int) -> dict[str, float]:
        """The scalars of the window since the previous call; warns about its new
        findings and sets ``stop_reason`` when one reaches ``stop_on``."""
        if self.monitor is None:
            return {}
        report = window_report(self.monitor)
        self._warn_new(report)
        if self.stop_reason is None and self.stop_on is not None:
            worst = _first_at_least(report.findings, self.stop_on)
            if worst is not None:
                self.stop_reason = _stop_message(worst, self.stop_on, step)
        return summary_scalars(report, self.layers, self.prefix)

    def close(self, local: bool = False) -> Report | None:
        """Stop watching; the report of the whole run (also kept in ``report``) is
        checked for new findings and written to the paths given. None if not open.

        Args:
            local: this process's report only (``Monitor.report(local=True)``): after an
                exception the other ranks of a distributed job may never report.
        """
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return None
        monitor.close()
        self.report = monitor.report(local=local)
        self._warn_new(self.report)
        if self._writes_files:
            self._write(self.report)
        return self.report

    def _warn_new(self, report: Report) -> None:
        """Warn once per finding (kind and place) at ``warn_on`` or worse."""
        for finding in report.findings:
            key = _finding_key(finding)
            if key not in self._seen and finding.severity.at_least(self.warn_on):
                self._seen.add(key)
                if self._writes_files:
                    warnings.warn(f"gradcheckup: {finding.describe()}", UserWarning, stacklevel=4)

    def _write(self, report: Report) -> None:
        if self.report_path is not None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            self.report_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
        if self.html_path is not None:
            from gradcheckup.html_report import write_html_report

            write_html_report(report, self.html_path, title="training run")


def _finding_key(finding: Finding) -> tuple[str, str]:
    """What makes a finding new: its kind and place, a step finding's place being its
    optimizer (``step_label``'s 'optimizer 0, step 3'), since each window names its own
    first step."""
    return finding.kind.value, _STEP_IN_LABEL.sub("", finding.where)


_STEP_IN_LABEL = re.compile(r", step \d+$")


def _first_at_least(findings: Sequence[Finding], threshold: Severity) -> Finding | None:
    """The first finding of the highest severity, if that is ``threshold`` or worse."""
    over = [finding for finding in findings if finding.severity.at_least(threshold)]
    return max(over, key=lambda finding: finding.severity.rank, default=None)


def _stop_message(finding: Finding, stop_on: Severity, step: int) -> str:
    return (
        f"gradcheckup stopped training at step {step} (stop_on={stop_on.value!r}): "
        f"{finding.severity.value} "
        f"{finding.kind.value} at {finding.where}: {finding.message} Hint: {finding.hint}"
    )


class TrainingCallback:
    """What the Lightning and Hugging Face callbacks share: their options, their watch
    and one log per optimizer step; each framework's class adds its hooks.

    Args:
        config: thresholds; ``gcu.Config()`` by default.
        layers: layer names whose gradient norm and backward signal are logged; None for
            the two ends of the depth ratio.
        stop_on: "error" or "warning": stop at the first log whose window has a finding
            of that severity or worse; None never stops.
        warn_on: warn once per new finding of this severity or worse.
        report_path: write the final report here as JSON.
        html_path: write the final report here as a self-contained HTML page.
        prefix: put before every logged name.

    Raises:
        ValueError: ``stop_on`` or ``warn_on`` names no severity.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        layers: Sequence[str] | None = None,
        stop_on: Severity | str | None = None,
        warn_on: Severity | str = "warning",
        report_path: str | Path | None = None,
        html_path: str | Path | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__()
        self._watch = TrainingWatch(
            config,
            layers=layers,
            prefix=prefix,
            stop_on=stop_on,
            warn_on=warn_on,
            report_path=report_path,
            html_path=html_path,
        )
        self._logged_step = -1

    @property
    def report(self) -> Report | None:
        """The report of the whole last training run, once it ended; None before."""
        return self._watch.report

    @property
    def stop_reason(self) -> str | None:
        """Why this callback stopped training, or None."""
        return self._watch.stop_reason

    def _open(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        clip_bound: float | None,
        writes_files: bool,
        data_parallel: nn.Module | None = None,
    ) -> None:
        self._logged_step = -1
        self._watch.open(
            model,
            optimizers,
            clip_bound=clip_bound,
            writes_files=writes_files,
            data_parallel=data_parallel,
        )

    def _scalars_once(self, step: int) -> dict[str, float] | None:
        """The scalars of the window up to optimizer step ``step``; None when that step
        was logged already (several logs per step: accumulation, evaluation)."""
        if step == self._logged_step:
            return None
        self._logged_step = step
        return self._watch.window_scalars(step)

    def _stops_now(self, stopping: bool, warn: bool) -> bool:
        """True when a finding reached ``stop_on`` and the trainer is not stopping yet;
        then says why (a warning, on the main process)."""
        reason = self._watch.stop_reason
        if reason is None or stopping:
            return False
        if warn:
            warnings.warn(reason, UserWarning, stacklevel=3)
        return True


def _require_layers(names: Sequence[str] | None, monitor: Monitor) -> None:
    """Raise at the start of training, not at the first log step, for an unknown layer.

    Raises:
        ValueError: a name in ``names`` is no layer of the watched model.
    """
    known = [layer.name for layer in monitor.inventory.layers]
    unknown = [name for name in names or () if name not in known and name != "(model)"]
    if unknown:
        raise ValueError(
            f"layers: no layer named {unknown[0]!r} in the model; layers (modules that own "
            f"parameters) are {[display_name(name) for name in known][:12]}"
        )


def _severity(argument: str, value: Severity | str) -> Severity:
    """``value`` as a Severity; a ValueError names the argument and the choices."""
    try:
        return Severity(value)
    except ValueError:
        choices = ", ".join(repr(severity.value) for severity in Severity)
        raise ValueError(f"{argument}: expected one of {choices}, got {value!r}") from None
