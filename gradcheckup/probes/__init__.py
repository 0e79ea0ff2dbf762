"""What attaches to the model: each probe registers hooks, accumulates on device, detaches.

Probes never synchronise with the host while the model runs. Every probe has the same
shape (``Probe``): it owns its device keys, hands its device values over for the one
fetch per report, and decodes its own share of the fetched numbers into frozen totals.
Nothing outside a probe reads its keys.

Modules outside ``probes/`` import the shared runtime from here, never from the
private modules.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import torch

from gradcheckup.probes._accumulators import Fetched, fetch_each, fetch_to_host
from gradcheckup.probes._context import ProbeContext
from gradcheckup.probes._hooks import HookSet
from gradcheckup.probes._ledger import GradientLedger, LedgerTotals
from gradcheckup.probes._tensors import carries_gradient, iter_tensors

__all__ = [
    "Fetched",
    "GradientLedger",
    "HookSet",
    "LedgerTotals",
    "Probe",
    "ProbeContext",
    "carries_gradient",
    "fetch_each",
    "fetch_to_host",
    "iter_tensors",
    "local_totals",
]

_Totals_co = TypeVar("_Totals_co", covariant=True)


class Probe(Protocol[_Totals_co]):
    """What every probe answers; the monitor only merges.

    The life of a probe: ``attach`` once when the monitor opens, accumulate on device
    while the model runs (gradient norms through the shared ledger), then at each
    report ``device_values`` for the one fetch, ``share`` on the fetched numbers (this
    rank's part, plain host data), ``combined_totals`` over the shares of every rank
    of the job (only this rank's outside ``torch.distributed``), and ``unavailable``
    for what it could not measure.
    """

    def attach(self, hooks: HookSet) -> None:
        """Register the probe's hooks; ``hooks`` owns their removal."""

    def device_values(self, since_start: bool = True) -> Mapping[Hashable, torch.Tensor]:
        """The probe's device values, under keys only the probe itself reads: of every
        report window so far, or of the current one (``Monitor.snapshot``)."""

    def share(self, fetched: Fetched, since_start: bool = True) -> Any:
        """This rank's part of the totals: its own fetched values (``device_values``
        with the same ``since_start``) and host-side counts, as picklable host data."""

    def combined_totals(self, shares: Sequence[Any], ledger: LedgerTotals) -> _Totals_co:
        """The totals of every rank's ``share`` (one per rank, in rank order) and the
        gradient ledger's slots, already combined over the same ranks."""

    def start_window(self) -> None:
        """Fold the current report window into the earlier ones; a new one starts."""

    def unavailable(self) -> list[str]:
        """What the probe could not measure, each with the reason."""


def local_totals(
    probe: Probe[_Totals_co], fetched: Fetched, ledger: LedgerTotals, since_start: bool = True
) -> _Totals_co:
    """A probe's totals from this process's measurements alone."""
    return probe.combined_totals([probe.share(fetched, since_start)], ledger)
