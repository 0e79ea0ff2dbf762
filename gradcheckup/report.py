"""The results of a gradient check: immutable pydantic models, built once per report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, computed_field

from gradcheckup.config import Config

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "SCHEMA_VERSION",
    "ActivationStats",
    "ClipCall",
    "Finding",
    "FindingKind",
    "LayerStats",
    "Report",
    "Severity",
    "StepStats",
    "StepSummary",
    "TemporalStats",
]

# Non-finite numbers are the very thing this tool reports, so they must survive JSON:
# pydantic's default writes them as null. "strings" writes "Infinity"/"NaN", which is
# valid JSON and which pydantic parses back to the same floats.
_RESULT_MODEL = ConfigDict(frozen=True, ser_json_inf_nan="strings")

SCHEMA_VERSION = 1
"""The layout of a report's JSON (``Report.schema_version``); raised when a field changes
meaning or goes away, not when one is added with a default. Files written before the
field existed have the layout of version 1 and load as such."""


class FindingKind(str, Enum):
    """What kind of gradient problem a finding describes."""

    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"
    DEAD_RELU = "dead_relu"
    SATURATION = "saturation"
    NO_GRADIENT = "no_gradient"
    MISSING_CLIPPING = "missing_clipping"
    CLIPPING_BEFORE_UNSCALE = "clipping_before_unscale"
    VANISHING_THROUGH_TIME = "vanishing_through_time"
    EXPLODING_THROUGH_TIME = "exploding_through_time"
    NOT_MEASURED = "not_measured"


class Severity(str, Enum):
    """How bad a finding is; only ``error`` makes ``Report.ok`` false.

    The one place that orders severities: compare with ``rank`` or ``at_least``, never
    as strings.
    """

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for error: higher is worse."""
        return _SEVERITY_RANK[self]

    def at_least(self, threshold: Severity | str) -> bool:
        """True if this severity is ``threshold`` or worse (``threshold`` may be its name).

        Raises:
            ValueError: ``threshold`` names no severity.
        """
        return self.rank >= Severity(threshold).rank


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class Finding(BaseModel):
    """One diagnosed problem, with the number behind it and a hint for the fix."""

    model_config = _RESULT_MODEL

    kind: FindingKind
    severity: Severity
    where: str = Field(description="Layer, activation site or 'loss' the finding is about.")
    value: float | None = Field(description="The measured number that was judged.")
    threshold: float | None = Field(description="The Config threshold it was judged against.")
    message: str = Field(description="What was measured, in one sentence.")
    hint: str = Field(description="What usually fixes it.")

    def describe(self) -> str:
        """One line: severity, kind, where, message and hint."""
        return (
            f"[{self.severity.value}] {self.kind.value} at {self.where}: {self.message} "
            f"Hint: {self.hint}"
        )


class LayerStats(BaseModel):
    """Gradient statistics of one layer: a module that owns trainable parameters directly.

    Over several passes (``watch``), norms are root-mean-square over the passes in
    which the layer received a gradient.
    """

    model_config = _RESULT_MODEL

    name: str = Field(description="Name as in model.named_modules() ('' is the model itself).")
    module_type: str
    depth_index: int | None = Field(
        description="Position in forward execution order among layers; None if it never ran."
    )
    param_count: int = Field(
        description="Trainable parameters it owns (tied weights counted once)."
    )
    grad_norm: float | None = Field(
        description="L2 norm of the gradient of its own parameters; None if none arrived."
    )
    weight_norm: float = Field(description="L2 norm of its own trainable parameters.")
    grad_to_weight: float | None = Field(
        description="grad_norm / weight_norm; None when the weights are all zero."
    )
    relative_grad: float | None = Field(
        description=(
            "Gradient per parameter (grad_norm / sqrt(param_count)) relative to the largest "
            "such value in the model: 1.0 for the layer with the strongest gradients."
        )
    )
    output_grad_norm: float | None = Field(
        description="Norm of dL/d(output): the backward signal arriving at the layer."
    )
    unit_signal: float | None = Field(
        None,
        description=(
            "The backward signal per unit: the norm of dL/d(output) summed over positions "
            "(spatial or time) for each sample and unit (channel or feature); equal to "
            "output_grad_norm for (batch, features) outputs. Unlike the total norm it does "
            "not change with resolution, pooling or sequence length. The depth judgement "
            "compares it between the first layers and the logits layer."
        ),
    )
    bias_grad_norm: float | None = Field(
        None,
        description=(
            "Norm of dL/d(bias): the backward signal summed over the batch. Independent of the "
            "size of the layer's input, it stands in for the backward signal where that cannot "
            "be hooked (TorchScript, torch.export)."
        ),
    )
    input_grad_norm: float | None = Field(
        description="Norm of dL/d(input) through this layer alone (skip paths excluded)."
    )
    backward_gain: float | None = Field(
        description="input_grad_norm / output_grad_norm; None where not measurable."
    )
    nonfinite_passes: int = Field(
        description="Backward passes in which a gradient of its parameters had NaN or inf."
    )
    nonfinite_count: int | None = Field(
        description=(
            "Number of NaN/inf gradient entries (check() only: counted once, for the single "
            "pass, only where the norm was not finite); None under watch()."
        )
    )
    nonfinite_rank: int | None = Field(
        None,
        description=(
            "Order in which NaN/inf gradients reached this layer during backward: 1 for the "
            "layer where they first appeared; None if its gradients stayed finite."
        ),
    )
    passes: int = Field(description="Backward passes in which its parameters got a gradient.")
    params_without_grad: list[str] = Field(
        default_factory=list,
        description="Its trainable parameters that never received a gradient.",
    )
    zero_since_step: int | None = Field(
        None,
        description=(
            "With optimizer steps watched: the step from which its gradient was exactly zero "
            "on every step to the end (at least two steps), after being non-zero before."
        ),
    )


class ActivationStats(BaseModel):
    """Statistics of one activation site: a module or a functional call such as F.relu."""

    model_config = _RESULT_MODEL

    name: str = Field(
        description=(
            "'<layer>/<function>', after the layer (a module owning parameters) whose forward "
            "began last before the call: 'features.0/relu'. Before any layer: the activation "
            "module's name, or '<enclosing module>:<function>' for a functional call. '#2', "
            "'#3' for later calls under the same name in one pass."
        )
    )
    owner: str = Field(description="The enclosing module's name ('' is the model itself).")
    function: str = Field(
        description=(
            "relu, relu6, hardswish (judged per unit: dead_fraction); sigmoid, tanh, hardtanh, "
            "hardsigmoid (judged per output: saturated_fraction). A Hardtanh clamped to "
            "[0, 6] (nn.ReLU6 calls one) is relu6."
        )
    )
    calls: int = Field(description="Calls observed over all recorded passes.")
    unit_axis: str | None = Field(
        description="What a unit is: 'features (last dim)', 'channels (dim 1)' or 'scalar'."
    )
    units: int | None = Field(description="Units per call.")
    samples_per_unit: int = Field(description="Observations of each unit over all calls.")
    dead_fraction: float | None = Field(
        description=(
            "relu, relu6, hardswish: fraction of units never in their active region over "
            "every observation (relu: y > 0; relu6: 0 < y < 6; hardswish: y != 0, i.e. x > -3)."
        )
    )
    saturated_fraction: float | None = Field(
        description=(
            "sigmoid, tanh: fraction of outputs within saturation_margin of the range ends; "
            "hardtanh, hardsigmoid: fraction of outputs exactly at their bounds."
        )
    )
    nonfinite: bool = Field(
        False,
        description=(
            "Some output was NaN or inf: the fractions then trace the non-finite values, "
            "not the units, and are not judged."
        ),
    )


class TemporalStats(BaseModel):
    """Gradient through time of one recurrent module: ||dL/d(input at step t)|| per step.

    Over several passes each step's norm is the root-mean-square over the passes that
    had that step (sequence lengths may vary).
    """

    model_config = _RESULT_MODEL

    name: str
    module_type: str
    gated: bool = Field(description="LSTM/GRU: gates can learn to carry gradient through time.")
    time_axis: str = Field(description="'dim 0', 'dim 1' or 'packed' (PackedSequence).")
    step_grad_norms: list[float] = Field(description="One per step, in input order.")
    first_to_last: float | None = Field(
        description="Norm at step 0 / norm at the last step; None if the last step got none."
    )
    memory_horizon: int | None = Field(
        description=(
            "Steps back from the last one over which the gradient stays at or above "
            "Config.memory_horizon_fraction of the last step's; None if the last step got none."
        )
    )
    passes: int = Field(description="Backward passes that reached the module's input.")


class ClipCall(BaseModel):
    """One observed call of clip_grad_norm_ / clip_grad_value_ before a step."""

    model_config = _RESULT_MODEL

    kind: str = Field(description="'norm' (clip_grad_norm_) or 'value' (clip_grad_value_).")
    bound: float = Field(description="max_norm or clip_value it was called with.")
    returned_norm: float | None = Field(
        description="The total norm clip_grad_norm_ computed (before clipping), as it returned it."
    )
    before_unscale: bool = Field(
        description="It ran on AMP-scaled gradients, before scaler.unscale_(optimizer)."
    )


class StepStats(BaseModel):
    """One optimizer step."""

    model_config = _RESULT_MODEL

    optimizer: int = Field(description="Position of the optimizer in watch(optimizer=...).")
    step: int = Field(description="The optimizer's own step count, from 0.")
    grad_norm: float | None = Field(
        description=(
            "Global norm of the optimizer's gradients after the step's last backward, before "
            "any clipping, unscaled (the first clip call's norm, or the step-time norm if none)."
        )
    )
    grad_norm_at_step: float | None = Field(
        description="Global norm the optimizer actually saw at step() (unscaled, after clipping)."
    )
    clip_calls: list[ClipCall] = Field(default_factory=list)
    skipped: bool = Field(description="The AMP GradScaler skipped the step (inf/NaN gradients).")
    amp_scale: float | None = Field(description="The GradScaler's scale at the step, under AMP.")
    nonfinite: bool = Field(description="NaN/inf reached a gradient during the step.")
    first_nonfinite_layer: str | None = Field(
        description="Where NaN/inf first appeared in backward order during the step."
    )
    closure: bool = Field(False, description="step(closure) (LBFGS): measured after the step.")


class StepSummary(BaseModel):
    """Counts over all observed steps; details of the oldest ones beyond the history window."""

    model_config = _RESULT_MODEL

    total_steps: int
    earlier_steps: int = Field(
        description="Steps older than the history window (not in report.steps)."
    )
    earlier_clipped_steps: int
    earlier_skipped_steps: int
    earlier_max_grad_norm_at_step: float | None


class Report(BaseModel):
    """Everything one check or watch measured, and what it concluded.

    Example:
        >>> report = gcu.check(model, x)            # doctest: +SKIP
        >>> report.ok, [f.kind for f in report.findings]   # doctest: +SKIP
        (False, [<FindingKind.VANISHING: 'vanishing'>])
    """

    model_config = _RESULT_MODEL

    schema_version: int = Field(
        SCHEMA_VERSION,
        ge=1,
        description=(
            "Layout of this JSON (gradcheckup.report.SCHEMA_VERSION when written); files "
            "without it predate the field and have the layout of version 1."
        ),
    )
    layers: list[LayerStats]
    activations: list[ActivationStats]
    temporal: list[TemporalStats] = Field(default_factory=list)
    steps: list[StepStats] = Field(
        default_factory=list, description="Optimizer steps (watch with optimizer=...), newest last."
    )
    step_summary: StepSummary | None = None
    findings: list[Finding]
    passes: int = Field(description="Recorded forward passes (with autograd on).")
    ranks: int = Field(
        1,
        ge=1,
        description=(
            "Processes of a torch.distributed job whose measurements the report combines "
            "(1 outside one, and for report(local=True))."
        ),
    )
    loss: float | None = Field(
        None, description="The loss check() differentiated; None for watch()."
    )
    probe_errors: list[str] = Field(
        default_factory=list,
        description="Failures inside gradcheckup's own hooks; the user's passes were not affected.",
    )
    unavailable: list[str] = Field(
        default_factory=list,
        description="Statistics that could not be measured, and why (e.g. TorchScript submodules).",
    )
    config: Config
    torch_version: str
    gradcheckup_version: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """False iff any finding has severity ``error``."""
        return not any(finding.severity is Severity.ERROR for finding in self.findings)

    def findings_of(self, kind: FindingKind | str) -> list[Finding]:
        """The findings of one kind, e.g. ``report.findings_of("vanishing")``."""
        wanted = FindingKind(kind)
        return [finding for finding in self.findings if finding.kind is wanted]

    def layer(self, name: str) -> LayerStats:
        """The stats of the layer called ``name``.

        Raises:
            KeyError: no layer of that name, with the names that exist.
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[layer.name for layer in self.layers]}")

    def activation(self, name: str) -> ActivationStats:
        """The stats of the activation site called ``name``.

        Raises:
            KeyError: no site of that name, with the names that exist.
        """
        for site in self.activations:
            if site.name == name:
                return site
        raise KeyError(
            f"no activation site named {name!r}; sites: {[site.name for site in self.activations]}"
        )

    def print(self, console: Console | None = None) -> None:
        """Render the report with rich (to stdout, or to ``console``).

        The only upward import of this module, and a lazy one: results do not depend on
        their renderer (``tests/test_architecture.py`` allows exactly this edge).
        """
        from gradcheckup.rendering import render

        render(self, console=console)


def display_name(name: str) -> str:
    """A module name as people read it: the model itself ('') is '(model)'."""
    return name or "(model)"


def format_number(value: float | None) -> str:
    """A measured number as every output shows it: 3 significant digits, scientific
    notation outside [1e-3, 1e4), '-' when not measured, 'nan'/'inf' as they are."""
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"


# --- Data selections shared by the rules and the outputs ------------------------------
# They pick and order measured numbers and judge nothing, so the rules, the renderer and
# the plot can all use them without the outputs depending on the rules.


def backward_signal(layer: LayerStats) -> float:
    """The backward signal reaching ``layer``: ``unit_signal``, dL/d(output) summed over
    positions per sample and unit, which does not change with resolution or pooling.

    Falls back to the bias gradient where the output gradient could not be hooked
    (TorchScript, torch.export), and to 0.0 where neither was measured.
    """
    if layer.unit_signal is not None:
        return layer.unit_signal
    return layer.bias_grad_norm or 0.0


def depth_profile(layers: Sequence[LayerStats]) -> list[LayerStats]:
    """Layers with a measured, finite, non-zero backward signal, in forward order.

    Exact zeros are left out: a zero-initialised head or residual branch blocks the
    gradient by design at initialisation, which is not a trend through depth.
    """
    ordered = sorted(
        (layer for layer in layers if layer.depth_index is not None),
        key=lambda layer: layer.depth_index or 0,
    )
    return [
        layer
        for layer in ordered
        if layer.unit_signal is not None
        and math.isfinite(layer.unit_signal)
        and layer.unit_signal > 0
    ]


def bias_profile(layers: Sequence[LayerStats]) -> list[LayerStats]:
    """Where no backward signal could be hooked: layers with a bias gradient, in
    definition order (their dL/d bias is the batch-summed backward signal)."""
    if any(layer.unit_signal is not None for layer in layers):
        return []
    return [
        layer
        for layer in sorted(
            layers, key=lambda layer: (layer.depth_index is None, layer.depth_index or 0)
        )
        if layer.bias_grad_norm is not None
        and math.isfinite(layer.bias_grad_norm)
        and layer.bias_grad_norm > 0
    ]


def is_normalisation(layer: LayerStats) -> bool:
    """A normalisation layer by its type name: BatchNorm*, LayerNorm, GroupNorm, RMSNorm,
    and the libraries' own (LlamaRMSNorm, T5LayerNorm, FrozenBatchNorm2d...)."""
    return "Norm" in layer.module_type


def depth_ends(profile: Sequence[LayerStats], window: float) -> tuple[LayerStats, LayerStats]:
    """The layers that stand for the first and the last end of a non-empty depth profile.

    The first end is the layer with the largest ``backward_signal`` among the first
    ``window`` fraction of the profile (at least one layer), so layers that legitimately
    get tiny gradients (attention query/key projections at init) do not stand for it.
    The last end is the logits side: the last layer in forward order that is not a
    normalisation layer (a final LayerNorm/RMSNorm sits before the head and would hide
    it; a pooler runs before the classifier, so it is never last), or the last layer
    when all are normalisation layers.
    """
    heads = [layer for layer in profile if not is_normalisation(layer)] or list(profile)
    return max(profile[: first_end_window(len(profile), window)], key=backward_signal), heads[-1]


def first_end_window(layer_count: int, window: float) -> int:
    """How many of the first layers of a profile of ``layer_count`` the first end is chosen
    from: the ``window`` fraction (``Config.depth_window``), at least one."""
    return max(1, int(layer_count * window))


def exceeds_clip_limit(step: StepStats, config: Config) -> bool:
    """True if a step the optimizer ran saw a larger global norm than ``config.clip_limit``
    (never when no ``max_grad_norm`` is set, or the AMP scaler skipped the step)."""
    limit = config.clip_limit
    if limit is None or step.skipped or step.grad_norm_at_step is None:
        return False
    return step.grad_norm_at_step > limit


def step_label(step: StepStats) -> str:
    """How findings and outputs name one optimizer step: ``'optimizer 0, step 3'``."""
    return f"optimizer {step.optimizer}, step {step.step}"


def depth_finding_severities(report: Report, profile: Sequence[LayerStats]) -> dict[str, Severity]:
    """The worst severity per layer (by display name) among the vanishing/exploding findings
    about the layers of ``profile``: what the outputs colour, so they never judge themselves.

    A finding counts for the layer it names and, when it judged the signal through depth
    (it carries a threshold; a collapse finding does not), for the two layers that stood
    for the ends it compared (``depth_ends``). Findings about other places (step growth
    names a step) are left out.
    """
    worst: dict[str, Severity] = {}
    shown = {display_name(layer.name) for layer in profile}
    for finding in report.findings:
        if finding.kind not in (FindingKind.VANISHING, FindingKind.EXPLODING):
            continue
        if finding.where not in shown:
            continue
        named = [finding.where]
        if finding.threshold is not None:
            named += [
                display_name(end.name) for end in depth_ends(profile, report.config.depth_window)
            ]
        for name in named:
            if name not in worst or finding.severity.rank > worst[name].rank:
                worst[name] = finding.severity
    return worst


def sites_worth_showing(report: Report, limit: int = 10) -> list[ActivationStats]:
    """All activation sites if there are few (up to ``limit`` + 2); else the ``limit`` sites
    with findings first, then with the highest dead/saturated fractions, in model order."""
    sites = report.activations
    if len(sites) <= limit + 2:
        return list(sites)
    flagged = {finding.where for finding in report.findings}

    def badness(site: ActivationStats) -> tuple[bool, float]:
        return site.name in flagged, max(site.dead_fraction or 0.0, site.saturated_fraction or 0.0)

    keep = {id(site) for site in sorted(sites, key=badness, reverse=True)[:limit]}
    return [site for site in sites if id(site) in keep]


def layers_worth_showing(
    report: Report, layers: Sequence[LayerStats] | None = None, limit: int = 40
) -> list[LayerStats]:
    """All of ``layers`` (the report's by default) if there are few (up to ``limit`` + 2);
    else, in model order, at most ``limit``: the layers a finding is about or whose
    gradients were non-finite, the first and last three, and the ones with the
    smallest and largest backward signal and gradient norm, then evenly spaced others.
    Terminal reports of 10,000 layers stay readable; the JSON keeps every layer."""
    rows = list(report.layers if layers is None else layers)
    if len(rows) <= limit + 2:
        return rows
    flagged = {finding.where for finding in report.findings}
    chosen: dict[int, None] = {}

    def keep(positions: Iterable[int]) -> None:
        for position in positions:
            if len(chosen) < limit:
                chosen.setdefault(position, None)

    keep(p for p, row in enumerate(rows) if display_name(row.name) in flagged)
    keep(p for p, row in enumerate(rows) if row.nonfinite_passes)
    keep([*range(3), *range(len(rows) - 3, len(rows))])
    for measure in (backward_signal, lambda row: row.grad_norm):
        measured = [(value, p) for p, row in enumerate(rows) if (value := measure(row))]
        if measured:
            keep([min(measured)[1], max(measured)[1]])
    spacing = max(1, len(rows) // max(1, limit - len(chosen)))
    keep(range(0, len(rows), spacing))
    return [rows[position] for position in sorted(chosen)]


def layer_flags(report: Report) -> dict[str, str]:
    """Per layer name: the kinds of the findings about it and ``non-finite`` if its
    gradients had NaN/inf, each once, comma-separated ('' for none)."""
    kinds: dict[str, list[str]] = {}
    for finding in report.findings:
        kinds.setdefault(finding.where, []).append(finding.kind.value)
    flags = {}
    for layer in report.layers:
        named = kinds.get(display_name(layer.name), [])
        nonfinite = ["non-finite"] if layer.nonfinite_passes else []
        flags[layer.name] = ", ".join(dict.fromkeys([*named, *nonfinite]))
    return flags
