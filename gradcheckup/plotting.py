"""A PNG of the gradient flow across depth (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

from gradcheckup.report import (
    Report,
    Severity,
    backward_signal,
    depth_ends,
    depth_profile,
    display_name,
)

__all__ = ["plot_gradient_flow"]


def plot_gradient_flow(report: Report, path: Path, title: str = "gradient flow") -> None:
    """Bars of the backward signal and parameter-gradient norm per layer, log scale.

    The backward signal is dL/d(output) summed over positions per unit, as the depth judgement
    compares it; the two layers that stand for its ends are outlined and labelled.

    Args:
        report: the report to plot (its depth profile and its error findings).
        path: where to write the PNG (folders are created).
        title: the plot's title; the verdict is appended.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'gradcheckup[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = depth_profile(report.layers)
    names = [display_name(layer.name) for layer in profile]
    positions = range(len(profile))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.35 * len(profile) + 2), 4.5))
    signals = [backward_signal(layer) for layer in profile]
    bars = axis.bar([p - 0.2 for p in positions], signals, width=0.4, label="RMS of dL/d output")
    if profile:
        first_end, last_end = depth_ends(profile, report.config.depth_window)
        for end, label in ((first_end, "first end"), (last_end, "logits end")):
            index = profile.index(end)
            bars[index].set_edgecolor("black")
            bars[index].set_linewidth(1.5)
            axis.annotate(
                label, (index - 0.2, signals[index]), ha="center", va="bottom", fontsize=7
            )
    axis.bar(
        [p + 0.2 for p in positions],
        [layer.grad_norm or 0.0 for layer in profile],
        width=0.4,
        label="||dL/dW||",
    )
    axis.set_yscale("log")
    axis.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("RMS / norm (log scale)")
    verdict = (
        "healthy"
        if report.ok
        else "UNHEALTHY: "
        + ", ".join(sorted({f.kind.value for f in report.findings if f.severity is Severity.ERROR}))
    )
    axis.set_title(f"{title} — {verdict}")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
