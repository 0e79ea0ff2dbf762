"""State shared by the probes of one monitor."""

from __future__ import annotations

from gradcheckup.probes._hooks import ErrorLog
from gradcheckup.probes._ledger import GradientLedger


class ProbeContext:
    """The on/off switch, the error log, the gradient ledger and the pass schedule.

    The ledger (``_ledger``) takes every gradient norm the hooks see and accumulates
    them per slot once per backward pass; its host clock orders the gradient events, so
    the order in which non-finite values appeared in backward is known without reading
    any device value.
    """

    def __init__(
        self,
        full_passes: int = 0,
        sample_every: int = 1,
        precise: bool = False,
        one_pass: bool = False,
    ) -> None:
        """Create the shared state.

        Args:
            full_passes: ``Config.full_passes``: the first passes are all observed.
            sample_every: ``Config.sample_every``: later, every N-th pass is.
            precise: gradient norms in float64 (``check()``; see ``tensor_norm``).
            one_pass: the monitor observes one pass (``check()``): the ledger measures
                the pass's gradients together when it ends (``GradientLedger``'s
                ``deferred``).
        """
        self.errors = ErrorLog()
        self.ledger = GradientLedger(self.errors, precise, deferred=one_pass)
        self.active = True
        # Set by the first parameter gradient: lets the layer probe tell "no gradient yet"
        # from "gradients arrived but no layer module ran its own forward".
        self.parameter_gradient_seen = False
        # Forward passes the module tracker recorded; 0 with gradients seen means the
        # forward ran where no module hook could see it (compiled code).
        self.recorded_passes = 0
        # Of those, the passes that were measured (see ``observes_pass``).
        self.observed_passes = 0
        # Whether the gradients arriving now belong to a measured pass: set when a
        # recorded pass starts, kept through its backward. True until the first pass,
        # so gradients of passes no hook saw (compiled code) are always measured.
        self.sampled = True
        # Without forward-pass probes no module is hooked: passes are counted at the end
        # of each backward pass instead (``count_backward_passes``).
        self.counts_backward_passes = False
        # True from the first module call of a pass to the end of the outermost one.
        self.in_pass = False
        self._full_passes = full_passes
        self._sample_every = sample_every

    def observes_pass(self, number: int) -> bool:
        """Whether recorded pass ``number`` (from 0) is measured: its forward by the
        forward-pass probes, its parameter gradients, and the optimizer step after it.

        Every pass among the first ``full_passes``, then every ``sample_every``-th: short
        runs (tests, ``check()``) are seen whole, long training runs are sampled.
        """
        return number < self._full_passes or number % self._sample_every == 0

    def count_backward_passes(self) -> None:
        """Count passes by backward pass: the parameter hooks mark each one's end."""
        self.counts_backward_passes = True
        self.ledger.on_backward_end = self._backward_ended

    def _backward_ended(self) -> None:
        """Count the backward pass that ended; the schedule says whether the next one is
        measured."""
        if not self.active:
            return
        if self.sampled:
            self.observed_passes += 1
        self.recorded_passes += 1
        self.sampled = self.observes_pass(self.recorded_passes)

    def start_recorded_pass(self) -> bool:
        """Count a recorded pass; returns whether it is measured."""
        self.sampled = self.observes_pass(self.recorded_passes)
        self.recorded_passes += 1
        if self.sampled:
            self.observed_passes += 1
        return self.sampled
