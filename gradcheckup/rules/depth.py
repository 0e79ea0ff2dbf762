"""Rules on the per-layer statistics (``probes/layers.py``, ``probes/parameters.py``): the
backward signal through depth, layers that stopped learning, non-finite and missing
parameter gradients."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple

from gradcheckup.config import Config
from gradcheckup.report import (
    ActivationStats,
    Finding,
    FindingKind,
    LayerStats,
    Severity,
    backward_signal,
    bias_profile,
    depth_ends,
    depth_profile,
    display_name,
)
from gradcheckup.rules._finding import finding, severity_band
from gradcheckup.rules.facts import NonfiniteInput
from gradcheckup.rules.hints import (
    ALL_ZERO_HINT,
    NONFINITE_INPUT_HINT,
    OUTSIDE_LOSS_HINT,
    collapse_hint,
    exploding_hint,
    vanishing_hint,
)


def depth_ratio(
    layers: Sequence[LayerStats], config: Config
) -> tuple[float, LayerStats, LayerStats, list[LayerStats]] | None:
    """Backward signal at the first layers over the signal at the logits layer.

    The signal is dL/d(output) summed over positions per unit (``report.backward_signal``), so
    wide early feature maps and a narrow head compare fairly. The first end is the largest
    signal among the first ``config.depth_window`` of the layers, the last end the last
    layer that is not a normalisation layer (``report.depth_ends``). Returns (ratio,
    first-end layer, last-end layer, profile), or None when fewer than
    ``config.min_depth`` layers have a signal.
    """
    profile = depth_profile(layers) or bias_profile(layers)
    if len(profile) < config.min_depth:
        return None
    first_end, last_end = depth_ends(profile, config.depth_window)
    ratio = backward_signal(first_end) / (backward_signal(last_end) or 1.0)
    return ratio, first_end, last_end, profile


def depth_findings(
    layers: Sequence[LayerStats], activations: Sequence[ActivationStats], config: Config
) -> list[Finding]:
    """Vanishing or exploding backward signal through depth, judged on ``depth_ratio``.

    The ratio is compared with ``config.vanishing_ratio`` (error) and
    ``config.vanishing_warn_ratio`` (warning) from below, else with
    ``config.exploding_ratio`` (error) and ``config.exploding_warn_ratio`` (warning)
    from above. The finding names the first layer with a measured signal.
    """
    measured = depth_ratio(layers, config)
    if measured is None:
        return []
    ratio, first_end, last_end, profile = measured
    verdict = _depth_verdict(ratio, (site.function for site in activations), config)
    if verdict is None:
        return []
    where, ends = _describe_ends(layers, profile, first_end, last_end)
    return [
        finding(
            verdict.kind,
            verdict.severity,
            where,
            f"The backward signal per unit {verdict.shape} ({ends}).",
            value=ratio,
            threshold=verdict.threshold,
            hint=verdict.hint,
        )
    ]


class _Verdict(NamedTuple):
    kind: FindingKind
    severity: Severity
    threshold: float
    shape: str
    hint: str


def _depth_verdict(
    ratio: float, activation_functions: Iterable[str], config: Config
) -> _Verdict | None:
    vanishing = severity_band(
        ratio, config.vanishing_ratio, config.vanishing_warn_ratio, worse_when="lower"
    )
    if vanishing is not None:
        severity, threshold = vanishing
        shape = f"shrinks {1 / ratio:.3g}x from the logits layer to the first layers"
        shape += f": ratio {ratio:.3g} < {threshold:g}"
        hint = vanishing_hint(activation_functions)
        return _Verdict(FindingKind.VANISHING, severity, threshold, shape, hint)
    exploding = severity_band(
        ratio, config.exploding_ratio, config.exploding_warn_ratio, worse_when="higher"
    )
    if exploding is None:
        return None
    severity, threshold = exploding
    shape = f"grows {ratio:.3g}x from the logits layer to the first layers"
    shape += f": ratio {ratio:.3g} > {threshold:g}"
    return _Verdict(FindingKind.EXPLODING, severity, threshold, shape, exploding_hint())


def _describe_ends(
    layers: Sequence[LayerStats],
    profile: Sequence[LayerStats],
    first_end: LayerStats,
    last_end: LayerStats,
) -> tuple[str, str]:
    """Where a depth finding points, and the text naming the two ends it compared."""
    ends = (
        f"first layers: largest at {display_name(first_end.name)!r}, "
        f"{backward_signal(first_end):.3g}; logits layer {display_name(last_end.name)!r}: "
        f"{backward_signal(last_end):.3g}; over {len(profile)} layers"
    )
    if profile[0].unit_signal is None:
        ends += "; judged on bias gradients, as the backward signal could not be hooked"
    # Name the first layer that has a signal at all: when the gradient underflows to
    # exactly 0 before the input, that layer is where the user should look.
    with_signal = (
        sorted(
            (
                layer
                for layer in layers
                if layer.depth_index is not None and layer.unit_signal is not None
            ),
            key=lambda layer: layer.depth_index or 0,
        )
        or profile
    )
    zeros = sum(1 for layer in with_signal if layer.unit_signal == 0)
    if zeros:
        ends += f"; {zeros} layer(s) got exactly zero"
    return display_name(with_signal[0].name), ends


def collapse_findings(
    layers: Sequence[LayerStats], activations: Sequence[ActivationStats] = ()
) -> list[Finding]:
    """An error (kind ``vanishing``) for each layer whose gradient was non-zero and then
    exactly zero on every watched step to the end (``LayerStats.zero_since_step``); the
    hint follows the activation functions the model uses (``collapse_hint``).

    No ``Config`` threshold: exact zero is the criterion.
    """
    hint = collapse_hint(site.function for site in activations)
    return [
        finding(
            FindingKind.VANISHING,
            Severity.ERROR,
            display_name(layer.name),
            f"Its gradient was non-zero, then exactly zero on every step from step "
            f"{layer.zero_since_step} on: the layer stopped learning during training.",
            value=float(layer.zero_since_step),
            hint=hint,
        )
        for layer in layers
        if layer.zero_since_step is not None
    ]


def nonfinite_findings(
    layers: Sequence[LayerStats], loss: float | None, inputs: Sequence[NonfiniteInput] = ()
) -> list[Finding]:
    """Where NaN/inf come from: an input argument holding NaN (the data is at fault), else
    a non-finite loss (the forward pass), else the layer where NaN/inf gradients appeared
    first in backward order (``LayerStats.nonfinite_rank``).

    An input holding only inf is named but not blamed: additive attention masks use -inf.
    No ``Config`` threshold: any non-finite value counts.

    Args:
        layers: per-layer statistics.
        loss: the loss ``check()`` differentiated; None under ``watch()``.
        inputs: ``check()``'s input arguments that hold NaN/inf (``PassFacts``).
    """
    affected = [layer for layer in layers if layer.nonfinite_rank is not None]
    loss_finite = loss is None or math.isfinite(loss)
    with_nan = [entry for entry in inputs if entry.nan_count]
    if with_nan and (affected or not loss_finite):
        return [_nonfinite_input_finding(with_nan, loss, len(affected))]
    if loss is not None and not loss_finite:
        with_inf = "".join(
            f" {entry.label} holds {entry.inf_count} inf entries: unless it is an attention "
            "mask, they are the origin."
            for entry in inputs
        )
        return [
            finding(
                FindingKind.NONFINITE,
                Severity.ERROR,
                "loss",
                f"The loss itself is {loss}, so the problem is in the forward pass or the "
                f"loss function ({len(affected)} layers got non-finite gradients).{with_inf}",
                value=loss,
            )
        ]
    if not affected:
        return []
    origin = min(affected, key=lambda layer: layer.nonfinite_rank or 0)
    if origin.nonfinite_count:
        amount = f"{origin.nonfinite_count} NaN/inf gradient entries"
        value = float(origin.nonfinite_count)
    else:
        amount = f"NaN/inf gradients in {origin.nonfinite_passes} pass(es)"
        value = float(origin.nonfinite_passes)
    return [
        finding(
            FindingKind.NONFINITE,
            Severity.ERROR,
            display_name(origin.name),
            f"Non-finite gradients first appear at {display_name(origin.name)!r} in backward "
            f"order ({amount}); {len(affected)} layer(s) affected in all.",
            value=value,
            threshold=0.0,
        )
    ]


def _nonfinite_input_finding(
    inputs: Sequence[NonfiniteInput], loss: float | None, affected: int
) -> Finding:
    first = inputs[0]
    listed = ", ".join(
        f"{entry.label} ({entry.nan_count} NaN, {entry.inf_count} inf entries)" for entry in inputs
    )
    loss_text = "" if loss is None else f"the loss ({loss}) and "
    return finding(
        FindingKind.NONFINITE,
        Severity.ERROR,
        first.label,
        f"The input is not finite: {listed}. So {loss_text}the gradients of {affected} layer(s) "
        "are not either: the problem is in the data, not in the model.",
        value=float(first.nan_count),
        threshold=0.0,
        hint=NONFINITE_INPUT_HINT,
    )


def all_zero_findings(layers: Sequence[LayerStats]) -> list[Finding]:
    """An error (kind ``vanishing``) when every gradient that arrived was exactly zero.

    Nothing was measured then (no layer has a signal to compare), and nothing would
    learn. No ``Config`` threshold: exact zero is the criterion.
    """
    measured = [layer for layer in layers if layer.grad_norm is not None]
    if not measured or any(layer.grad_norm != 0 for layer in measured):
        return []
    return [
        finding(
            FindingKind.VANISHING,
            Severity.ERROR,
            display_name(""),
            f"Every parameter gradient was exactly zero ({len(measured)} layer(s)): no layer "
            "got a signal to measure, and nothing would learn.",
            value=0.0,
            hint=ALL_ZERO_HINT,
        )
    ]


DETACHED_HINT = (
    "Find where the output of these layers leaves the autograd graph before the loss: a "
    ".detach(), .item(), .numpy()/.tolist(), a torch.no_grad() block or a tensor rebuilt "
    "from data (torch.tensor(x)); remove it, or freeze the layers with requires_grad_(False) "
    "if they are not meant to learn."
)


def no_gradient_findings(
    layers: Sequence[LayerStats], outside_loss: Collection[tuple[str, str]] = ()
) -> list[Finding]:
    """Trainable parameters that never got a gradient (``LayerStats.params_without_grad``).

    Info when no backward pass reached the model at all. Otherwise, per layer: info for
    parameters that feed only outputs the loss did not use (``outside_loss``: (layer
    name, parameter name) pairs, from ``PassFacts``); an error for layers that ran in the
    forward pass while neither their output nor any of their parameters got a gradient
    (their output was detached before the loss), one per run of such layers consecutive
    in forward order; a warning
    for the other parameters (unused in forward). No ``Config`` threshold.
    """
    if not any(layer.passes for layer in layers):
        return [
            finding(
                FindingKind.NO_GRADIENT,
                Severity.INFO,
                display_name(""),
                "No backward pass reached the model's parameters while it was watched.",
                hint="Call loss.backward() inside the `with gcu.watch(model)` block.",
            )
        ]
    findings = []
    detached = _detached_layers(layers, outside_loss)
    for layer in layers:
        outside = [name for name in layer.params_without_grad if (layer.name, name) in outside_loss]
        unused = [name for name in layer.params_without_grad if name not in outside]
        if outside:
            findings.append(_outside_loss_finding(layer, outside))
        if unused and layer.name not in detached:
            findings.append(
                finding(
                    FindingKind.NO_GRADIENT,
                    Severity.WARNING,
                    display_name(layer.name),
                    f"Trainable parameter(s) {', '.join(unused)} received no gradient in any pass.",
                    value=float(len(unused)),
                )
            )
    return [*(_detached_finding(run) for run in _forward_runs(layers, detached)), *findings]


def _detached_layers(
    layers: Sequence[LayerStats], outside_loss: Collection[tuple[str, str]]
) -> set[str]:
    """Layers that ran forward, yet neither their output nor any of their parameters got a
    gradient in any pass, and none of them is explained by feeding an output outside the
    loss. (A module whose output got a gradient while its own parameter did not, such as
    a model holding an unused scale, left that parameter unused: not detached.)"""
    return {
        layer.name
        for layer in layers
        if layer.depth_index is not None
        and layer.passes == 0
        and layer.output_grad_norm is None
        and layer.params_without_grad
        and not any((layer.name, name) in outside_loss for name in layer.params_without_grad)
    }


def _forward_runs(layers: Sequence[LayerStats], chosen: set[str]) -> list[list[LayerStats]]:
    """The ``chosen`` layers, grouped into runs that are consecutive in forward order."""
    ran = sorted(
        (layer for layer in layers if layer.depth_index is not None),
        key=lambda layer: layer.depth_index or 0,
    )
    runs: list[list[LayerStats]] = []
    previous_chosen = False
    for layer in ran:
        is_chosen = layer.name in chosen
        if is_chosen and previous_chosen:
            runs[-1].append(layer)
        elif is_chosen:
            runs.append([layer])
        previous_chosen = is_chosen
    return runs


def _detached_finding(run: Sequence[LayerStats]) -> Finding:
    named = ", ".join(repr(display_name(layer.name)) for layer in run[:3])
    more = f" and {len(run) - 3} more" if len(run) > 3 else ""
    return finding(
        FindingKind.NO_GRADIENT,
        Severity.ERROR,
        display_name(run[0].name),
        f"{len(run)} layer(s) ran in forward, but no gradient reached their parameters while "
        f"the loss reached other layers ({named}{more}, consecutive in forward order): their "
        "output is detached (.detach(), .item(), numpy, torch.no_grad) before the loss.",
        value=float(len(run)),
        hint=DETACHED_HINT,
    )


def _outside_loss_finding(layer: LayerStats, outside: Sequence[str]) -> Finding:
    return finding(
        FindingKind.NO_GRADIENT,
        Severity.INFO,
        display_name(layer.name),
        f"Trainable parameter(s) {', '.join(outside)} feed the model's output but "
        "not the loss that was differentiated (an output the loss ignores, such as "
        "an auxiliary head): their gradients were not measured.",
        value=float(len(outside)),
        hint=OUTSIDE_LOSS_HINT,
    )
