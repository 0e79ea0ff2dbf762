"""Python's cyclic garbage collector held back while gradcheckup builds its own objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold automatic collection back for the length of the block.

    Attaching to, and reporting on, a model with 10,000 modules allocates a few hundred
    thousand small objects; each allocation burst triggers full collections that walk
    every object of the process (the model, torch's own), which took most of the time.
    Used only around gradcheckup's own bookkeeping, never around the user's code:
    nothing is lost, the collector catches up afterwards. A collector the user had
    disabled stays disabled.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
