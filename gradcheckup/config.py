"""Thresholds and switches for gradcheckup, each with its default and the reason for it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Config"]


class Config(BaseModel):
    """Every threshold gradcheckup judges by.

    All fields are keyword arguments: ``gcu.Config(dead_relu_fraction=0.3)``.
    Unknown names are rejected, so a typo never silently falls back to a default.
    A ``*_warn_*`` threshold milder than its error threshold adds a warning band; where
    the error threshold is the milder one, the error wins and no warning is given.

    Example:
        >>> import gradcheckup as gcu
        >>> gcu.Config(vanishing_ratio=1e-4).vanishing_ratio
        0.0001
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # --- Gradient flow through depth -------------------------------------------------
    # The backward signal of each layer, in forward order, is dL/d(output) summed over
    # positions (spatial, time) per sample and unit (channel, feature): average pooling
    # over P positions divides each position's gradient by P, so a total norm shrinks by
    # sqrt(P) and a per-element RMS by P before any pooling, while this sum does not
    # change; neither do resolution and sequence length. The ratio compares the largest
    # signal among the first layers with the logits layer (the last layer that is not a
    # normalisation layer). Raw parameter gradients are not used: they also scale with
    # the size of the activations (in a sigmoid chain with skips the head's gradient is
    # ~1000x the first layer's while gradient flow is healthy).
    # Calibrated on the real-architecture zoo (benchmarks/README.md, 2026-11-23; torch
    # 2.14.1, torchvision 0.29.1, timm 1.0.31, transformers 5.23; 45 healthy models at two
    # input sizes and two seeds, at initialisation): healthy ratios lie in 10^-1.4
    # (Wav2Vec2) .. 10^3.6 (torchvision resnet152).
    vanishing_ratio: float = Field(
        3e-3,
        gt=0,
        lt=1,
        description=(
            "Error when the backward signal per unit at the first layers is below this "
            "fraction of the logits layer's. Zoo at init (2026-11-23): the lowest healthy "
            "models are Wav2Vec2 (0.04) and Whisper (0.06); sick ones lie below: VGG11 with "
            "weights N(0, 0.01) ~1.4e-3, VGG16 with sigmoids ~1e-7, a 20-layer sigmoid MLP "
            "~1e-14."
        ),
    )
    vanishing_warn_ratio: float = Field(
        1e-2,
        gt=0,
        lt=1,
        description=(
            "Warning below this fraction: no healthy zoo model is below 0.04; a plain ReLU "
            "MLP at PyTorch's default init (~0.4x per layer) reaches it at about six layers "
            "(torchvision MLP with 6 ReLU layers: ~5e-3)."
        ),
    )
    exploding_ratio: float = Field(
        3e4,
        gt=1,
        description=(
            "Error when the backward signal per unit at the first layers exceeds the logits "
            "layer's by this factor. Zoo at init (2026-11-23): post-activation BatchNorm "
            "ResNets grow with depth and are healthy by consensus (resnet50 ~200, resnet101 "
            "~1.3e3, resnet152 ~4e3); VGG16 with weights x3 reaches ~3e6."
        ),
    )
    exploding_warn_ratio: float = Field(
        1e4,
        gt=1,
        description=(
            "Warning above this growth factor: 2.5x the largest healthy zoo model (resnet152, "
            "~4e3), so a stock ResNet stays clean while a deeper BatchNorm ResNet may reach it."
        ),
    )
    depth_window: float = Field(
        0.25,
        gt=0,
        le=0.5,
        description=(
            "Fraction of the layers (in forward order) among which the first end of the depth "
            "comparison is the largest signal, so a few layers that legitimately get tiny "
            "gradients (attention query/key projections at init, about 1e-6 of the rest) do "
            "not make a model look vanishing."
        ),
    )
    min_depth: int = Field(
        3,
        ge=2,
        description="Fewer layers with a measured backward signal than this: no depth judgement.",
    )

    # --- Dead ReLU --------------------------------------------------------------------
    dead_relu_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description=(
            "Error when at least this fraction of a ReLU-family site's units (ReLU, ReLU6, "
            "Hardswish) were never active over all observed samples: such units get zero "
            "gradient on every sample and cannot recover (Lu et al. 2019, 'Dying ReLU and "
            "Initialization'). Zoo (2026-11-23, torchvision 0.29.1 / timm 1.0.31 / "
            "transformers 5.23, random init): healthy sites reach 0.62 (squeeze-excitation "
            "ReLUs, 2-4 samples per unit) and 0.50-0.52 (squeezenet1_1 "
            "features.9.squeeze_activation, half dead in the stock model at 36-338 samples "
            "per unit); units killed by a BatchNorm bias of -5/-10 give 0.95-1.00. 0.8 "
            "separates the two with room on both sides."
        ),
    )
    dead_relu_warn_fraction: float = Field(
        0.6,
        gt=0,
        le=1,
        description=(
            "Warning from this fraction on. Above the 0.50-0.52 of squeezenet1_1's stock "
            "squeeze ReLU (zoo, 2026-11-23), which is healthy by consensus; the 0.56-0.62 of "
            "squeeze-excitation ReLUs comes with 2-4 samples per unit and stays info through "
            "min_samples_per_unit. Dying during training commonly reaches 20-40%: lower it "
            "(e.g. 0.2) to hear about that."
        ),
    )
    min_samples_per_unit: int = Field(
        8,
        ge=1,
        description=(
            "Observations needed for a certain dead-unit or saturation judgement; an "
            "uncertain finding is only info. Partly dead units need this many observations "
            "per unit: a healthy unit active half the time looks dead with probability 2^-n "
            "(squeeze-excitation ReLUs reach 0.62 dead at 2-4 samples per unit, zoo "
            "2026-11-23). A site with every unit dead on every sample, and saturation (a "
            "fraction of all outputs), need this many outputs in all (units x samples): all "
            "of them flat by chance is then at most 2^-8 likely under the same null, so "
            "squeeze-excitation sigmoids stuck at exactly 1.0 at batch 4 (efficientnet_b0, "
            "16 sites) and a BERT pooler tanh 97% saturated at batch 4 keep full severity."
        ),
    )

    # --- Saturation (sigmoid, tanh, Hardtanh, Hardsigmoid) ------------------------------
    saturation_margin: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description=(
            "A sigmoid/tanh output counts as saturated within this fraction of the output "
            "range from either end (sigmoid: y < 0.01 or y > 0.99; tanh: |y| > 0.98). There "
            "the local derivative is below 4% of its peak (seed 001: sigmoid' <= 1/4, "
            "tanh' <= 1), so almost no gradient passes (Glorot & Bengio 2010 saw top sigmoid "
            "layers stuck at 0). Hardtanh and Hardsigmoid count only outputs exactly at "
            "their bounds, where the derivative is exactly 0."
        ),
    )
    saturation_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description=(
            "Error when at least this fraction of a site's outputs are saturated. Zoo "
            "(2026-11-23, torchvision 0.29.1 / timm 1.0.31 / transformers 5.23): every "
            "healthy sigmoid, tanh, Hardsigmoid and Hardtanh site is at 0.00; saturated "
            "variants are at 0.97-0.98 (BERT pooler tanh with weights N(0, 10), batch 4; "
            "0.89-0.94 of its units are saturated on every sample) and 1.00 (squeeze-"
            "excitation sigmoid/Hardsigmoid gates with bias +20). 0.8 leaves room on both "
            "sides, also for a gate that is saturated on most but not all samples."
        ),
    )
    saturation_warn_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Warning when at least this fraction of a site's outputs are saturated: half "
            "the outputs passing (almost) no gradient is far from the 0.00 of every healthy "
            "site in the zoo (2026-11-23)."
        ),
    )

    # --- Through time (recurrent layers) ----------------------------------------------
    # Backpropagation through time multiplies by the recurrent Jacobian at every step,
    # so the gradient reaching step 0 scales like rho(W_hh)^T for a near-linear RNN
    # (Pascanu, Mikolov & Bengio 2013).
    temporal_vanishing_ratio: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description=(
            "Finding when the gradient w.r.t. the first step's input is below this fraction of "
            "the last step's (three orders of magnitude, as for depth). An error for plain RNNs, "
            "which cannot escape it (tanh' <= 1, rho(W_hh) < 1); a warning for LSTM/GRU, whose "
            "gates can learn to carry the gradient (at PyTorch's default init their forget gate "
            "sits near 0.5, so a last-step readout over 20 steps measures ~1e-4)."
        ),
    )
    temporal_exploding_ratio: float = Field(
        1e3,
        gt=1,
        description=(
            "Error when the first step's input gradient exceeds the last step's by this factor: "
            "rho(W_hh) > 1 compounding over time (1.5^18 = 1.5e3)."
        ),
    )
    memory_horizon_fraction: float = Field(
        0.01,
        gt=0,
        lt=1,
        description=(
            "The memory horizon counts how many steps back from the last one the input gradient "
            "stays at or above this fraction of the last step's (1% = two orders of magnitude)."
        ),
    )
    recurrent_modules: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "Further modules to profile through time, by name (as in named_modules()), with the "
            "time dimension of their first input: e.g. {'encoder.cell_loop': 1}. nn.RNN, nn.LSTM "
            "and nn.GRU are profiled without being named."
        ),
    )

    # --- Training steps (watch with optimizer=...) ------------------------------------
    max_grad_norm: float | None = Field(
        None,
        gt=0,
        description=(
            "The clipping bound a training step must respect: an error for every step that "
            "reached the optimizer with a larger global gradient norm (unscaled under AMP, "
            "after accumulation, as optimizer.step() sees it). None: no bound is required, but "
            "a diverging step norm without any clipping is an error (divergence_factor; "
            "Pascanu et al. 2013 introduced norm clipping against exactly these spikes)."
        ),
    )
    clip_tolerance: float = Field(
        1e-3,
        ge=0,
        description=(
            "Relative slack over max_grad_norm: clip_grad_norm_ scales by max_norm / (norm + "
            "1e-6) and float32 rounding lands within ~1e-6 of the bound."
        ),
    )
    divergence_factor: float = Field(
        3.0,
        gt=1,
        description=(
            "Without max_grad_norm and without observed clipping: error when a step's global "
            "norm exceeds this multiple of the largest norm of all earlier steps of the same "
            "optimizer. Ordinary training starts with its largest norms and falls (zoo, "
            "2026-11-23: resnet18 SGD 58, 45, 17, 1.8 ... 0.04) or rises slowly (BERT AdamW "
            "0.68 -> 1.41 over 10 steps, <= 1.1x per step); SGD at lr 5.0 jumped 4.6x and 9.8x."
        ),
    )
    step_growth_ratio: float = Field(
        1e3,
        gt=1,
        description=(
            "Error when the median step norm of the last quarter of the watched steps exceeds "
            "that of the first quarter by this factor: gradients exploding during training."
        ),
    )
    step_history: int = Field(
        1000,
        ge=1,
        description=(
            "Optimizer steps kept in full in report.steps (the newest); older ones are folded "
            "into report.step_summary, so memory does not grow with training length."
        ),
    )

    # --- How passes are run and observed -----------------------------------------------
    train_mode: bool = Field(
        True,
        description=(
            "check() runs the model in training mode (dropout, batch statistics), because "
            "training gradients are what is diagnosed; every module's own flag is restored."
        ),
    )
    include_no_grad_passes: bool = Field(
        False,
        description=(
            "Record forward statistics of passes run without autograd (torch.no_grad, "
            "inference_mode), e.g. validation loops inside watch(). Off: evaluation does not "
            "pollute training statistics."
        ),
    )
    # --- What is measured, and how often (the cost of a watch; README "Overhead") ------
    # A long watch samples passes, as wandb.watch (log_freq) and Cockpit (per-quantity
    # schedules) do: on a measured pass the parameter gradient norms, the step norm and
    # the forward-pass probes are taken; optimizer step events (clip calls, AMP skips)
    # are seen on every step. On 2 CPU cores the defaults cost 1.02-1.06x a plain step on
    # the reference models (benchmarks/overhead.py), every pass measured 1.2-1.9x.
    forward_probes: tuple[Literal["signal", "activations", "time"], ...] = Field(
        ("signal", "activations", "time"),
        description=(
            "Forward-pass probes to run: 'signal' (dL/d output and input per layer: depth "
            "profile, gains), 'activations' (dead and saturated units), 'time' (gradient per "
            "time step of recurrent layers). () measures parameter gradients (and steps) only."
        ),
    )
    full_passes: int = Field(
        10,
        ge=0,
        description=(
            "The first recorded passes of a watch are all measured (check() and short test "
            "runs are seen whole)."
        ),
    )
    sample_every: int = Field(
        10,
        ge=1,
        description=(
            "After full_passes, every N-th recorded pass is measured: parameter and step "
            "norms and the forward-pass probes (1: every pass). Statistics are averages "
            "over the measured passes; optimizer step events are seen on every step."
        ),
    )
    loss_seed: int = Field(
        0,
        description=(
            "Seed of the fixed random direction used by check()'s default loss (see "
            "gcu.check); it has its own generator and never touches the global RNG."
        ),
    )

    @property
    def clip_limit(self) -> float | None:
        """The largest step norm that still respects ``max_grad_norm`` (with
        ``clip_tolerance``); None when no bound is required. The one place it is computed."""
        if self.max_grad_norm is None:
            return None
        return self.max_grad_norm * (1 + self.clip_tolerance)

    def merged(self, **overrides: Any) -> Config:
        """Return a copy with ``overrides`` applied and validated.

        Args:
            **overrides: field names and new values.

        Returns:
            A new, validated ``Config``.

        Raises:
            ValueError: an unknown field name or an invalid value.
        """
        return layered_config([("Config.merged", overrides)], base=self)


def layered_config(
    layers: Iterable[tuple[str, Mapping[str, Any]]], base: Config | None = None
) -> Config:
    """Apply settings layers, later ones winning, over ``base`` (``Config()`` by default).

    The one implementation of "a Config plus overrides" (``Config.merged`` and
    ``settings.build_config`` call it). Errors name the layer's source and the key.

    Raises:
        ValueError: an unknown key or an invalid value.
    """
    valid = sorted(Config.model_fields)
    merged: dict[str, Any] = {}
    for source, settings in layers:
        for key, value in settings.items():
            if key not in Config.model_fields:
                raise ValueError(
                    f"{source}: unknown setting {key!r}; valid settings: {', '.join(valid)}"
                )
            try:
                Config(**{key: value})
            except ValidationError as error:
                detail = "; ".join(problem["msg"] for problem in error.errors())
                raise ValueError(f"{source}: {key}={value!r} is invalid: {detail}") from None
            merged[key] = value
    if base is None:
        return Config(**merged)
    if not merged:
        return base
    return Config(**{**base.model_dump(), **merged})
