"""What was not measured: a report whose forward-pass probes saw nothing is not healthy."""

from __future__ import annotations

from collections.abc import Sequence

from gradcheckup.report import Finding, FindingKind, LayerStats, Severity, display_name
from gradcheckup.rules._finding import finding


def coverage_findings(layers: Sequence[LayerStats], passes: int | None) -> list[Finding]:
    """An error when parameters received gradients but no forward pass was recorded.

    The model then ran where no module hook could see it: as ``torch.compile`` code
    (the hooks step aside while dynamo traces, and a model compiled before the watch
    opened runs what was compiled without them), so dead units, saturation, backward
    gains and the depth trend were never measured, and a clean report would claim
    health it did not check.
    ``report.unavailable`` says the same. No ``Config`` threshold.

    Args:
        layers: per-layer statistics.
        passes: forward passes the module hooks recorded; None when not known.
    """
    gradient_passes = max((layer.passes for layer in layers), default=0)
    if passes != 0 or not gradient_passes:
        return []
    return [
        finding(
            FindingKind.NOT_MEASURED,
            Severity.ERROR,
            display_name(""),
            f"Parameters received gradients in {gradient_passes} backward pass(es), but no "
            "forward pass was seen: only parameter gradient norms were measured (no dead "
            "units, saturation, backward signal or depth trend).",
            value=float(gradient_passes),
            hint=(
                "Compiled code hides every module call, so measure these statistics on the "
                "uncompiled model: gcu.check(model, inputs) (it runs a compiled model "
                "eagerly), or a few steps inside gcu.watch under "
                "torch.compiler.set_stance('force_eager'); see the README's Limits."
            ),
        )
    ]
