"""Forward hooks that stay behind when a watched module is copied or pickled.

``torch.save(model)`` during a watch must work, and an EMA/SWA copy made during a
watch (``copy.deepcopy``, ``AveragedModel``) must neither feed the monitor nor keep a
hook of ours once the watch ends. What remains: a class whose own ``__reduce__``/
``__reduce_ex__`` bypasses ``__getstate__`` still copies our hooks; they ignore every
module but their own, and pickling them fails as it did before.
"""

from __future__ import annotations

import weakref
from collections.abc import Set as AbstractSet
from typing import Any

from torch import nn

# The per-module dicts that hold forward hooks and their flags, keyed by handle id.
_FORWARD_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


class _StateWithoutOurHooks:
    """A module's instance-level ``__getstate__`` while it is watched.

    ``copy.deepcopy``, ``copy.copy``, ``pickle`` and ``torch.save`` all take a module's
    state from ``__getstate__``, looked up on the instance first. This one returns the
    class's state with our forward hooks filtered out, so an EMA/SWA copy or a saved
    model carries no hook of ours, during the watch and after it. Parameters need no
    such care: their tensor hooks are neither deep-copied nor pickled by torch.

    A class with its own ``__deepcopy__`` that copies ``__dict__`` directly (torch's
    parametrized modules) copies our hooks and this object too; the copy then gets a
    filter of its own, and the hooks are taken out of the copy when the watch ends
    (until then the hooks ignore calls of a module that is not theirs).
    """

    def __init__(
        self,
        module: nn.Module | None,
        hook_ids: set[int],
        copies: list[tuple[weakref.ref[nn.Module], _StateWithoutOurHooks]],
    ) -> None:
        self._module = (lambda: None) if module is None else weakref.ref(module)
        self.hook_ids = hook_ids
        self.copies = copies  # shared by every copy of the same watched module

    def __call__(self) -> dict[str, Any]:
        module = self._module()
        if module is None:
            raise RuntimeError(
                "gradcheckup: this state was copied from a watched module's __dict__ "
                "outside a copy of the module itself; copy the module instead"
            )
        state = dict(type(module).__getstate__(module))
        state.pop("__getstate__", None)
        for attribute in _FORWARD_HOOK_DICTS:
            hooks = state.get(attribute)
            if isinstance(hooks, dict) and not self.hook_ids.isdisjoint(hooks):
                state[attribute] = type(hooks)(
                    (key, value) for key, value in hooks.items() if key not in self.hook_ids
                )
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> _StateWithoutOurHooks:
        module = self._module()
        replica = memo.get(id(module)) if module is not None else None
        if not isinstance(replica, nn.Module):
            return _StateWithoutOurHooks(None, set(self.hook_ids), self.copies)
        copied = _StateWithoutOurHooks(replica, set(self.hook_ids), self.copies)
        self.copies.append((weakref.ref(replica), copied))
        return copied

    def forget(self, module: nn.Module, hook_ids: AbstractSet[int]) -> None:
        """Stop filtering ``hook_ids``; take them out of copies made meanwhile.

        ``module`` loses this filter once no hook of any monitor is left to filter.
        """
        for replica_ref, copied in self.copies:
            replica = replica_ref()
            if replica is not None:
                for attribute in _FORWARD_HOOK_DICTS:
                    hooks = replica.__dict__.get(attribute)
                    for hook_id in hook_ids if isinstance(hooks, dict) else ():
                        hooks.pop(hook_id, None)
                copied._release(replica, hook_ids)
        self._release(module, hook_ids)
        if not self.hook_ids:
            self.copies.clear()

    def _release(self, module: nn.Module, hook_ids: AbstractSet[int]) -> None:
        self.hook_ids -= hook_ids
        if not self.hook_ids and module.__dict__.get("__getstate__") is self:
            del module.__dict__["__getstate__"]


class HiddenFromCopies:
    """Leaves forward hooks out of copies and pickles of their modules until removed.

    One for every module a monitor hooks: a model of 10,000 modules needs no object per
    module beyond each module's filter.
    """

    def __init__(self) -> None:
        self._hidden: list[tuple[nn.Module, frozenset[int], _StateWithoutOurHooks]] = []

    def add(self, module: nn.Module, hook_ids: frozenset[int]) -> None:
        """Leave the forward hooks of ``module`` with these ids out of its copies."""
        current = module.__dict__.get("__getstate__")
        if current is None:
            current = _StateWithoutOurHooks(module, set(hook_ids), [])
            module.__dict__["__getstate__"] = current
        elif isinstance(current, _StateWithoutOurHooks):
            # Another monitor's filter is shared.
            current.hook_ids |= hook_ids
        else:
            # A user's own instance attribute is left alone (the hooks then travel with
            # copies, as they would without us).
            return
        self._hidden.append((module, hook_ids, current))

    def remove(self) -> None:
        """Stop hiding; take the hooks out of copies made meanwhile."""
        while self._hidden:
            module, hook_ids, state = self._hidden.pop()
            state.forget(module, hook_ids)
