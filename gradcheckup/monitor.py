"""The probes' lifecycle: attach, observe any number of passes, detach, report once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import torch
from torch import nn

from gradcheckup._gc import collector_paused
from gradcheckup._stats import (
    build_activation_stats,
    build_layer_stats,
    build_step_stats,
    build_temporal_stats,
)
from gradcheckup._version import __version__
from gradcheckup.config import Config
from gradcheckup.probes import Fetched, HookSet, LedgerTotals, Probe, ProbeContext, fetch_each
from gradcheckup.probes._ranks import RanksDidNotJoin, gather_shares, job_ranks, require_timeout
from gradcheckup.probes.activations import ActivationProbe
from gradcheckup.probes.inventory import Inventory, take_inventory
from gradcheckup.probes.layers import LayerSignalProbe
from gradcheckup.probes.parameters import ParameterProbe, ParameterTotals
from gradcheckup.probes.steps import (
    LayerSlots,
    StepHistoryTotals,
    StepProbe,
    require_optimizers,
)
from gradcheckup.probes.temporal import TemporalProbe
from gradcheckup.probes.tracker import ModuleTracker
from gradcheckup.report import Report, StepStats, StepSummary, display_name
from gradcheckup.rules import PassFacts, diagnose

__all__ = ["Monitor", "RanksDidNotJoin", "resolve_config", "watch"]


def resolve_config(config: Config | None) -> Config:
    """The given ``Config``, or the defaults for None.

    Raises:
        TypeError: ``config`` is neither a ``Config`` nor None.
    """
    if config is None:
        return Config()
    if not isinstance(config, Config):
        raise TypeError(
            f"config: expected a gradcheckup.Config or None, got {type(config).__name__}; "
            "build one with gcu.Config(name=value, ...)"
        )
    return config


def require_module(model: object) -> nn.Module:
    """``model`` itself, once it is known to be an ``nn.Module``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return model


class Monitor:
    """Observes a model's forward and backward passes and builds a ``Report``.

    Use it through ``gcu.watch(model)``; hooks exist only inside the ``with`` block and
    are removed on the way out, also when the block raises. Nothing grows with the
    number of passes: statistics are running sums on the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Config | None = None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        *,
        private: bool = False,
        data_parallel: nn.Module | None = None,
    ) -> None:
        """Take the model's inventory and build the probes; nothing is attached yet.

        Args:
            model: the module to observe.
            config: thresholds; ``gcu.Config()`` by default.
            optimizers: optimizers whose steps are recorded.
            private: while this monitor is open, other open monitors record no pass
                on its modules and none of their gradients, so that ``check()``'s pass
                stays invisible to a ``watch()`` around it (``check()`` opens private
                monitors). Monitors are shared by default: two watches of one model
                both record.
            data_parallel: the ``DistributedDataParallel`` wrapper of ``model`` when
                the model is watched from inside it (training frameworks wrap the
                module they hand to callbacks); found by itself when ``model`` is, or
                contains, the wrapper. Its gradients are measured once reduced.

        Raises:
            TypeError: ``model`` is not a module, ``config`` not a ``Config``, or
                ``data_parallel`` not a ``DistributedDataParallel``.
            ValueError: no trainable parameters, or an unknown
                ``Config.recurrent_modules`` name.
        """
        self._model = require_module(model)
        self._config = resolve_config(config)
        _require_data_parallel(data_parallel)
        with collector_paused():
            self._inventory: Inventory = take_inventory(model)
        # check()'s private monitor measures one pass: exact norms are worth their cost,
        # and are taken together when the pass ends.
        self._context = ProbeContext(
            self._config.full_passes, self._config.sample_every, precise=private, one_pass=private
        )
        self._hooks = HookSet()
        self._parameters = ParameterProbe(
            self._context, self._inventory, given=private, data_parallel=data_parallel
        )
        if private:
            self._context.ledger.keep_order()
        self._signals = LayerSignalProbe(self._context, self._inventory, node_hooks=private)
        self._activations = ActivationProbe(self._context, self._config.saturation_margin)
        self._temporal = TemporalProbe(self._context, self._config.recurrent_modules)
        _require_known_modules(self._config.recurrent_modules, self._inventory)
        self._tracker = ModuleTracker(
            self._context,
            self._inventory,
            self._signals,
            self._activations,
            self._temporal,
            include_no_grad_passes=self._config.include_no_grad_passes,
            private=private,
            forward_probes=self._config.forward_probes,
        )
        self._steps = (
            StepProbe(
                self._context,
                self._inventory,
                optimizers,
                self._config.step_history,
                LayerSlots(self._parameters.slot_layers(), self._signals.output_slot_layers()),
            )
            if optimizers
            else None
        )
        self._state = "new"

    def _probes(self) -> list[Probe]:
        """Every probe, in the order their unavailable-notes appear in the report."""
        probes: list[Probe] = [
            self._tracker,
            self._signals,
            self._parameters,
            self._activations,
            self._temporal,
        ]
        return probes if self._steps is None else [*probes, self._steps]

    @property
    def config(self) -> Config:
        """The thresholds this monitor reports with."""
        return self._config

    @property
    def inventory(self) -> Inventory:
        """The model's layers and module names, as the probes see them."""
        return self._inventory

    @property
    def pass_leaves(self) -> list[torch.Tensor]:
        """Stand-in leaves of plain inputs given a gradient during the current pass
        (recurrent modules, traced inputs); check() asks autograd for their gradient so
        the hooks on the way to them fire."""
        return [*self._temporal.pass_leaves, *self._signals.pass_leaves]

    def record_gradients(self, gradients: Mapping[int, Sequence[torch.Tensor | None]]) -> None:
        """check(): the parameter gradients of its pass, per layer index, in inventory
        order (a private monitor hooks no parameter)."""
        self._parameters.record_given(gradients, self._signals.output_slots())

    def trace_inputs(self, tensors: Sequence[torch.Tensor]) -> None:
        """check(): layers fed these plain tensors (or views of them) get a stand-in leaf
        with the same data, so that their input gradient is measured (``pass_leaves``)."""
        self._signals.trace(tensors)

    @property
    def hook_count(self) -> int:
        """Hooks currently registered by this monitor (0 once closed).

        Deliberate introspection, used by the tests to prove that closing removes
        every hook.
        """
        return len(self._hooks)

    def open(self) -> Monitor:
        """Attach the probes. ``with gcu.watch(model)`` calls this for you.

        Raises:
            RuntimeError: the monitor was opened before.
        """
        if self._state != "new":
            raise RuntimeError("a Monitor can be opened once; call gcu.watch(model) again")
        try:
            with collector_paused():
                for probe in self._probes():
                    probe.attach(self._hooks)
        except BaseException:
            self._hooks.remove_all()
            raise
        self._state = "open"
        return self

    def close(self) -> None:
        """Remove every hook; statistics stay available to ``report()``."""
        self._context.active = False
        self._tracker.abandon()
        self._hooks.remove_all()
        self._temporal.pass_leaves.clear()
        self._signals.pass_leaves.clear()
        self._state = "closed"

    def __enter__(self) -> Monitor:
        """Attach the probes (``open``)."""
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Remove every hook (``close``), also when the block raised."""
        self.close()

    def report(self, *, local: bool = False, timeout: float | timedelta = 300.0) -> Report:
        """Build the report from everything observed since the monitor opened (one
        device fetch). Snapshots do not change what it covers.

        In a ``torch.distributed`` job (two or more ranks) the report combines every
        rank's measurements and every rank gets the same report: gradient norms over
        all ranks' passes, a unit dead only if it is dead on every rank, counts
        summed. That is a collective call: call ``report()`` on every rank, in the
        same order as ``snapshot()``.

        Args:
            local: this rank's measurements only, without any collective call.
            timeout: seconds to wait for the other ranks to call ``report()`` too
                (a ``timedelta`` also works); then it raises instead of hanging.

        Raises:
            RanksDidNotJoin: in a distributed job, some rank did not call
                ``report()`` within ``timeout``.
        """
        seconds = require_timeout(timeout)
        with collector_paused():
            return self._report(local=local, timeout=seconds)

    def snapshot(
        self, reset: bool = True, *, local: bool = False, timeout: float | timedelta = 300.0
    ) -> Report:
        """The report of a window: the passes and steps since the last
        ``snapshot(reset=True)`` (or since the monitor opened); one device fetch.

        For logging during training (every N steps) while ``report()`` still covers the
        whole run. Per-layer statistics, activation sites and step norms are those of
        the window; the structure (depth order) and zero-gradient runs span the run.
        In a distributed job it combines the ranks as ``report()`` does.

        Args:
            reset: start a new window after this one (a few device ops, no fetch).
                ``reset=False`` gives the current window without closing it.
            local: this rank's window only, without any collective call.
            timeout: seconds to wait for the other ranks (see ``report()``).

        Returns:
            The window's ``Report``; ``report.passes`` counts the window's passes.
        """
        seconds = require_timeout(timeout)
        with collector_paused():
            window = self._report(since_start=False, local=local, timeout=seconds)
            if reset:
                self._context.ledger.start_window()
                for probe in self._probes():
                    probe.start_window()
            return window

    def _report(
        self,
        *,
        loss: torch.Tensor | None = None,
        gradients: Mapping[int, Sequence[torch.Tensor | None]] | None = None,
        notes: Sequence[str] = (),
        facts: PassFacts | None = None,
        since_start: bool = True,
        local: bool = True,
        timeout: float = 300.0,
    ) -> Report:
        """The report, with what only ``check()`` knows about its single pass.

        Args:
            loss: the differentiated loss of that pass.
            gradients: per layer index, the gradients of that pass, used to count
                NaN/inf entries where a norm came out non-finite.
            notes: further statistics that were unavailable, and why.
            facts: what check() knows about its pass, for the rules.
            since_start: every window so far, or only the current one (``snapshot``).
            local: this process's measurements only, even in a distributed job.
            timeout: seconds to wait for the other ranks of a distributed job.
        """
        probes = self._probes()
        ledger = self._context.ledger
        loss_values = {} if loss is None else {"loss": loss.detach().reshape(())}
        *fetched, fetched_ledger, fetched_loss = fetch_each(
            [
                *(p.device_values(since_start) for p in probes),
                ledger.device_values(since_start),
                loss_values,
            ]
        )
        totals, shares, notes = self._job_totals(
            fetched, fetched_ledger, since_start, local, timeout, notes
        )
        parameters = totals[self._parameters]
        steps, step_summary, zero_since = self._step_stats(totals.get(self._steps))
        layers = build_layer_stats(
            self._inventory,
            parameters,
            totals[self._signals],
            None if gradients is None else _nonfinite_entry_counts(parameters, gradients),
            zero_since,
        )
        activations = build_activation_stats(totals[self._activations])
        temporal = build_temporal_stats(totals[self._temporal], self._config)
        loss_value = fetched_loss.get("loss")
        passes = totals[self._tracker].passes
        findings = diagnose(
            layers,
            activations,
            self._config,
            loss=loss_value,
            temporal=temporal,
            steps=steps,
            step_summary=step_summary,
            passes=passes if self._tracker.sees_passes else None,
            facts=facts,
        )
        return Report(
            layers=layers,
            activations=activations,
            temporal=temporal,
            steps=steps,
            step_summary=step_summary,
            findings=findings,
            passes=passes,
            ranks=len(shares),
            loss=loss_value,
            probe_errors=_rank_errors(shares),
            unavailable=self._unavailable(notes),
            config=self._config,
            torch_version=torch.__version__,
            gradcheckup_version=__version__,
        )

    def _job_totals(
        self,
        fetched: Sequence[Fetched],
        fetched_ledger: Fetched,
        since_start: bool,
        local: bool,
        timeout: float,
        notes: Sequence[str],
    ) -> tuple[dict[Probe, Any], list[_RankShare], Sequence[str]]:
        """Every probe's totals over the job's ranks (this process's alone outside a
        distributed job or when ``local``), the ranks' shares, and the notes with what a
        local report of sharded parameters leaves out."""
        probes = self._probes()
        ledger = self._context.ledger
        own = _RankShare(
            [layer.name for layer in self._inventory.layers],
            ledger.totals(fetched_ledger, since_start),
            [
                probe.share(values, since_start)
                for probe, values in zip(probes, fetched, strict=True)
            ],
            self._context.errors.summary(),
        )
        ranks = job_ranks()
        shares = [own] if ranks is None or local else gather_shares(ranks, own, timeout)
        _require_same_model(shares)
        if ranks is not None and local and ledger.records_shards:
            notes = [*notes, _LOCAL_SHARDS_NOTE]
        ledger_totals = ledger.combined([share.ledger for share in shares])
        totals = {
            probe: probe.combined_totals(
                [share.probes[position] for share in shares], ledger_totals
            )
            for position, probe in enumerate(probes)
        }
        return totals, shares, notes

    def _step_stats(
        self, history: StepHistoryTotals | None
    ) -> tuple[list[StepStats], StepSummary | None, Mapping[int, int]]:
        """Steps, their summary and the zero-gradient runs; empty without optimizers."""
        if history is None:
            return [], None, {}
        names = {layer.index: display_name(layer.name) for layer in self._inventory.layers}
        steps, summary = build_step_stats(history, names)
        return steps, summary, history.zero_since

    def _unavailable(self, notes: Sequence[str]) -> list[str]:
        """What was not measured: module hooks first, then check()'s notes, then sites."""
        signal_notes = (
            self._signals.unavailable() if "signal" in self._config.forward_probes else []
        )
        before_notes = [*self._tracker.unavailable(), *signal_notes]
        probes = [probe for probe in self._probes() if probe not in (self._tracker, self._signals)]
        return [*before_notes, *notes, *(line for probe in probes for line in probe.unavailable())]


_LOCAL_SHARDS_NOTE = (
    "whole-model gradient and weight norms: report(local=True) of a sharded model (FSDP2) "
    "measures this rank's shards only; call report() on every rank for the whole"
)


@dataclass(frozen=True)
class _RankShare:
    """What one rank contributes to a report: host data only (it is pickled)."""

    layers: list[str]
    """The names of the rank's layers: the ranks must watch the same model."""
    ledger: LedgerTotals
    probes: list[Any]
    """Each probe's ``share``, in ``Monitor._probes`` order."""
    errors: list[str]


def _require_data_parallel(wrapper: object) -> None:
    """Check ``Monitor(data_parallel=...)``.

    Raises:
        TypeError: ``wrapper`` is neither None nor a ``DistributedDataParallel``.
    """
    if wrapper is not None and not isinstance(wrapper, nn.parallel.DistributedDataParallel):
        raise TypeError(
            "data_parallel: expected the torch.nn.parallel.DistributedDataParallel that wraps "
            f"the model, or None, got {type(wrapper).__name__}"
        )


def _require_same_model(shares: Sequence[_RankShare]) -> None:
    """Raise on every rank alike when the ranks watch different models.

    Raises:
        ValueError: some rank's layers differ from the first rank's (pipeline or
            tensor parallelism, or a different model per rank).
    """
    for rank, share in enumerate(shares[1:], start=1):
        if share.layers != shares[0].layers:
            raise ValueError(
                f"report(): rank {rank} watches other layers than rank 0 "
                f"({len(share.layers)} vs {len(shares[0].layers)} layers); a combined report "
                "needs the same model on every rank (data parallel: DDP, FSDP2). Call "
                "report(local=True) on each rank for its own layers"
            )


def _rank_errors(shares: Sequence[_RankShare]) -> list[str]:
    """Every rank's probe errors, each once; another rank's say which rank."""
    if len(shares) == 1:
        return list(shares[0].errors)
    seen: dict[str, None] = {}
    for rank, share in enumerate(shares):
        for error in share.errors:
            seen.setdefault(f"rank {rank}: {error}", None)
    return list(seen)


def _require_known_modules(names: Mapping[str, int], inventory: Inventory) -> None:
    known = set(inventory.module_names.values())
    unknown = [name for name in names if name not in known]
    if unknown:
        listed = sorted(known - {""})[:12]
        raise ValueError(
            f"config.recurrent_modules: no module named {unknown[0]!r} in the model; "
            f"module names look like {listed}"
        )


def _nonfinite_entry_counts(
    totals: Mapping[int, ParameterTotals], gradients: Mapping[int, Sequence[torch.Tensor | None]]
) -> dict[int, int]:
    """Per layer: NaN/inf entries in the gradients of check()'s single pass."""
    counts: dict[int, int] = {}
    for index, grads in gradients.items():
        grad_norm = totals[index].grad_norm
        if grad_norm is None or math.isfinite(grad_norm):
            counts[index] = 0
            continue
        # Only layers whose norm is already known to be non-finite pay for a count.
        counts[index] = sum(
            int((~torch.isfinite(grad)).sum()) for grad in grads if grad is not None
        )
    return counts


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    config: Config | None = None,
) -> Monitor:
    """Watch a model over any number of your own forward/backward passes.

    Args:
        model: the module to observe; its parameters, ``.grad`` and training behaviour
            are left untouched.
        optimizer: one optimizer or a list of them. Each ``step()`` is then recorded
            (``report.steps``): the global gradient norm it saw, clipping calls, AMP
            skips; ``Config.max_grad_norm`` makes unclipped steps an error.
        config: thresholds; ``gcu.Config()`` by default.

    Returns:
        A ``Monitor`` to use as a context manager; call ``report()`` inside or after
        the block.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``optimizer`` not an optimizer, or
            ``config`` not a ``Config``.
        ValueError: the model has no trainable parameters.

    Example:
        >>> with gcu.watch(model) as monitor:          # doctest: +SKIP
        ...     for x, y in loader:
        ...         loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        >>> monitor.report().ok                         # doctest: +SKIP
        True
    """
    if isinstance(optimizer, Config) and config is None:
        raise TypeError(
            "optimizer: got a gradcheckup.Config; pass it by name: gcu.watch(model, config=...)"
        )
    return Monitor(model, config, require_optimizers(optimizer))
