"""The real-architecture zoo: gcu.check on stock and broken models, one row per run.

    python benchmarks/zoo.py [--only NAME...] [--quick] [--json OUT] [--calibration OUT]

Needs torchvision, timm and transformers (see benchmarks/README.md for the venv). Every
model is built from a small config with random initialisation; nothing is downloaded.
Each (model, input size, seed) gets one row: errors, warnings, finding kinds, the depth
ratio as the rules compute it, time, layers with a measured backward signal vs modules
with trainable parameters, activation sites found vs expected. Healthy models must give
no error; sick ones must give an error of their expected kind. The exit code is 1 when
any expectation fails, so the zoo can serve as a gate.

Independently of gradcheckup's internals, the script's own hooks record each layer's
output size and backward signal and the flat-derivative fractions at every activation
call (ReLU, ReLU6/Hardtanh, Hardswish, Hardsigmoid, sigmoid, tanh), and evaluates
size-independent depth metrics on them (``--calibration`` dumps the raw numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
import traceback
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo_cases import Case, all_cases

import gradcheckup as gcu

try:
    from gradcheckup.rules import depth_ratio
except ImportError:  # older or newer layouts: the column stays empty
    depth_ratio = None

SEEDS = (0, 1)
SATURATION_MARGIN = 0.01
ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
)
NORM_MARKERS = ("Norm", "BatchNorm", "GroupNorm", "LayerNorm", "RMSNorm", "FrozenBatchNorm")


# --- independent instrumentation ---------------------------------------------------------


def _flat_mask(name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Where the activation's derivative is zero (ReLU family, hard functions), judged on
    its input before the call (in-place calls overwrite it); None for other functions."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    x = x.detach()
    if name in ("relu", "relu_"):
        return x <= 0
    if name in ("hardtanh", "hardtanh_"):
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return (x <= low) | (x >= high)
    if name == "hardswish":
        return x <= -3
    if name == "hardsigmoid":
        return (x <= -3) | (x >= 3)
    return None


def _saturated(name: str, out: torch.Tensor) -> torch.Tensor:
    out = out.detach()
    if name.startswith("sigmoid"):
        return (out < SATURATION_MARGIN) | (out > 1 - SATURATION_MARGIN)
    return out.abs() > 1 - 2 * SATURATION_MARGIN


def _function_label(name: str, args: tuple, kwargs: dict) -> str:
    if name.startswith("hardtanh"):
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return "relu6" if (low, high) == (0.0, 6.0) else "hardtanh"
    return name.rstrip("_")


class SiteStats:
    """Flat-derivative statistics of one activation site over its calls."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.calls = 0
        self.flat = 0
        self.total = 0
        self.units: int | None = None
        self.ever_live: torch.Tensor | None = None

    def add(self, flat: torch.Tensor) -> None:
        self.calls += 1
        self.flat += int(flat.sum())
        self.total += flat.numel()
        if flat.dim() < 2:
            return
        axis = 1 if flat.dim() >= 4 else flat.dim() - 1
        dims = [d for d in range(flat.dim()) if d != axis]
        live = (~flat).amax(dim=dims) if flat.numel() else None
        if live is None:
            return
        if self.ever_live is None:
            self.ever_live, self.units = live, live.numel()
        elif self.ever_live.shape == live.shape:
            self.ever_live |= live

    def summary(self) -> dict[str, Any]:
        units = self.units or 0
        dead = float((~self.ever_live).float().mean()) if self.ever_live is not None else None
        return {
            "function": self.function,
            "calls": self.calls,
            "units": units,
            "samples_per_unit": self.total // units if units else None,
            "flat_elem_fraction": self.flat / self.total if self.total else None,
            "flat_unit_fraction": dead,
        }


class ActivationSpy(TorchFunctionMode):
    """Sees every activation call (module or functional) and records its flat regions."""

    RELU_FAMILY = ("relu", "relu_", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid")
    TRACKED = frozenset((*RELU_FAMILY, "sigmoid", "sigmoid_", "tanh", "tanh_"))

    def __init__(self, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stack = stack
        self.sites: dict[str, SiteStats] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in self.TRACKED:
            return func(*args, **kwargs)
        flat = _flat_mask(name, args, kwargs)
        out = func(*args, **kwargs)
        # A statistic must never break the model's pass.
        with contextlib.suppress(Exception):
            self._record(name, args, kwargs, flat, out)
        return out

    def _record(self, name: str, args: tuple, kwargs: dict, flat: Any, out: Any) -> None:
        if flat is None:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return
            flat = _saturated(name, out)
        label = _function_label(name, args, kwargs)
        owner, module = self.stack[-1] if self.stack else ("", None)
        # As gradcheckup names them: each call of a site is its own site ('#2' on).
        base = owner if isinstance(module, ACTIVATION_MODULES) else f"{owner}:{label}"
        self.counts[base] += 1
        key = base + (f"#{self.counts[base]}" if self.counts[base] > 1 else "")
        self.sites.setdefault(key, SiteStats(label)).add(flat)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if hasattr(output, "values") and callable(output.values):
        for item in output.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


CHANNELS_FIRST_1D = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.GroupNorm,
)


def _position_summed(grad: torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
    """dL/d(output) summed over positions per sample and unit: (N, C, ...) sums the
    spatial dims, (N, T, F) the time dim (channels-first 1-D modules: the last dim)."""
    if grad.dim() <= 2:
        return grad
    if grad.dim() == 3:
        return grad.sum(dim=2 if record["channels_first"] else 1)
    return grad.sum(dim=tuple(range(2, grad.dim())))


class Instruments:
    """The zoo's own hooks: a module stack for naming activation sites, and per layer
    (module with its own trainable parameters) the output size and dL/d(output) norm."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[tuple[str, nn.Module]] = []
        self.layers: dict[str, dict[str, Any]] = {}
        self.handles: list[Any] = []
        self.spy = ActivationSpy(self.stack)
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._push(name, module)))
            self.handles.append(module.register_forward_hook(self._pop))
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self.layers[name] = {
                    "numel": 0,
                    "calls": 0,
                    "grad_sq": 0.0,
                    "unit_sq": 0.0,
                    "shape": None,
                    "channels_first": isinstance(module, CHANNELS_FIRST_1D),
                }
                self.handles.append(module.register_forward_hook(self._measure(name)))

    def _push(self, name: str, module: nn.Module):
        def hook(_module: nn.Module, _inputs: Any) -> None:
            self.stack.append((name, module))

        return hook

    def _pop(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def _measure(self, name: str):
        record = self.layers[name]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = _first_tensor(output)
            if out is None:
                return
            record["numel"] += out.numel()
            record["calls"] += 1
            record["shape"] = record["shape"] or list(out.shape)
            if out.requires_grad:

                def on_grad(grad: torch.Tensor) -> None:
                    grad = grad.detach().float()
                    record["grad_sq"] += float(grad.pow(2).sum())
                    record["unit_sq"] += float(_position_summed(grad, record).pow(2).sum())

                out.register_hook(on_grad)

        return hook

    def __enter__(self) -> Instruments:
        self.spy.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.spy.__exit__(*exc)
        for handle in self.handles:
            handle.remove()


# --- depth metrics from the raw numbers ------------------------------------------------------


def _is_norm(module_type: str) -> bool:
    return any(marker in module_type for marker in NORM_MARKERS)


def _ratio(first: float, last: float) -> float | None:
    if not last or not math.isfinite(first) or not math.isfinite(last):
        return None
    return first / last


def candidates(layers: list[dict[str, Any]], window: float = 0.25) -> dict[str, float | None]:
    """The candidate depth metrics of one run (see README: a-e)."""
    profile = sorted(
        (
            layer
            for layer in layers
            if layer["depth"] is not None
            and layer["ogn"] is not None
            and math.isfinite(layer["ogn"])
            and layer["ogn"] > 0
            and layer["numel"]
        ),
        key=lambda layer: layer["depth"],
    )
    if len(profile) < 3:
        return dict.fromkeys(CANDIDATES)
    size = max(1, int(len(profile) * window))
    first, last = profile[:size], profile[-size:]
    heads = [layer for layer in profile if not _is_norm(layer["type"])] or profile
    tail = heads[-size:]

    def rms(layer: dict[str, Any]) -> float:
        return layer["ogn"] / math.sqrt(layer["numel"])

    g2w = [layer for layer in profile if layer["g2w"] is not None and layer["g2w"] > 0]
    gsize = max(1, int(len(g2w) * window))
    d = (
        _ratio(
            statistics.median(layer["g2w"] for layer in g2w[:gsize]),
            statistics.median(layer["g2w"] for layer in g2w[-gsize:]),
        )
        if len(g2w) >= 3
        else None
    )
    return {
        "a_total": _ratio(max(lay["ogn"] for lay in first), max(lay["ogn"] for lay in last)),
        "b_rms": _ratio(max(map(rms, first)), max(map(rms, last))),
        "c_rms_logits": _ratio(max(map(rms, first)), rms(heads[-1])),
        "c2_rms_tail": _ratio(max(map(rms, first)), max(map(rms, tail))),
        "e_total_logits": _ratio(max(lay["ogn"] for lay in first), heads[-1]["ogn"]),
        "d_g2w": d,
        "f_unit_logits": _unit_ratio(first, heads),
    }


def _unit_ratio(first: list[dict[str, Any]], heads: list[dict[str, Any]]) -> float | None:
    """Position-summed signal: largest among the first layers / the logits layer's."""
    units = [layer["unit"] for layer in first if layer.get("unit")]
    last = heads[-1].get("unit")
    if not units or not last:
        return None
    return _ratio(max(units), last)


# --- running one case ----------------------------------------------------------------------


def _layer_records(report: Any, instruments: Instruments | None) -> list[dict[str, Any]]:
    mine = instruments.layers if instruments else {}
    records = []
    for layer in report.layers:
        own = mine.get(layer.name, {})
        records.append(
            {
                "name": layer.name,
                "type": layer.module_type,
                "depth": layer.depth_index,
                "numel": own.get("numel"),
                "calls": own.get("calls"),
                "shape": own.get("shape"),
                "ogn": layer.output_grad_norm,
                "my_ogn": math.sqrt(own["grad_sq"]) if own.get("calls") else None,
                "unit": math.sqrt(own["unit_sq"]) if own.get("calls") else None,
                "g2w": layer.grad_to_weight,
                "grad_norm": layer.grad_norm,
                "weight_norm": layer.weight_norm,
            }
        )
    return records


def _finding_kinds(report: Any) -> str:
    counts: dict[str, int] = defaultdict(int)
    for found in report.findings:
        counts[f"{found.kind.value}:{found.severity.value[0].upper()}"] += 1
    return ",".join(f"{k}{'x' + str(n) if n > 1 else ''}" for k, n in sorted(counts.items()))


def _verdict(case: Case, report: Any) -> str:
    errors = {f.kind.value for f in report.findings if f.severity.value == "error"}
    if case.healthy:
        return "ok" if not errors else "FALSE-ALARM"
    if not errors & set(case.expect or ()):
        return "MISSED"
    return "NOISY" if errors & set(case.forbid) else "ok"


def run_case(case: Case, size: str, seed: int) -> dict[str, Any]:
    """One row: build, check (or watch a loop), judge against the expectation."""
    row: dict[str, Any] = {
        "case": case.name,
        "source": case.source,
        "family": case.family,
        "size": size,
        "seed": seed,
        "expect": "healthy" if case.healthy else "|".join(case.expect or ()),
        "note": case.note,
        "gate": case.gate,
    }
    config = gcu.Config(**case.config)
    instruments = None
    try:
        if case.train is not None:
            start = time.perf_counter()
            report, losses = case.train(seed, config)
            row["time_s"] = time.perf_counter() - start
            row["losses"] = losses
            row["step_norms"] = [step.grad_norm for step in report.steps]
            expected_layers = None
        else:
            model, inputs, target, loss_fn = case.build(size, seed)
            expected_layers = sum(
                1
                for m in model.modules()
                if any(p.requires_grad for p in m.parameters(recurse=False))
            )
            instruments = Instruments(model)
            start = time.perf_counter()
            with instruments:
                report = gcu.check(model, inputs, target=target, loss_fn=loss_fn, config=config)
            row["time_s"] = time.perf_counter() - start
            row["batch"] = _batch_of(inputs)
    except Exception as error:
        row.update(status="crash", error=f"{type(error).__name__}: {error}"[:300])
        row["traceback"] = traceback.format_exc()[-1500:]
        return row
    _fill_from_report(row, case, report, instruments, expected_layers)
    return row


def _batch_of(inputs: Any) -> int | None:
    tensor = _first_tensor(inputs)
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() else None


def _fill_from_report(
    row: dict[str, Any],
    case: Case,
    report: Any,
    instruments: Instruments | None,
    expected_layers: int | None,
) -> None:
    row["errors"] = sum(f.severity.value == "error" for f in report.findings)
    row["warnings"] = sum(f.severity.value == "warning" for f in report.findings)
    row["kinds"] = _finding_kinds(report)
    row["findings"] = [f.describe()[:300] for f in report.findings]
    row["status"] = _verdict(case, report)
    measured = depth_ratio(report.layers, report.config) if depth_ratio else None
    row["ratio"] = measured[0] if measured else None
    row["layers_measured"] = sum(1 for layer in report.layers if layer.output_grad_norm is not None)
    row["layers_expected"] = expected_layers or len(report.layers)
    row["sites_found"] = len(report.activations)
    row["sites_expected"] = len(instruments.spy.sites) if instruments else None
    row["probe_errors"] = list(report.probe_errors)
    row["layers"] = _layer_records(report, instruments)
    row["candidates"] = candidates(row["layers"])
    row["gcu_sites"] = [
        {
            "name": site.name,
            "function": site.function,
            "samples_per_unit": site.samples_per_unit,
            "dead_fraction": site.dead_fraction,
            "saturated_fraction": site.saturated_fraction,
        }
        for site in report.activations
    ]
    row["my_sites"] = (
        {key: stats.summary() for key, stats in instruments.spy.sites.items()}
        if instruments
        else {}
    )


# --- output -------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"


COLUMNS = (
    ("case", 34),
    ("src", 5),
    ("size", 5),
    ("seed", 4),
    ("expect", 22),
    ("E", 2),
    ("W", 2),
    ("ratio", 8),
    ("s", 5),
    ("layers", 9),
    ("acts", 7),
    ("status", 11),
    ("kinds", 0),
)


def format_row(row: dict[str, Any]) -> str:
    cells = {
        "case": row["case"],
        "src": row["source"][:5],
        "size": row["size"],
        "seed": str(row["seed"]),
        "expect": row["expect"][:22],
        "E": str(row.get("errors", "-")),
        "W": str(row.get("warnings", "-")),
        "ratio": _fmt(row.get("ratio")),
        "s": f"{row.get('time_s', 0):.1f}",
        "layers": f"{row.get('layers_measured', '-')}/{row.get('layers_expected', '-')}",
        "acts": f"{row.get('sites_found', '-')}/{row.get('sites_expected') or '-'}",
        "status": row["status"],
        "kinds": row.get("kinds") or row.get("error", ""),
    }
    return " ".join(
        cells[key].ljust(width) if width else cells[key] for key, width in COLUMNS
    ).rstrip()


def header() -> str:
    return " ".join(key.ljust(width) for key, width in COLUMNS).rstrip()


def summary(rows: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """The closing lines and whether every expectation held."""
    gated = [r for r in rows if r.get("gate", True)]
    borderline = [r for r in rows if not r.get("gate", True)]
    healthy = [r for r in gated if r["expect"] == "healthy"]
    sick = [r for r in gated if r["expect"] != "healthy"]
    crashed = [r for r in gated if r["status"] == "crash"]
    false_alarms = [r for r in healthy if r.get("errors")]
    warned = [r for r in healthy if r.get("warnings")]
    missed = [r for r in sick if r["status"] in ("MISSED", "crash")]
    noisy = [r for r in sick if r["status"] == "NOISY"]

    def names(selected: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['case']}/{r['size']}/{r['seed']}" for r in selected) or "-"

    lines = [
        f"runs: {len(rows)} ({len(healthy)} healthy, {len(sick)} sick); models: "
        f"{len({r['case'] for r in healthy})} healthy, {len({r['case'] for r in sick})} sick",
        f"healthy runs with an error (must be 0): {len(false_alarms)}: {names(false_alarms)}",
        f"healthy runs with a warning: {len(warned)}: {names(warned)}",
        f"sick runs not flagged as an error of the expected kind (must be 0): {len(missed)}: "
        f"{names(missed)}",
        f"sick runs with an error of a kind that is only noise there (must be 0): "
        f"{len(noisy)}: {names(noisy)}",
        f"crashes: {len(crashed)}: {names(crashed)}",
        "borderline (not gated): "
        + (
            "; ".join(f"{r['case']}/{r['size']}/{r['seed']} {r.get('kinds')}" for r in borderline)
            or "-"
        ),
    ]
    return lines, not (false_alarms or missed or noisy or crashed)


CANDIDATES = (
    "a_total",
    "b_rms",
    "c_rms_logits",
    "c2_rms_tail",
    "e_total_logits",
    "d_g2w",
    "f_unit_logits",
)


def calibration_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per family: each candidate's range over healthy runs, then each depth-sick run."""
    lines = ["candidate depth metrics (log10 of first-end / last-end):"]
    lines.append("family   group                      " + " ".join(f"{c:>14}" for c in CANDIDATES))
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("candidates"):
            by_family[row["family"]].append(row)
    for family, members in sorted(by_family.items()):
        healthy = [r for r in members if r["expect"] == "healthy" and r.get("gate", True)]
        if healthy:
            cells = []
            for name in CANDIDATES:
                values = [r["candidates"][name] for r in healthy if r["candidates"][name]]
                cells.append(_log_range(values))
            lines.append(
                f"{family:8} {'healthy (' + str(len(healthy)) + ' runs)':26} "
                + " ".join(f"{c:>14}" for c in cells)
            )
        for row in members:
            if row["expect"] in ("vanishing", "exploding"):
                cells = [_log_value(row["candidates"][name]) for name in CANDIDATES]
                label = f"{row['case'][5:]}/{row['size']}"[:26]
                lines.append(f"{family:8} {label:26} " + " ".join(f"{c:>14}" for c in cells))
    lines += separation(rows)
    lines += per_model_table(rows)
    return lines


def per_model_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per healthy model: each candidate's log10 range over its sizes and seeds."""
    ranges: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["expect"] == "healthy" and row.get("candidates"):
            for name in CANDIDATES:
                value = row["candidates"][name]
                if value and value > 0:
                    ranges[row["case"]][name].append(math.log10(value))
    lines = ["per healthy model (log10 range over sizes and seeds):"]
    lines.append(f"  {'case':30}" + "".join(f"{name:>15}" for name in CANDIDATES))
    for case, per in ranges.items():
        cells = [f"[{min(per[n]):+.1f},{max(per[n]):+.1f}]" if per[n] else "-" for n in CANDIDATES]
        lines.append(f"  {case:30}" + "".join(f"{cell:>15}" for cell in cells))
    return lines


def _log_value(value: float | None) -> str:
    return f"{math.log10(value):+.2f}" if value and value > 0 else "-"


def _log_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"[{math.log10(min(values)):+.1f},{math.log10(max(values)):+.1f}]"


def _values(rows: list[dict[str, Any]], name: str, expect: str) -> dict[str, list[float]]:
    """log10 of one candidate per case, over the gated runs that expect ``expect``."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        value = (row.get("candidates") or {}).get(name)
        if row["expect"] == expect and row.get("gate", True) and value and value > 0:
            values[row["case"]].append(math.log10(value))
    return values


def separation(rows: list[dict[str, Any]]) -> list[str]:
    """Margins (decades) between the gated healthy range and each depth-sick case.

    A positive margin: every run of the sick case lies beyond every healthy run.
    """
    lines = ["margins in decades to the gated healthy range (per sick case, worst run):"]
    for name in CANDIDATES:
        healthy = [v for values in _values(rows, name, "healthy").values() for v in values]
        if not healthy:
            continue
        low, high = min(healthy), max(healthy)
        cells = [
            f"{case[5:]} {low - max(values):+.2f}"
            for case, values in _values(rows, name, "vanishing").items()
        ]
        cells += [
            f"{case[5:]} {min(values) - high:+.2f}"
            for case, values in _values(rows, name, "exploding").items()
        ]
        lines.append(f"  {name:15} healthy [{low:+.2f}, {high:+.2f}]  " + "; ".join(cells))
    return lines


def activation_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per healthy model: the largest flat-unit fraction at any site, per function."""
    lines = [
        "healthy models: max fraction of units flat on every sample (own hooks), per function:"
    ]
    worst: dict[str, dict[str, tuple[float, str, int | None]]] = defaultdict(dict)
    for row in rows:
        if row["expect"] != "healthy":
            continue
        for key, site in row.get("my_sites", {}).items():
            value = site["flat_unit_fraction"]
            if value is None:
                continue
            label = f"{row['case']}/{row['size']}/{row['seed']}"
            best = worst[site["function"]].get(row["case"])
            if best is None or value > best[0]:
                worst[site["function"]][row["case"]] = (
                    value,
                    f"{label} {key}",
                    site["samples_per_unit"],
                )
    for function, per_model in sorted(worst.items()):
        top = sorted(per_model.values(), reverse=True)[:3]
        lines.append(
            f"  {function:12} models {len(per_model):3}; highest: "
            + "; ".join(f"{v:.2f} at {where} (n={n})" for v, where, n in top)
        )
    return lines


def _print_tables(rows: list[dict[str, Any]]) -> bool:
    lines, passed = summary(rows)
    print("\n" + "\n".join(lines))
    print("\n" + "\n".join(calibration_table(rows)))
    print("\n" + "\n".join(activation_table(rows)))
    return passed


# --- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="cases whose name contains NAME")
    parser.add_argument("--quick", action="store_true", help="one seed, small size only")
    parser.add_argument("--healthy", action="store_true", help="healthy cases only")
    parser.add_argument("--sick", action="store_true", help="sick cases only")
    parser.add_argument("--json", type=Path, help="write the rows (without per-layer data)")
    parser.add_argument("--calibration", type=Path, help="write every row with per-layer data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--analyze", type=Path, metavar="CALIBRATION", help="print the tables of a saved run"
    )
    args = parser.parse_args()
    if args.analyze:
        rows = json.loads(args.analyze.read_text())
        _print_tables(rows)
        return 0 if summary(rows)[1] else 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    cases = all_cases()
    if args.only:
        cases = [c for c in cases if any(part in c.name for part in args.only)]
    if args.healthy:
        cases = [c for c in cases if c.healthy]
    if args.sick:
        cases = [c for c in cases if not c.healthy]
    seeds = SEEDS[:1] if args.quick else SEEDS
    rows = []
    print(f"torch {torch.__version__}, gradcheckup {gcu.__version__}", flush=True)
    print(header(), flush=True)
    for case in cases:
        sizes = case.sizes
        if args.quick:
            sizes = ("small",) if "small" in sizes else sizes[:1]
        for size in sizes:
            for seed in seeds:
                row = run_case(case, size, seed)
                rows.append(row)
                print(format_row(row), flush=True)
    passed = _print_tables(rows)
    if args.json:
        slim = [
            {k: v for k, v in r.items() if k not in ("layers", "my_sites", "gcu_sites")}
            for r in rows
        ]
        args.json.write_text(json.dumps(slim, indent=1, default=str))
    if args.calibration:
        args.calibration.write_text(json.dumps(rows, default=str))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
