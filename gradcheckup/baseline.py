"""Baselines for gradient profiles, like snapshot testing: store once, compare every run.

A profile is, per report of a test, each layer's gradient norm and the findings. A
regression is a layer whose gradient norm moved by more than a factor (either way), or a
finding (warning or error) that the baseline did not have or had at a milder severity.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the baseline ({error})") from error
    try:
        stored = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a gradcheckup baseline: invalid JSON ({error})") from error
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
    stored = read_baseline(path)
    current = profile_of(reports)
    problems = []
    if len(stored) != len(current):
        problems.append(f"the test made {len(current)} report(s); the baseline has {len(stored)}")
    for position, (old, new) in enumerate(zip(stored, current, strict=False)):
        label = f"report {position + 1}: " if len(current) > 1 else ""
        for name, old_norm in old["layers"].items():
            new_norm = new["layers"].get(name)
            if not _comparable(old_norm) or not _comparable(new_norm):
                continue
            ratio = new_norm / old_norm
            if ratio > factor or ratio < 1 / factor:
                direction = f"{ratio:.3g}x larger" if ratio > 1 else f"{1 / ratio:.3g}x smaller"
                problems.append(
                    f"{label}layer {display_name(name)!r}: gradient norm {new_norm:.3g} vs "
                    f"baseline {old_norm:.3g} ({direction}; allowed factor {factor:g})"
                )
        known = {(kind, where): severity for kind, where, severity in old["findings"]}
        for kind, where, severity in new["findings"]:
            before = known.get((kind, where))
            if before is None:
                problems.append(f"{label}new finding: {kind} at {where} ({severity})")
            elif Severity(severity).rank > Severity(before).rank:
                problems.append(
                    f"{label}finding got worse: {kind} at {where} ({before} -> {severity})"
                )
    return problems


def _comparable(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
