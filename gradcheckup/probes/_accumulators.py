"""Device-side running sums: add on device during passes, fetch once at report time."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

Fetched = Mapping[Hashable, float | list[float]]
"""Device values brought to the host: 0-d tensors as floats, others as flat lists."""


def as_list(value: float | list[float]) -> list[float]:
    """A fetched value as a list (a one-element vector comes back as a float)."""
    return value if isinstance(value, list) else [value]


class Accumulators:
    """Named running sums and maxima that live on the device of the values given to them.

    Adding never synchronises with the host; ``fetch_to_host`` brings every value back
    with one transfer per device. Each probe owns its own, so its keys are its own.
    Values accumulate in the current window (``values``); ``start_window`` folds them
    into the totals of earlier windows, and ``since_start`` combines both.
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, torch.Tensor] = {}
        self._earlier: dict[Hashable, torch.Tensor] = {}
        self._combine: dict[Hashable, str] = {}

    def add(self, key: Hashable, value: torch.Tensor) -> None:
        """Add ``value`` to the sum under ``key`` (which starts at ``value``)."""
        current = self._values.get(key)
        if current is None:
            self._values[key] = value.detach().to(torch.float32, copy=True)
            self._combine[key] = "sum"
        else:
            current.add_(value)

    def maximum(self, key: Hashable, value: torch.Tensor, fresh: bool = False) -> bool:
        """Keep the element-wise larger of the stored value and ``value`` (NaN wins).

        Args:
            key: names the maximum.
            value: the new values.
            fresh: ``value`` is a new tensor that nothing else holds or changes: kept
                as it is, not copied, when it is the first under ``key``.

        Returns:
            False (nothing stored) if the shapes differ.
        """
        current = self._values.get(key)
        if current is None:
            # Kept in the values' own dtype: a maximum is exact in any of them.
            self._values[key] = value if fresh else value.detach().clone()
            self._combine[key] = "max"
            return True
        if current.shape != value.shape:
            return False
        torch.maximum(current, value.to(current.dtype), out=current)
        return True

    def add_aligned(self, key: Hashable, vector: torch.Tensor) -> None:
        """Add a 1-d vector element-wise from index 0, growing the sum when it is longer.

        Sequences of different lengths add up step by step.
        """
        current = self._values.get(key)
        vector = vector.detach().to(torch.float32)
        if current is None:
            self._values[key] = vector.clone()
            self._combine[key] = "aligned"
            return
        if vector.numel() > current.numel():
            padding = vector.new_zeros(vector.numel() - current.numel())
            current = self._values[key] = torch.cat([current, padding])
        current[: vector.numel()].add_(vector)

    def start_window(self) -> None:
        """Fold the current window into the earlier windows' totals (device ops only)."""
        for key, value in self._values.items():
            self._earlier[key] = _combined(self._combine[key], self._earlier.get(key), value)
        self._values = {}

    def since_start(self) -> dict[Hashable, torch.Tensor]:
        """Every window so far, combined (device ops only). Read-only: a key seen in one
        window only is that window's own tensor, not a copy."""
        combined = dict(self._earlier)
        for key, value in self._values.items():
            earlier = self._earlier.get(key)
            if earlier is not None:
                value = _combined(self._combine[key], earlier, value)
            combined[key] = value
        return combined

    @property
    def values(self) -> dict[Hashable, torch.Tensor]:
        """The device values by key (the live dict: no copy, no sync)."""
        return self._values


def _combined(how: str, earlier: torch.Tensor | None, current: torch.Tensor) -> torch.Tensor:
    """Two windows' values of one key as one: summed, the larger, or summed step by step."""
    if earlier is None:
        return current.clone()
    if earlier.shape != current.shape and how != "aligned":
        return earlier.clone()  # a site whose unit count changed keeps its first shape
    if how == "max":
        return torch.maximum(earlier, current.to(earlier.dtype))
    if how == "aligned" and earlier.numel() != current.numel():
        longer, shorter = (
            (earlier, current) if earlier.numel() > current.numel() else (current, earlier)
        )
        total = longer.clone()
        total[: shorter.numel()].add_(shorter)
        return total
    return earlier + current


_PROMOTE_EXACTLY = frozenset(
    {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.bool}
)


def fetch_to_host(values: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, float | list[float]]:
    """Bring device values to the host with one transfer per device.

    0-d tensors come back as floats, others as flat lists of floats. The 0-d ones
    travel stacked, the others concatenated: a handful of ops per device, however
    many values there are.
    """
    by_device: dict[torch.device, list[tuple[Hashable, torch.Tensor]]] = {}
    for key, value in values.items():
        by_device.setdefault(value.device, []).append((key, value))
    fetched: dict[Hashable, float | list[float]] = {}
    for items in by_device.values():
        scalars = [(key, value) for key, value in items if value.dim() == 0]
        vectors = [(key, value) for key, value in items if value.dim() != 0]
        with torch.no_grad():
            values = [value for _, value in scalars]
            exact = all(value.dtype in _PROMOTE_EXACTLY for _, value in items)
            if not exact:
                values = [value.to(torch.float64) for value in values]
            parts = [torch.stack(values)] if values else []
            parts += [
                (value if value.dim() == 1 else value.reshape(-1))
                if exact
                else value.reshape(-1).to(torch.float64)
                for _, value in vectors
            ]
            # Floating and boolean values promote exactly: one conversion for all.
            host = torch.cat(parts).to(torch.float64).tolist()
        for position, (key, _) in enumerate(scalars):
            fetched[key] = host[position]
        offset = len(scalars)
        for key, value in vectors:
            size = value.numel()
            fetched[key] = host[offset : offset + size]
            offset += size
    return fetched


def fetch_each(
    groups: Sequence[Mapping[Hashable, torch.Tensor]],
) -> list[dict[Hashable, float | list[float]]]:
    """Fetch several owners' device values together, handing each its own keys back.

    One transfer per device for all of them; keys of different owners never collide,
    as each owner's values travel under its position.
    """
    merged = {
        (position, key): value
        for position, group in enumerate(groups)
        for key, value in group.items()
    }
    returned: list[dict[Hashable, float | list[float]]] = [{} for _ in groups]
    for (position, key), value in fetch_to_host(merged).items():
        returned[position][key] = value
    return returned
