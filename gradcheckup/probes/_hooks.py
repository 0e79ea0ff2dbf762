"""One owner for every hook handle, so that removal can never be forgotten."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

_MAX_RECORDED_ERRORS = 20


class Removable(Protocol):
    """A hook handle (torch's RemovableHandle) or a patch subscription."""

    def remove(self) -> None: ...


class HookSet:
    """Keeps hook handles and removes them all at once (also on exceptions)."""

    def __init__(self) -> None:
        self._handles: list[Removable] = []

    def add(self, handle: Removable) -> None:
        self._handles.append(handle)

    def remove_all(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)


class ErrorLog:
    """Failures inside gradcheckup's hooks: recorded for the report, never raised.

    A diagnostic tool must not break the training it observes, so each hook body runs
    under ``guarded`` and a failure costs only that statistic.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.dropped = 0

    def record(self, where: str, error: BaseException) -> None:
        if len(self.messages) < _MAX_RECORDED_ERRORS:
            self.messages.append(f"{where}: {type(error).__name__}: {error}")
        else:
            self.dropped += 1

    def guarded(self, where: str, function: _F) -> _F:
        """Wrap ``function`` so that an exception is recorded and ``None`` returned."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as error:
                self.record(where, error)
                return None

        return wrapper  # type: ignore[return-value]

    def summary(self) -> list[str]:
        if self.dropped:
            return [*self.messages, f"... and {self.dropped} more"]
        return list(self.messages)
