"""Plain-language fixes for each finding, as the seed articles teach them.

They live beside the rules that attach them to findings; ``HINTS`` holds the fixed texts,
the functions the texts that depend on what was measured.
"""

from __future__ import annotations

from collections.abc import Iterable

from gradcheckup.report import FindingKind

SATURATING_FUNCTIONS = frozenset({"sigmoid", "tanh"})


def vanishing_hint(activation_functions: Iterable[str]) -> str:
    """Fixes for a backward signal vanishing through depth; replacing sigmoid/tanh comes
    first when the model uses them (``activation_functions``: the functions observed)."""
    functions = set(activation_functions)
    steps = []
    if functions & SATURATING_FUNCTIONS:
        steps.append(
            "replace sigmoid/tanh in hidden layers with ReLU-family activations "
            "(their derivatives are at most 1/4 and 1, so every layer shrinks the gradient)"
        )
    steps += [
        "add residual (skip) connections so the gradient has a path that is not multiplied "
        "down at every layer",
        "initialise with He (ReLU) or Xavier/Glorot (tanh/sigmoid) so each layer's gain is ~1",
        "add BatchNorm/LayerNorm",
        "for recurrences, use LSTM/GRU instead of a plain RNN",
    ]
    return _as_sentence(steps)


def collapse_hint(activation_functions: Iterable[str]) -> str:
    """Fixes for a layer whose gradient became exactly zero during training: dead units
    where the model has ReLU-family activations, saturated ones where it has sigmoid or
    tanh (a diverging run pins tanh at exactly +-1), both when it has both."""
    functions = set(activation_functions)
    saturating = bool(functions & SATURATING_FUNCTIONS)
    relu_family = bool(functions - SATURATING_FUNCTIONS - {"hardtanh", "hardsigmoid"})
    if saturating and not relu_family:
        return (
            "Saturated activations: "
            + HINTS[FindingKind.SATURATION][:1].lower()
            + (
                HINTS[FindingKind.SATURATION][1:] + " A learning rate that is too large drives "
                "them there: lower it and clip gradients."
            )
        )
    if relu_family and not saturating:
        return HINTS[FindingKind.DEAD_RELU]
    return (
        "The units feeding this layer stopped passing gradient: dead ReLU-family units or "
        "sigmoid/tanh saturated at their ends. " + HINTS[FindingKind.DEAD_RELU]
    )


def exploding_hint() -> str:
    """Fixes for a backward signal (or a step norm) growing through depth or training."""
    return _as_sentence(
        [
            "the weights are too large for the depth: initialise with Xavier/Glorot or He so "
            "each layer's gain is ~1",
            "add BatchNorm/LayerNorm",
            "clip gradients (torch.nn.utils.clip_grad_norm_) and lower the learning rate",
        ]
    )


def through_time_hint(vanishing: bool, gated: bool) -> str:
    """Fixes for a gradient vanishing (or exploding) through time in a recurrent module.

    Args:
        vanishing: vanishing rather than exploding.
        gated: the module is an LSTM/GRU (its forget gate is the lever), not a plain RNN.
    """
    if vanishing:
        steps = (
            ["initialise the forget-gate bias to 1-2 (LSTM) so the cell state carries gradient"]
            if gated
            else ["use LSTM/GRU instead of a plain RNN (their gated cell state carries gradient)"]
        )
        steps += [
            "initialise the recurrent weights orthogonally (spectral radius ~1)",
            "read out from every step (pooling/attention) rather than only the last",
            "or shorten the sequences / use truncated BPTT",
        ]
    else:
        steps = [
            "clip gradients (torch.nn.utils.clip_grad_norm_)",
            "initialise the recurrent weights orthogonally so their spectral radius is ~1",
            "use LSTM/GRU, and truncated BPTT for long sequences",
        ]
    return _as_sentence(steps)


HINTS: dict[FindingKind, str] = {
    FindingKind.NONFINITE: (
        "Look at the first layer named for log/sqrt/division of values that can reach 0, "
        "overflow in float16 (use bfloat16 or torch.amp.GradScaler), or a too-large learning "
        "rate; clip gradients; torch.autograd.detect_anomaly() names the operation."
    ),
    FindingKind.DEAD_RELU: (
        "Units that are never active (ReLU never positive, ReLU6 stuck at 0 or 6, Hardswish "
        "input <= -3) get zero gradient and cannot recover: use LeakyReLU, ELU or GELU, "
        "initialise with He, put BatchNorm before the ReLU, check for large negative biases, "
        "and lower the learning rate."
    ),
    FindingKind.SATURATION: (
        "Outputs pinned at the ends of sigmoid/tanh pass almost no gradient (sigmoid' <= 1/4), "
        "at the bounds of Hardtanh/Hardsigmoid none at all: "
        "normalise the activation's input (BatchNorm/LayerNorm), initialise with Xavier/Glorot, "
        "scale the inputs, or use ReLU-family activations in hidden layers."
    ),
    FindingKind.MISSING_CLIPPING: (
        "Clip after backward and before the step: torch.nn.utils.clip_grad_norm_("
        "model.parameters(), max_norm) right before optimizer.step() (after the last "
        "micro-batch when accumulating); with AMP call scaler.unscale_(optimizer) first."
    ),
    FindingKind.CLIPPING_BEFORE_UNSCALE: (
        "With torch.amp.GradScaler the gradients are multiplied by the scale until "
        "unscaled: call scaler.unscale_(optimizer), then clip_grad_norm_, then "
        "scaler.step(optimizer) and scaler.update()."
    ),
    FindingKind.NO_GRADIENT: (
        "This trainable parameter got no gradient: it is unused in forward, its output is "
        "detached (.detach(), .item(), numpy) or does not reach the loss. If intended, freeze "
        "it with requires_grad_(False); otherwise reconnect it."
    ),
}


# Hints of findings whose cause is outside the model's layers: the fixed text of their
# kind would point at the wrong place.
ALL_ZERO_HINT = (
    "Exact zeros everywhere come from the loss or the numbers, not from depth: float16 "
    "gradients that underflowed (use torch.amp.GradScaler or bfloat16), a loss multiplied by "
    "0 or a loss scale of 0, a loss that is constant in the outputs or already at its exact "
    "minimum, or outputs detached (.detach(), .data) and re-attached before the loss."
)
NONFINITE_INPUT_HINT = (
    "Clean the data before the model sees it: look for missing values, division by zero in "
    "normalisation or log of 0 in the data pipeline; torch.isfinite(batch).all() per batch "
    "finds the culprit, torch.nan_to_num replaces what cannot be filtered."
)
OUTSIDE_LOSS_HINT = (
    "If this output is trained, pass loss_fn=... that includes it (the default loss uses the "
    "'logits' entry, or the output's own 'loss'); if it is only used elsewhere, this is "
    "expected."
)


def _as_sentence(steps: list[str]) -> str:
    text = "; ".join(steps)
    return text[0].upper() + text[1:] + "."
