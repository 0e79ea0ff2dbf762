"""One report for a distributed job: every rank's share, gathered and combined.

In a ``torch.distributed`` job each rank measures its own passes. ``Monitor.report``
gathers every rank's host-side share (numbers already fetched from the device: a few
floats per layer and per activation unit) with one ``all_gather_object`` and combines
them the same way on every rank, so that every rank returns the same report.

A collective hangs when one rank never joins it. Before the gather, each rank marks
its arrival in the process group's store and waits, with a timeout, for the others'
marks: a ``report()`` called on one rank only fails with an error that says which
ranks did not come, instead of hanging.

The combining rules (sums, maxima, minima) live here; each probe applies them to its
own share (``Probe.share`` / ``Probe.combined_totals``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

_T = TypeVar("_T")

_KEY_PREFIX = "gradcheckup/report"
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class RankGroup:
    """The process group a report is combined over."""

    group: Any
    """The ``torch.distributed`` process group (the default group)."""
    rank: int
    size: int


class RanksDidNotJoin(RuntimeError):
    """``report()`` ran on some ranks of a distributed job but not on all of them."""


_reports_started = 0  # per process: the n-th collective report pairs with the others' n-th


def job_ranks() -> RankGroup | None:
    """The default process group when this is a distributed job of two or more ranks;
    otherwise None (nothing to combine)."""
    distributed = getattr(torch, "distributed", None)
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return None
    size = distributed.get_world_size()
    if size < 2:
        return None
    return RankGroup(distributed.group.WORLD, distributed.get_rank(), size)


def gather_shares(ranks: RankGroup, share: _T, timeout: float) -> list[_T]:
    """Every rank's ``share``, in rank order; the same list on every rank.

    Raises:
        RanksDidNotJoin: some rank did not call ``report()`` within ``timeout`` seconds.
    """
    import torch.distributed as dist

    global _reports_started
    call = _reports_started
    store = _default_store()
    # A failed wait leaves neither its mark nor its number behind: the next report of
    # this rank pairs with the other ranks' next one again.
    key = _wait_for_every_rank(store, ranks, call, timeout)
    _reports_started += 1
    gathered: list[Any] = [None] * ranks.size
    dist.all_gather_object(gathered, share, group=ranks.group)
    # Every rank has passed its wait once the gather returns: the mark can go, so that
    # a report every few steps does not grow the store.
    _forget(store, key)
    return gathered


def _wait_for_every_rank(store: Any, ranks: RankGroup, call: int, timeout: float) -> str | None:
    """Mark this rank's arrival at report number ``call`` and wait for the other ranks';
    returns this rank's mark (None without a store: then the collective itself waits)."""
    if store is None:
        return None
    keys = [f"{_KEY_PREFIX}/{call}/{rank}" for rank in range(ranks.size)]
    store.set(keys[ranks.rank], "1")
    deadline = time.monotonic() + timeout
    missing = list(range(ranks.size))
    while True:
        missing = [rank for rank in missing if not store.check([keys[rank]])]
        if not missing:
            return keys[ranks.rank]
        if time.monotonic() >= deadline:
            _forget(store, keys[ranks.rank])
            raise RanksDidNotJoin(
                f"report(): rank {ranks.rank} waited {timeout:g} s for ranks {missing} to call "
                "report() too. In a distributed job report() and snapshot() combine every "
                "rank's measurements, so every rank must call them (in the same order); "
                "call report(local=True) for this rank's own measurements only"
            )
        time.sleep(_POLL_SECONDS)


def _forget(store: Any, key: str | None) -> None:
    if store is None or key is None:
        return
    # A store without deletion keeps one small key per rank and report.
    with contextlib.suppress(RuntimeError, AttributeError, NotImplementedError):
        store.delete_key(key)


def _default_store() -> Any:
    """The default process group's key-value store, where torch exposes it."""
    from torch.distributed import distributed_c10d

    getter = getattr(distributed_c10d, "_get_default_store", None)
    try:
        return None if getter is None else getter()
    except (RuntimeError, ValueError):
        return None


def require_timeout(timeout: float | timedelta) -> float:
    """``timeout`` in seconds, once it is known to be a positive number.

    Raises:
        TypeError: not a number or a ``timedelta``.
        ValueError: not positive.
    """
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout: expected seconds (a number) or a datetime.timedelta, "
            f"got {type(timeout).__name__}"
        )
    if not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    return float(timeout)


# -- combining rules -----------------------------------------------------------------------
def summed(vectors: Sequence[Sequence[float]]) -> list[float]:
    """Element-wise sums of equally long vectors."""
    return [math.fsum(values) for values in zip(*vectors, strict=True)]


def summed_aligned(vectors: Iterable[Sequence[float]]) -> list[float]:
    """Element-wise sums from index 0; a longer vector extends the result."""
    total: list[float] = []
    for vector in vectors:
        if len(vector) > len(total):
            total += [0.0] * (len(vector) - len(total))
        for position, value in enumerate(vector):
            total[position] += value
    return total


def largest(values: Iterable[float]) -> float:
    """The largest value; NaN wins (a NaN anywhere must stay visible)."""
    result = -math.inf
    for value in values:
        if math.isnan(value):
            return math.nan
        result = max(result, value)
    return result


def largest_each(vectors: Sequence[Sequence[float]]) -> list[float]:
    """Element-wise ``largest`` of equally long vectors."""
    return [largest(values) for values in zip(*vectors, strict=True)]


def smallest_each(vectors: Sequence[Sequence[float]]) -> list[float]:
    """Element-wise minima of equally long vectors."""
    return [min(values) for values in zip(*vectors, strict=True)]
