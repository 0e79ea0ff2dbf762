"""Which open monitor a forward pass, and the gradients it produces, belong to.

Several monitors can be open at once: ``gcu.check()`` inside a ``gcu.watch()`` of the
same model, two watches of one model, or two watched models that share a submodule.
Module hooks of every monitor fire for a shared module, and a parameter's gradient
hook fires for every backward that reaches it, so passes are given out here:

- a call of a monitor's root model starts a pass of that monitor (two watches of one
  model both record it);
- any other call starts a pass only if no other monitor that contains the module is
  in a pass (model A running the submodule it shares with model B belongs to A) or has
  the module as its root;
- while a private monitor is open (the one ``check()`` runs), the others start no pass
  on its modules: its pass is invisible to them.

A layer's parameter gradients then count for the monitors whose pass ran the layer
last (``claim``/``counts_gradient``), and for none when that pass did not count (an
empty batch). A layer no recorded pass ran (compiled code) counts for every monitor.
Claims are made only while more than one monitor is open: alone, a monitor owns every
gradient of its model (an empty batch's are skipped through ``ProbeContext.sampled``).
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from gradcheckup.probes._context import ProbeContext


class PassOwner(Protocol):
    """What the ownership rules need to know about a module tracker."""

    @property
    def root(self) -> nn.Module:
        """The model the monitor was opened on."""

    @property
    def private(self) -> bool:
        """True if other monitors pause on its modules while it is open."""

    @property
    def in_pass(self) -> bool:
        """True while one of its passes runs (recorded or not)."""

    def contains(self, module: nn.Module) -> bool:
        """True if ``module`` is one of the monitor's modules."""


_open_owners: list[PassOwner] = []
# Monitors whose claims hide their passes from every other monitor (check()'s).
_private_claimants: set[ProbeContext] = set()
# id(layer module) -> {context of a monitor whose pass ran the layer last: whether that
# pass counts}. Entries exist only for modules of open monitors, which keep them alive,
# so an id is never reused while its entry exists.
_claims: dict[int, dict[ProbeContext, bool]] = {}


def open_owner(owner: PassOwner) -> None:
    """Take part in the ownership rules (the monitor opened)."""
    _open_owners.append(owner)


def close_owner(owner: PassOwner, context: ProbeContext) -> None:
    """Leave the ownership rules and drop the monitor's claims (the monitor closed)."""
    if owner in _open_owners:
        _open_owners.remove(owner)
    drop_claims(context)


def drop_claims(context: ProbeContext) -> None:
    """Forget every claim of ``context``'s monitor."""
    _private_claimants.discard(context)
    for key, claimants in list(_claims.items()):
        claimants.pop(context, None)
        if not claimants:
            del _claims[key]


def others_open(owner: PassOwner) -> bool:
    """Whether another monitor is open: only then do passes need claims (alone, every
    gradient of the model is the monitor's, which ``counts_gradient`` says for a layer
    nobody claimed)."""
    return any(other is not owner for other in _open_owners)


def may_start_pass(owner: PassOwner, module: nn.Module) -> bool:
    """Whether a call of ``module`` outside any of ``owner``'s passes starts one."""
    if owner.private:
        return True
    others = [other for other in _open_owners if other is not owner and other.contains(module)]
    if any(other.private for other in others):
        return False
    if owner.root is module:
        return True
    return not any(other.in_pass or other.root is module for other in others)


def claim(module: nn.Module, context: ProbeContext, counts: bool, private: bool) -> None:
    """Record that a pass of ``context``'s monitor runs the layer ``module``.

    Claims of monitors that are not in a pass now belong to earlier passes and are
    dropped; a private monitor's claim drops all others.
    """
    claimants = _claims.get(id(module))
    if claimants is None or private:
        _claims[id(module)] = {context: counts}
        if private:
            _private_claimants.add(context)
        return
    for other in [other for other in claimants if other is not context and not other.in_pass]:
        del claimants[other]
    claimants[context] = counts


def counts_gradient(module_key: int, context: ProbeContext) -> bool:
    """Whether a gradient of the layer (by ``id``) counts for ``context``'s monitor.

    A monitor without module hooks (``Config.forward_probes=()``) sees no pass and makes
    no claim: every gradient of its model counts for it, except those of a private
    monitor's pass (``check()``).
    """
    claimants = _claims.get(module_key)
    if claimants is None:
        return True
    if context.counts_backward_passes:
        return not any(other in _private_claimants for other in claimants)
    return claimants.get(context, False)
