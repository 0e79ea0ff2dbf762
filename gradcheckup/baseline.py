"""Baselines for gradient profiles, like snapshot testing: store once, compare every run
(``--baseline``, ``--gradcheckup-baseline``), and between two saved reports
(``gradcheckup compare``).

A profile is, per report of a test, each layer's gradient norm and the findings. A
regression is a layer whose gradient norm moved by more than a factor (either way), or a
finding (warning or error) that the baseline did not have or had at a milder severity.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradcheckup._json_files import read_json_file
from gradcheckup.report import Report, Severity, display_name

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def baseline_path(directory: Path, nodeid: str) -> Path:
    """The file that stores one test's profile inside a baseline folder."""
    return directory / (_UNSAFE.sub("_", nodeid).strip("_") + ".json")


def profile_of(reports: list[Report]) -> list[dict[str, Any]]:
    """The stored form of a test's reports: per report, each layer's gradient norm (by
    name) and the sorted ``[kind, where, severity]`` of its warnings and errors."""
    return [
        {
            "layers": {layer.name: layer.grad_norm for layer in report.layers},
            "findings": sorted(
                [finding.kind.value, finding.where, finding.severity.value]
                for finding in report.findings
                if finding.severity.at_least(Severity.WARNING)
            ),
        }
        for report in reports
    ]


def write_baseline(path: Path, reports: list[Report]) -> None:
    """Store the profile of ``reports`` at ``path`` as stable, sorted JSON (folders are
    created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(profile_of(reports), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def read_baseline(path: Path) -> list[dict[str, Any]]:
    """The stored profile at ``path``, checked to have the form ``write_baseline`` writes.

    Raises:
        FileNotFoundError: no baseline is stored at ``path``.
        ValueError: the file cannot be read or is no gradcheckup baseline; the message
            names the file and what is wrong.
    """
    stored = read_json_file(path, "baseline")
    problem = _profile_problem(stored)
    if problem:
        raise ValueError(
            f"{path}: not a gradcheckup baseline: {problem} (write one with "
            "the update-baseline option)"
        )
    return stored


def _profile_problem(stored: Any) -> str | None:
    """What keeps ``stored`` from being a profile as ``profile_of`` makes it, or None."""
    if not isinstance(stored, list):
        return f"expected a list of reports, found {type(stored).__name__}"
    severities = {severity.value for severity in Severity}
    for position, entry in enumerate(stored, 1):
        where = f"report {position}"
        if not isinstance(entry, dict) or not isinstance(entry.get("layers"), dict):
            return f"{where} has no 'layers' mapping"
        if not isinstance(entry.get("findings"), list):
            return f"{where} has no 'findings' list"
        for finding in entry["findings"]:
            if not isinstance(finding, list) or len(finding) != 3 or finding[2] not in severities:
                return f"{where} has a finding that is not [kind, where, severity]: {finding!r}"
    return None


def compare_with_baseline(path: Path, reports: list[Report], factor: float) -> list[str]:
    """Regressions against the stored profile, one line each (empty: none).

    Raises:
        FileNotFoundError: no baseline is stored at ``path``.
        ValueError: the file is no gradcheckup baseline (``read_baseline``).
    """
    return profile_regressions(read_baseline(path), profile_of(reports), factor)


def profile_regressions(
    stored: list[dict[str, Any]],
    current: list[dict[str, Any]],
    factor: float,
    reference: str = "baseline",
) -> list[str]:
    """Regressions of the profile ``current`` against ``stored`` (both as ``profile_of``
    makes them), one line each: a different number of reports, a layer whose gradient
    norm moved by more than ``factor`` either way, a new or worse finding. ``reference``
    names ``stored`` in the lines (``gradcheckup compare`` says "old report")."""
    problems = []
    if len(stored) != len(current):
        problems.append(f"the test made {len(current)} report(s); the baseline has {len(stored)}")
    for position, (old, new) in enumerate(zip(stored, current, strict=False)):
        label = f"report {position + 1}: " if len(current) > 1 else ""
        problems += [
            label + change.describe(factor, reference)
            for change in layer_changes(old["layers"], new["layers"])
            if change.moved(factor)
        ]
        problems += [
            label + change.describe()
            for change in finding_changes(old["findings"], new["findings"])
            if change.regressed
        ]
    return problems


@dataclass(frozen=True)
class LayerChange:
    """One layer's gradient norm in an old and a new profile (None: not measured, or the
    layer is not in that profile: ``in_old``/``in_new`` say which)."""

    name: str
    old: float | None
    new: float | None
    in_old: bool = True
    in_new: bool = True

    @property
    def ratio(self) -> float | None:
        """new / old where both are finite and positive; None otherwise (not compared)."""
        old, new = self.old, self.new
        if old is None or new is None or not (_comparable(old) and _comparable(new)):
            return None
        return new / old

    def moved(self, factor: float) -> bool:
        """The norm changed by more than ``factor``, either way: a regression."""
        ratio = self.ratio
        return ratio is not None and (ratio > factor or ratio < 1 / factor)

    def describe(self, factor: float, reference: str = "baseline") -> str:
        """The change in one line, as regressions against ``reference`` are reported."""
        ratio = self.ratio
        if ratio is None:
            return f"layer {display_name(self.name)!r}: not compared"
        direction = f"{ratio:.3g}x larger" if ratio > 1 else f"{1 / ratio:.3g}x smaller"
        return (
            f"layer {display_name(self.name)!r}: gradient norm {self.new:.3g} vs "
            f"{reference} {self.old:.3g} ({direction}; allowed factor {factor:g})"
        )


def layer_changes(old: dict[str, float | None], new: dict[str, float | None]) -> list[LayerChange]:
    """Every layer of ``old`` in its order, then the layers only ``new`` has."""
    names = [*old, *(name for name in new if name not in old)]
    return [
        LayerChange(name, old.get(name), new.get(name), name in old, name in new) for name in names
    ]


@dataclass(frozen=True)
class FindingChange:
    """One (kind, where) finding's severity in an old and a new profile (None: absent)."""

    kind: str
    where: str
    old: str | None
    new: str | None

    @property
    def regressed(self) -> bool:
        """New, or worse than before: a regression."""
        if self.new is None:
            return False
        return self.old is None or Severity(self.new).rank > Severity(self.old).rank

    def describe(self) -> str:
        """The change in one line: new, worse, gone, milder or unchanged."""
        place = f"{self.kind} at {self.where}"
        if self.old is None:
            return f"new finding: {place} ({self.new})"
        if self.new is None:
            return f"finding gone: {place} (was {self.old})"
        if self.old == self.new:
            return f"finding unchanged: {place} ({self.new})"
        worse = "got worse" if self.regressed else "got milder"
        return f"finding {worse}: {place} ({self.old} -> {self.new})"


def finding_changes(old: list[list[str]], new: list[list[str]]) -> list[FindingChange]:
    """The stored ``[kind, where, severity]`` findings of two profiles, paired by
    (kind, where): the new profile's in its order, then those only the old one had."""
    before = {(kind, where): severity for kind, where, severity in old}
    after = {(kind, where): severity for kind, where, severity in new}
    places = [*after, *(place for place in before if place not in after)]
    return [
        FindingChange(kind, where, before.get((kind, where)), after.get((kind, where)))
        for kind, where in places
    ]


def _comparable(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
