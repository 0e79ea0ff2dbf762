"""Loading saved models safely.

Data-only formats load freely: state_dicts through ``torch.load(weights_only=True)``
(always explicit, never the default or an environment override) and safetensors.
Formats that can run code load only with ``trust=True``: a fully pickled module,
TorchScript (PyTorch's security policy treats it as code) and ``torch.export`` archives
(``torch.export.load`` unpickles members with ``weights_only=False``). A ``.pt2`` loads
without trust only when every pickle inside it passes a static scan: no global outside
the ``weights_only`` allow-list. Before torch 2.10 (known ``weights_only`` bypasses)
every pickle-based file needs trust.

Messages name the file and what is wrong with it, never a command-line flag: a refusal
that trust would lift sets ``LoadError.needs_trust``, a state_dict without a factory
``LoadError.needs_factory``, and the caller says how its users give either.
"""

from __future__ import annotations

import importlib
import io
import pickletools
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "LoadError",
    "LoadedModel",
    "build_module",
    "load_model",
    "load_tensors",
    "resolve_callable",
]

_SAFE_WEIGHTS_ONLY_TORCH = (2, 10)
_PICKLE_CODE_OPCODES = {
    "GLOBAL",
    "STACK_GLOBAL",
    "INST",
    "OBJ",
    "REDUCE",
    "NEWOBJ",
    "NEWOBJ_EX",
    "BUILD",
}


class LoadError(Exception):
    """A user-facing problem with a model file, factory or input: one clear line.

    Attributes:
        needs_trust: the file was refused because it can run code; loading it with
            ``trust=True`` would go ahead.
        needs_factory: the file holds only weights; it needs a factory that builds the
            model they belong to.
    """

    def __init__(
        self, message: str, *, needs_trust: bool = False, needs_factory: bool = False
    ) -> None:
        """Keep the message and what would let the load go ahead."""
        super().__init__(message)
        self.needs_trust = needs_trust
        self.needs_factory = needs_factory


@dataclass
class LoadedModel:
    """A loaded model, the format it came in (as people name it) and notes on its limits."""

    model: nn.Module
    format: str
    notes: list[str] = field(default_factory=list)


def torch_version_tuple(version: str = torch.__version__) -> tuple[int, int]:
    """``"2.9.1+cu121"`` -> ``(2, 9)``."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def pickle_needs_trust(version: str = torch.__version__) -> bool:
    """True on torch versions whose weights_only unpickler has known bypasses."""
    return torch_version_tuple(version) < _SAFE_WEIGHTS_ONLY_TORCH


def resolve_callable(spec: str, option: str) -> Callable[..., Any]:
    """Import ``package.module:attribute`` (the current folder is importable).

    Raises:
        LoadError: a malformed spec, a missing module or attribute, not callable.
    """
    module_name, separator, attribute = spec.partition(":")
    if not separator or not module_name or not attribute:
        raise LoadError(f"{option} {spec!r}: expected 'package.module:callable'")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise LoadError(
            f"{option} {spec!r}: cannot import module {module_name!r} ({error})"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadError(
                f"{option} {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise LoadError(f"{option} {spec!r}: {attribute!r} is not callable")
    return target


def build_module(spec: str, option: str) -> nn.Module:
    """Call the factory ``package.module:callable`` and check that it built a module.

    Args:
        spec: where the factory lives.
        option: how the caller's users name the factory, for messages.

    Raises:
        LoadError: what ``resolve_callable`` raises, or the factory returned no module.
    """
    model = resolve_callable(spec, option)()
    if not isinstance(model, nn.Module):
        raise LoadError(
            f"{option} {spec!r}: returned {type(model).__name__}, expected an nn.Module"
        )
    return model


def _detect_format(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                if name.endswith("archive_format") and archive.read(name).strip() == b"pt2":
                    return "export"
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            return "torchscript"
        if any(name.endswith("data.pkl") for name in names):
            return "torch.save"
        raise LoadError(
            f"{path}: a zip archive that is neither torch.save, TorchScript nor torch.export"
        )
    return "torch.save"  # legacy (non-zip) torch.save files are pickles


def _unsafe_globals(source: Any) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception as error:  # unreadable as a checkpoint: cannot be shown safe
        return [f"<unreadable: {type(error).__name__}>"]


def _is_complete_pickle(data: bytes) -> bool:
    if not data.startswith(b"\x80"):
        return False
    try:
        last = None
        for opcode, _, position in pickletools.genops(io.BytesIO(data)):
            last = (opcode.name, position)
    except Exception:
        return False
    return last is not None and last[0] == "STOP" and last[1] == len(data) - 1


def unsafe_members_of_export(path: Path) -> list[str]:
    """Members of a .pt2 archive that could run code when torch.export.load reads them.

    Nested torch.save files are scanned with torch's own checker; raw pickles may hold
    nothing but plain data.
    """
    problems = []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            if data.startswith(b"PK\x03\x04"):
                unsafe = _unsafe_globals(io.BytesIO(data))
                if unsafe:
                    problems.append(f"{name} ({', '.join(unsafe)})")
            elif _is_complete_pickle(data):
                opcodes = {opcode.name for opcode, _, _ in pickletools.genops(io.BytesIO(data))}
                if opcodes & _PICKLE_CODE_OPCODES:
                    problems.append(f"{name} (a pickle that builds objects)")
    return problems


def _state_dict_from(obj: Any) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
            return obj
    return None


def _build_from_factory(
    factory: str | None, option: str, state_dict: Mapping[str, torch.Tensor], path: Path
) -> nn.Module:
    if factory is None:
        raise LoadError(
            f"{path}: holds a state_dict ({len(state_dict)} tensors)", needs_factory=True
        )
    model = build_module(factory, option)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise LoadError(
            f"{path}: does not fit the model from {option} {factory!r}: {detail}"
        ) from error
    return model


def load_model(
    path: Path, factory: str | None = None, trust: bool = False, factory_option: str = "factory"
) -> LoadedModel:
    """Load a model file, refusing formats that can run code unless ``trust``.

    Args:
        path: the model file.
        factory: ``package.module:callable`` that builds the model a state_dict fits.
        trust: allow formats that can run code (pickled modules, TorchScript, ``.pt2``
            with unsafe members).
        factory_option: how the caller's users name ``factory``, for messages.

    Raises:
        LoadError: a missing or unreadable file, an unknown format, a refusal
            (``needs_trust``), a state_dict without a factory (``needs_factory``) or
            that does not fit it.
    """
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    kind = _detect_format(path)
    if kind == "safetensors":
        return _load_safetensors(path, factory, factory_option)
    if kind == "torchscript":
        if not trust:
            raise LoadError(
                f"{path}: is TorchScript, which PyTorch treats as code", needs_trust=True
            )
        return LoadedModel(
            torch.jit.load(str(path), map_location="cpu"),
            "TorchScript",
            ["TorchScript modules take no Python hooks: parameter statistics only"],
        )
    if kind == "export":
        return _load_export(path, trust)
    return _load_torch_save(path, factory, factory_option, trust)


def _load_safetensors(path: Path, factory: str | None, factory_option: str) -> LoadedModel:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise LoadError(
            "safetensors files need the safetensors package: pip install safetensors"
        ) from error
    try:
        state_dict = load_file(str(path))
    except Exception as error:
        raise LoadError(f"{path}: not a readable safetensors file ({error})") from error
    return LoadedModel(
        _build_from_factory(factory, factory_option, state_dict, path), "safetensors state_dict"
    )


def _load_export(path: Path, trust: bool) -> LoadedModel:
    if not trust:
        if pickle_needs_trust():
            raise _old_torch_refusal(path)
        unsafe = unsafe_members_of_export(path)
        if unsafe:
            raise LoadError(
                f"{path}: torch.export archive with unsafe pickles: {'; '.join(unsafe)}",
                needs_trust=True,
            )
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise LoadError(
            f"{path}: not a loadable torch.export archive ({type(error).__name__}: {error})"
        ) from error
    return LoadedModel(
        program.module(),
        "torch.export program",
        ["exported programs do not call their submodules: parameter statistics only"],
    )


def _old_torch_refusal(path: Path) -> LoadError:
    return LoadError(
        f"{path}: torch {torch.__version__} < 2.10 cannot load pickles safely", needs_trust=True
    )


def _load_torch_save(
    path: Path, factory: str | None, factory_option: str, trust: bool
) -> LoadedModel:
    if pickle_needs_trust() and not trust:
        raise _old_torch_refusal(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:
        if not trust:
            unsafe = _unsafe_globals(str(path))
            found = f" (it references {', '.join(unsafe[:5])})" if unsafe else ""
            raise LoadError(
                f"{path}: is a pickled Python object, not plain tensors{found}", needs_trust=True
            ) from safe_error
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise LoadError(
                f"{path}: cannot be loaded ({type(error).__name__}: {error})"
            ) from error
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, "pickled module")
    state_dict = _state_dict_from(obj)
    if state_dict is None:
        raise LoadError(f"{path}: holds a {type(obj).__name__}, neither a model nor a state_dict")
    return LoadedModel(_build_from_factory(factory, factory_option, state_dict, path), "state_dict")


def load_tensors(path: Path, option: str) -> Any:
    """Tensors saved with torch.save (a tensor, a tuple/list or a dict), loaded safely.

    Raises:
        LoadError: missing file, or anything but plain tensors and containers.
    """
    if not path.is_file():
        raise LoadError(f"{option} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise LoadError(
            f"{option} {path}: not plain tensors saved with torch.save ({type(error).__name__})"
        ) from error
