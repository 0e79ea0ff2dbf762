"""State of one pytest session: the config layers, every report by test, outcomes,
the JSON file and the terminal summary. Plain class, testable without pytest."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcheckup.settings import build_config

if TYPE_CHECKING:
    from gradcheckup.config import Config
    from gradcheckup.report import Report


class GradcheckupSession:
    """Everything one pytest run keeps about gradcheckup.

    Args:
        settings_layers: ``(source, settings)`` pairs, lowest precedence first
            (pyproject, ini, command line); see ``settings.build_config``.
        seed: the torch seed each test's fixture sets.
        json_path: where ``write_json`` writes every report; None: nowhere.
        baseline_dir: folder of per-test gradient-profile baselines; None: no baselines.
        update_baseline: write the baselines instead of comparing with them.
        baseline_factor: how far a layer's gradient norm may move from its baseline.
    """

    def __init__(
        self,
        settings_layers: list[tuple[str, dict[str, Any]]],
        seed: int,
        json_path: Path | None,
        baseline_dir: Path | None,
        update_baseline: bool,
        baseline_factor: float,
    ) -> None:
        """Start with no reports; the config is built on first use."""
        self.settings_layers = settings_layers
        self.seed = seed
        self.json_path = json_path
        self.baseline_dir = baseline_dir
        self.update_baseline = update_baseline
        self.baseline_factor = baseline_factor
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.outcomes: dict[str, str] = {}
        self.locations: dict[str, tuple[str, int | None]] = {}
        self._base_config: Config | None = None

    # -- config ----------------------------------------------------------------------
    def base_config(self) -> Config:
        """Defaults < pyproject < ini < command line (validated once, on first use)."""
        if self._base_config is None:
            self._base_config = build_config(self.settings_layers)
        return self._base_config

    def config_for(self, marker_kwargs: dict[str, Any]) -> Config:
        """The base config with a test's ``@pytest.mark.gradcheckup(...)`` settings.

        Raises:
            ValueError: an unknown or invalid marker setting.
        """
        return build_config([("@pytest.mark.gradcheckup", marker_kwargs)], base=self.base_config())

    # -- results -----------------------------------------------------------------------
    def record(self, nodeid: str, reports: list[Report]) -> None:
        """Keep a test's reports, as JSON-ready dicts (what the JSON file and xdist carry)."""
        if reports:
            self.reports[nodeid] = [json.loads(report.model_dump_json()) for report in reports]

    def record_outcome(self, nodeid: str, outcome: str) -> None:
        """Keep a test's outcome; a failure in any phase is not overwritten by a later one."""
        if self.outcomes.get(nodeid) != "failed":
            self.outcomes[nodeid] = outcome

    def record_location(self, nodeid: str, path: str, line: int | None) -> None:
        """Keep where a test is defined, as pytest reports it: its file relative to the
        rootdir and the 0-based line of its ``def``."""
        self.locations[nodeid] = (path, line)

    def merge(self, serialised: str) -> None:
        """Reports sent by a pytest-xdist worker."""
        self.reports.update(json.loads(serialised))

    def serialised(self) -> str:
        """The reports as a JSON string, as a pytest-xdist worker sends them to ``merge``."""
        return json.dumps(self.reports)

    def write_json(self) -> None:
        """Write ``{"tests": {nodeid: {"outcome", "reports"}}}`` to ``json_path``, if set."""
        if self.json_path is None:
            return
        document = {
            "tests": {
                nodeid: {"outcome": self.outcomes.get(nodeid, "unknown"), "reports": reports}
                for nodeid, reports in sorted(self.reports.items())
            }
        }
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(document, indent=1), encoding="utf-8")

    def summary_lines(self) -> list[str]:
        """One line per test with reports: verdict, counts and the worst finding."""
        from gradcheckup.report import Severity

        lines = []
        for nodeid, reports in sorted(self.reports.items()):
            findings = [finding for report in reports for finding in report["findings"]]
            errors = sum(Severity(finding["severity"]) is Severity.ERROR for finding in findings)
            worst = next(iter(findings), None)
            worst_text = f"; worst: {worst['kind']} at {worst['where']}" if worst else ""
            verdict = "ok" if errors == 0 else "UNHEALTHY"
            lines.append(
                f"{verdict:9} {nodeid}: {len(reports)} report(s), {len(findings)} finding(s), "
                f"{errors} error(s){worst_text}"
            )
        return lines

    def github_annotations(self, rootdir: Path, workspace: Path | None) -> list[str]:
        """GitHub Actions workflow commands for every failed test: one per finding at
        warning or error, placed at the test's file and ``def`` line.

        Passed tests get none: their findings are expected or tolerated (a test that
        checks a sick model is flagged passes with an error in its report).

        Args:
            rootdir: pytest's rootdir, which test locations are relative to.
            workspace: ``$GITHUB_WORKSPACE``, the repository root that annotation paths
                are relative to; None (or a file outside it): the rootdir-relative path.
        """
        from gradcheckup.exports import github_annotations
        from gradcheckup.report import Report, Severity

        commands = []
        for nodeid, reports in sorted(self.reports.items()):
            if self.outcomes.get(nodeid) != "failed":
                continue
            file, line = self._test_place(nodeid, rootdir, workspace)
            for serialised in reports:
                report = Report.model_validate(serialised)
                shown = [f for f in report.findings if f.severity.at_least(Severity.WARNING)]
                commands += github_annotations(
                    report.model_copy(update={"findings": shown}), file=file, line=line
                )
        return commands

    def _test_place(
        self, nodeid: str, rootdir: Path, workspace: Path | None
    ) -> tuple[str, int | None]:
        """A test's file, relative to ``workspace`` where it lies inside, and 1-based line."""
        path, line = self.locations.get(nodeid, (nodeid.split("::")[0], None))
        # Outside the workspace (ValueError) the rootdir-relative path stays.
        if workspace is not None:
            with contextlib.suppress(ValueError):
                path = str((rootdir / path).resolve().relative_to(workspace.resolve()))
        return Path(path).as_posix(), None if line is None else line + 1
