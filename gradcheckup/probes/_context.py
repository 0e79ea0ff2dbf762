"""State shared by the probes of one monitor."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from gradcheckup.probes._accumulators import Accumulators
from gradcheckup.probes._hooks import ErrorLog


class SinceLastStep:
    """Per-layer device values since the last optimizer step, keyed by layer index.

    Exists only while optimizer steps are tracked; at every step the step probe takes
    out the layers of the optimizer that stepped.
    """

    def __init__(
        self,
        grad_squared: Accumulators | None = None,
        first_nonfinite_tick: Accumulators | None = None,
    ) -> None:
        self.grad_squared = grad_squared or Accumulators()
        self.first_nonfinite_tick = first_nonfinite_tick or Accumulators()

    def take(self, layers: Collection[int]) -> SinceLastStep:
        """Move the values of ``layers`` out into a new ``SinceLastStep``."""
        return SinceLastStep(
            self.grad_squared.split_off(layers.__contains__),
            self.first_nonfinite_tick.split_off(layers.__contains__),
        )


class ProbeContext:
    """The on/off switch, the error log, and the per-layer facts several probes share.

    A host clock ticked by every gradient hook orders gradient events, so the order in
    which non-finite values appeared in backward is known without reading any device
    value: both the parameter and the layer-signal hooks report there. When optimizer
    steps are tracked, per-layer values also go to ``since_last_step``.
    """

    def __init__(self) -> None:
        self.errors = ErrorLog()
        self.active = True
        self.clock = 0
        # Set by the first parameter gradient: lets the layer probe tell "no gradient yet"
        # from "gradients arrived but no layer module ran its own forward".
        self.parameter_gradient_seen = False
        # Forward passes the module tracker recorded; 0 with gradients seen means the
        # forward ran where no module hook could see it (compiled code).
        self.recorded_passes = 0
        # True from the first module call of a pass to the end of the outermost one.
        self.in_pass = False
        self.since_last_step: SinceLastStep | None = None
        self._first_nonfinite_tick = Accumulators()

    def tick(self) -> int:
        """Advance the gradient-event clock and return the new time."""
        self.clock += 1
        return self.clock

    def note_layer_gradient(self, layer_index: int, squared_norm: torch.Tensor) -> None:
        """Count a layer's squared parameter-gradient norm towards the current step."""
        if self.since_last_step is not None:
            self.since_last_step.grad_squared.add(layer_index, squared_norm)

    def note_nonfinite(self, layer_index: int, squared_norm: torch.Tensor) -> torch.Tensor:
        """Remember the earliest gradient event at which a layer saw NaN/inf.

        Derived from the norm already computed: no extra pass over the gradient.

        Returns:
            The 0-d boolean 'not finite' tensor.
        """
        not_finite = ~torch.isfinite(squared_norm)
        tick = torch.where(not_finite, float(self.tick()), float("inf"))
        self._first_nonfinite_tick.minimum(layer_index, tick)
        if self.since_last_step is not None:
            self.since_last_step.first_nonfinite_tick.minimum(layer_index, tick)
        return not_finite

    @property
    def first_nonfinite_ticks(self) -> Mapping[int, torch.Tensor]:
        """Per layer index: the earliest tick with NaN/inf (inf if none), on device."""
        return self._first_nonfinite_tick.values
