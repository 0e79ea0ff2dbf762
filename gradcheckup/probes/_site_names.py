"""How activation sites are named: after the layer they follow.

A site is one call position of a monitored activation in a forward pass. Its name is
``<layer>/<function>``: the layer whose forward began last before the call, then the
activation function. In ``nn.Sequential(nn.Linear, nn.ReLU, nn.Linear, nn.ReLU)`` the
ReLUs (modules '1' and '3') are ``0/relu`` and ``2/relu``; a ``torch.sigmoid`` in a
model's own forward after ``layers.6`` is ``layers.6/sigmoid``; a ReLU inside a layer's
own forward is named after that layer. Module names and call counts alone ('1', '3',
'sigmoid#7') say nothing about which units are dead or saturated; the layer does, and
the report's layer table lists it.

- A layer, here, is a module that owns parameters directly, trainable or frozen (so
  freezing a layer does not rename the sites after it), its parametrizations' included;
  a parametrization runs inside its owner's forward and is no layer of its own. The
  model itself ('') names no site: its sites keep the fallback below.
- Before any layer has begun in the pass, a site keeps the name of its activation
  module ('act'), or ``<enclosing module>:<function>`` for a functional call
  (``<function>`` in the model's own forward).
- A name that recurs within one pass gets ``#2``, ``#3``, ... in call order: two ReLUs
  after the same layer, or a block that runs twice. Names depend only on the order of
  the calls within a pass, so every pass of the same model names its sites alike.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["names_sites_after_it", "numbered", "site_base_name"]

_PARAMETRIZATIONS = "parametrizations"


def names_sites_after_it(module: nn.Module, name: str) -> bool:
    """True for a layer that the activation sites after it are named after.

    Args:
        module: a module of the model.
        name: its name in ``named_modules()``.
    """
    if not name or (_PARAMETRIZATIONS in name and _PARAMETRIZATIONS in name.split(".")):
        return False
    if type(module).parameters is nn.Module.parameters and "parameters" not in vars(module):
        # What parameters(recurse=False) yields, without its generator machinery.
        has_parameters = any(param is not None for param in module._parameters.values())
    else:
        has_parameters = next(module.parameters(recurse=False), None) is not None
    # Every parametrization registers the 'parametrizations' child: the common case
    # skips is_parametrized's failing attribute lookup.
    return has_parameters or (
        _PARAMETRIZATIONS in module._modules and parametrize.is_parametrized(module)
    )


def site_base_name(
    function: str, after_layer: str | None, activation_module: str | None, owner: str
) -> str:
    """A site's name before numbering: ``<after_layer>/<function>``, or the fallback.

    Args:
        function: the activation function ('relu', 'sigmoid', ...).
        after_layer: the layer whose forward began last in this pass; None (or '', the
            model itself) before any.
        activation_module: the name of the activation module making the call, if the
            call is that module's own (``nn.ReLU``); None for a functional call.
        owner: the name of the module whose forward makes the call ('' for the model).

    Returns:
        The name, without the ``#n`` of later calls (see ``numbered``).
    """
    if after_layer:
        return f"{after_layer}/{function}"
    if activation_module is not None:
        return activation_module
    return f"{owner}:{function}" if owner else function


def numbered(base: str, earlier: int) -> str:
    """``base`` for its first call in a pass, ``base#2`` for the second, and so on.

    Args:
        base: a name from ``site_base_name``.
        earlier: how many calls in this pass had the same base name before.
    """
    return base if earlier == 0 else f"{base}#{earlier + 1}"
