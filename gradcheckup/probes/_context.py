"""State shared by the probes of one monitor."""

from __future__ import annotations

import torch

from gradcheckup.probes._accumulators import Accumulators
from gradcheckup.probes._hooks import ErrorLog


class ProbeContext:
    """Device sums, the error log, an on/off switch and a clock ordering gradient events.

    The clock is a host counter ticked by every gradient hook, so the order in which
    non-finite values appeared in backward is known without reading any device value.
    When optimizer steps are tracked, per-layer sums also go to ``window``, which the
    step probe takes and replaces at every step.
    """

    def __init__(self) -> None:
        self.sums = Accumulators()
        self.window: Accumulators | None = None
        self.errors = ErrorLog()
        self.active = True
        self.clock = 0

    def add_per_layer(self, key: tuple, value: torch.Tensor) -> None:
        self.sums.add(key, value)
        if self.window is not None:
            self.window.add(key, value)

    def take_window(self) -> dict:
        """The per-layer sums since the last step; a fresh window starts."""
        taken = self.window.values if self.window is not None else {}
        self.window = Accumulators()
        return taken

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def note_nonfinite(self, layer_index: int, squared_norm: torch.Tensor) -> torch.Tensor:
        """Remember the earliest gradient event at which a layer saw NaN/inf.

        Derived from the norm already computed: no extra pass over the gradient.
        Returns the 0-d boolean 'not finite' tensor.
        """
        not_finite = ~torch.isfinite(squared_norm)
        moment = torch.where(not_finite, float(self.tick()), float("inf"))
        self.sums.minimum(("first_nonfinite", layer_index), moment)
        if self.window is not None:
            self.window.minimum(("first_nonfinite", layer_index), moment)
        return not_finite
