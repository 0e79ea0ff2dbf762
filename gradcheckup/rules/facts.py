"""What ``check()`` knows about its single pass that the statistics do not carry.

The rules stay pure functions: ``check()`` measures these facts once (its inputs'
finiteness, which parameters feed only outputs the loss ignored) and hands them over;
``watch()`` has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NonfiniteInput:
    """One input argument of ``check()`` with NaN or inf entries."""

    label: str
    """The argument as error messages name it: ``inputs[0]``, ``inputs['x']``."""
    nan_count: int
    inf_count: int


@dataclass(frozen=True)
class PassFacts:
    """Facts about ``check()``'s pass, for the rules that judge its origin.

    The defaults describe ``watch()``, which knows none of them.
    """

    nonfinite_inputs: tuple[NonfiniteInput, ...] = ()
    """Input arguments holding NaN/inf, in argument order."""
    outside_loss: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    """(layer name, parameter name) of parameters without gradient that do reach the
    model's output: they feed an output the differentiated loss did not use."""
