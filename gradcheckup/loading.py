"""Loading saved models safely.

Data-only formats load without trust: state_dicts through ``torch.load(weights_only=True)``
(always explicit, never the default or an environment override) and safetensors.
Every format that can run code loads only with ``trust=True``: a fully pickled module,
TorchScript (PyTorch's security policy treats it as code) and every ``torch.export``
archive (``.pt2``): ``torch.export.load`` unpickles its members with
``weights_only=False``, and a static scan of those pickles was bypassed three ways, so
none is trusted. Before torch 2.10 (known ``weights_only`` bypasses) every pickle-based
file needs trust.

Before trust is given, nothing from the file runs and nothing is decompressed without a
bound. The format is told from the file name, the zip's central directory (member names
and declared sizes) or a few leading bytes, never by reading whole members. A zip whose
directory declares more than ``MAX_UNPACKED_BYTES`` (1 GiB) unpacked and more than
``MAX_UNPACK_RATIO`` (100) times its size on disk is refused as a possible zip bomb
(torch's reader allocates each member whole); with trust it loads. safetensors files
need no such bound: their header's offsets must fit inside the file.

A file that is no torch file at all (empty, truncated, corrupt, text) is told so; trust
would not help it.

State dicts load into the factory's model as users have them, and ``LoadedModel.notes``
says what was adjusted: keys carrying a wrapper's prefix (``module.`` from
DistributedDataParallel or DataParallel, ``_orig_mod.`` from ``torch.compile``) load
when the plain keys do not fit and the stripped ones do; a key the saver dropped as an
alias of a tied tensor (``safetensors.torch.save_model``) may be missing when the
factory's model ties it to a key that is present. A factory that builds its model on
the meta device gets the loaded tensors assigned.

Messages name the file and what is wrong with it, never a command-line flag: a refusal
that trust would lift sets ``LoadError.needs_trust``, a state_dict without a factory
``LoadError.needs_factory``, and the caller says how its users give either.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MAX_UNPACKED_BYTES",
    "MAX_UNPACK_RATIO",
    "LoadError",
    "LoadedModel",
    "build_module",
    "load_model",
    "load_tensors",
    "refuse_zip_bomb",
    "resolve_callable",
]

_SAFE_WEIGHTS_ONLY_TORCH = (2, 10)
MAX_UNPACKED_BYTES = 1 << 30
"""Unpacked bytes a zip may declare before its ratio to the file size is checked."""
MAX_UNPACK_RATIO = 100
"""How many times its size on disk a zip may declare once over ``MAX_UNPACKED_BYTES``."""
# torch.save's legacy (non-zip) format starts with its magic number, pickled (protocol 2).
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_MARKER_BYTES = 16
_REASON_CHARS = 160
_WRAPPER_NAMES = ("module", "_orig_mod")
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


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
        LoadError: what ``resolve_callable`` raises, the factory raised (its error is
            chained), or it returned no module.
    """
    factory = resolve_callable(spec, option)
    try:
        model = factory()
    except Exception as error:
        raise LoadError(f"{option} {spec!r}: raised {_reason(error)}") from error
    if not isinstance(model, nn.Module):
        raise LoadError(
            f"{option} {spec!r}: returned {type(model).__name__}, expected an nn.Module"
        )
    return model


def _detect_format(path: Path) -> str:
    """The file's format, told from its name, its zip directory or its first bytes.

    Raises:
        LoadError: a file that is no torch file at all, or a zip of another kind.
    """
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        return _zip_format(path)
    with path.open("rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        return "torch.save"
    if not head:
        raise _unreadable(path, "the file is empty")
    if head.startswith(b"PK"):
        raise _unreadable(path, "a truncated or corrupt zip archive")
    raise _unreadable(path, "neither a zip archive nor a torch.save pickle")


def _zip_format(path: Path) -> str:
    """What a zip holds, from its directory and at most a few bytes of one member."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            marked_pt2 = any(_is_export_marker(archive, info) for info in members)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as error:
        raise _unreadable(path, f"a corrupt zip archive: {error}") from error
    names = [info.filename for info in members]
    if marked_pt2 or path.suffix == ".pt2":
        return "export"
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return "torchscript"
    if any(name.endswith("data.pkl") for name in names):
        return "torch.save"
    raise LoadError(
        f"{path}: a zip archive that is neither torch.save, TorchScript nor torch.export"
    )


def _is_export_marker(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """True for the ``archive_format`` member that ``torch.export.save`` fills with ``pt2``."""
    if not info.filename.endswith("archive_format") or info.file_size > _MARKER_BYTES:
        return False
    with archive.open(info) as handle:
        # read(n) inflates at most n bytes, whatever the member claims.
        return handle.read(_MARKER_BYTES).strip() == b"pt2"


def _unreadable(path: Path, why: str) -> LoadError:
    return LoadError(f"{path}: not a readable torch file ({why})")


def _reason(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > _REASON_CHARS:
        first = first[: _REASON_CHARS - 3].rstrip() + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def refuse_zip_bomb(path: Path, subject: str, needs_trust: bool = False) -> None:
    """Refuse a zip whose directory declares far more data than the file holds.

    torch's zip reader allocates each member at its declared size before reading it,
    so a small file of deflated zeros (or a directory that lies) would take gigabytes.
    Only the central directory is read here.

    Args:
        path: the file; anything but a zip passes.
        subject: how the message names the file (e.g. with the option that gave it).
        needs_trust: whether trust would lift the refusal (the caller loads with trust).

    Raises:
        LoadError: more than ``MAX_UNPACKED_BYTES`` declared, and more than
            ``MAX_UNPACK_RATIO`` times the size on disk.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise LoadError(f"{subject}: not a readable torch file ({_reason(error)})") from error
    on_disk = max(path.stat().st_size, 1)
    if declared > MAX_UNPACKED_BYTES and declared > MAX_UNPACK_RATIO * on_disk:
        raise LoadError(
            f"{subject}: its zip directory declares {declared / 2**30:.1f} GiB unpacked from "
            f"{on_disk / 2**20:.1f} MiB on disk (over {MAX_UNPACKED_BYTES / 2**30:g} GiB and "
            f"over {MAX_UNPACK_RATIO}x): "
            "refused as a possible zip bomb",
            needs_trust=needs_trust,
        )


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
) -> tuple[nn.Module, list[str]]:
    """The factory's model with ``state_dict`` loaded, and notes on what was adjusted."""
    if factory is None:
        raise LoadError(
            f"{path}: holds a state_dict ({len(state_dict)} tensors)", needs_factory=True
        )
    model = build_module(factory, option)
    where = f"the model from {option} {factory!r}"
    expected = model.state_dict(keep_vars=True)
    tied = _tied_keys(expected)
    fitted, notes = _fitted_state_dict(expected, tied, state_dict, path, where)
    # A model built on the meta device has no storage to copy into: take the tensors.
    on_meta = any(tensor.is_meta for tensor in expected.values())
    try:
        model.load_state_dict(fitted, strict=False, assign=on_meta)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:3]) or lines[0]
        raise LoadError(f"{path}: does not fit {where}: {detail}") from error
    if on_meta:
        _retie(model, tied, fitted)
    still_meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if still_meta:
        raise LoadError(
            f"{path}: {where} is on the meta device and these tensors got no values from "
            f"the file: {_some(still_meta)}"
        )
    return model, notes


def _fitted_state_dict(
    expected: Mapping[str, torch.Tensor],
    tied: Mapping[str, set[str]],
    state_dict: Mapping[str, torch.Tensor],
    path: Path,
    where: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The keys as saved, or without a wrapper's prefix, whichever fits the model.

    Raises:
        LoadError: no variant fits; names the missing and unexpected keys as saved.
    """
    for candidate, stripped in _key_variants(state_dict):
        missing, unexpected = _misfit(expected, tied, candidate)
        if not missing and not unexpected:
            return candidate, _fit_notes(path, tied, candidate, stripped)
    missing, unexpected = _misfit(expected, tied, state_dict)
    problems = [f"missing keys {_some(missing)}"] if missing else []
    problems += [f"unexpected keys {_some(unexpected)}"] if unexpected else []
    raise LoadError(f"{path}: does not fit {where}: {'; '.join(problems)}")


def _key_variants(
    state_dict: Mapping[str, torch.Tensor],
) -> Iterator[tuple[dict[str, torch.Tensor], str]]:
    """The keys as saved, then without ever more of the wrapper prefixes all keys share.

    Each variant comes with the prefix it removed ('' for the keys as saved). A prefix is
    removed only as a whole run of wrapper names shared by every key, so a model whose
    own submodule is called ``module`` keeps it.
    """
    yield dict(state_dict), ""
    parts = [key.split(".") for key in state_dict]
    depth = 0
    while parts and all(
        len(key) > depth + 1 and key[depth] in _WRAPPER_NAMES and key[depth] == parts[0][depth]
        for key in parts
    ):
        depth += 1
        prefix = ".".join(parts[0][:depth]) + "."
        yield {key[len(prefix) :]: value for key, value in state_dict.items()}, prefix


def _tied_keys(expected: Mapping[str, torch.Tensor]) -> dict[str, set[str]]:
    """For each key of the model, the other keys that name the very same tensor."""
    by_tensor: dict[int, set[str]] = {}
    for name, tensor in expected.items():
        by_tensor.setdefault(id(tensor), set()).add(name)
    return {name: by_tensor[id(tensor)] - {name} for name, tensor in expected.items()}


def _retie(
    model: nn.Module, tied: Mapping[str, set[str]], loaded: Mapping[str, torch.Tensor]
) -> None:
    """Tie again what ``load_state_dict(assign=True)`` untied.

    Assigning gives every loaded key a tensor of its own and leaves a key the file lacked
    untouched (on the meta device). Each key of a tied group is pointed at the tensor of
    the group's first loaded key, as the factory's model had them.
    """
    for name, others in tied.items():
        present = sorted((others | {name}) & loaded.keys())
        if not present or present[0] == name:
            continue
        owner, _, attribute = name.rpartition(".")
        source_owner, _, source_attribute = present[0].rpartition(".")
        tensor = getattr(model.get_submodule(source_owner), source_attribute)
        setattr(model.get_submodule(owner), attribute, tensor)


def _misfit(
    expected: Mapping[str, torch.Tensor],
    tied: Mapping[str, set[str]],
    candidate: Mapping[str, torch.Tensor],
) -> tuple[list[str], list[str]]:
    """Keys the model has and the file lacks (unless tied to one it has), and the reverse."""
    missing = [
        name for name in expected if name not in candidate and not tied[name] & candidate.keys()
    ]
    unexpected = [name for name in candidate if name not in expected]
    return missing, unexpected


def _fit_notes(
    path: Path, tied: Mapping[str, set[str]], candidate: Mapping[str, torch.Tensor], stripped: str
) -> list[str]:
    """What loading ``candidate`` changed about the file's keys, one note each."""
    notes = []
    if stripped:
        notes.append(
            f"{path}: state_dict keys carry the wrapper prefix {stripped!r} "
            "(DistributedDataParallel/DataParallel 'module.', torch.compile '_orig_mod.'); "
            "loaded without it"
        )
    aliases = [
        f"{name} (tied to {sorted(others & candidate.keys())[0]})"
        for name, others in tied.items()
        if name not in candidate
    ]
    if aliases:
        notes.append(
            f"{path}: keys not in the file, filled through the model's tied weights: "
            f"{_some(aliases)}"
        )
    return notes


def _some(names: list[str], shown: int = 5) -> str:
    """``a, b, c (+4 more)``."""
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def load_model(
    path: Path, factory: str | None = None, trust: bool = False, factory_option: str = "factory"
) -> LoadedModel:
    """Load a model file, refusing formats that can run code unless ``trust``.

    Args:
        path: the model file.
        factory: ``package.module:callable`` that builds the model a state_dict fits.
        trust: allow formats that can run code (pickled modules, TorchScript, every
            ``.pt2``) and zips that declare far more data than they hold.
        factory_option: how the caller's users name ``factory``, for messages.

    Raises:
        LoadError: a missing, unreadable or unknown file, a refusal (``needs_trust``),
            a state_dict without a factory (``needs_factory``) or that does not fit it.
    """
    _require_file(path, str(path))
    kind = _detect_format(path)
    if kind == "safetensors":
        return _load_safetensors(path, factory, factory_option)
    if kind == "torchscript":
        return _load_torchscript(path, trust)
    if kind == "export":
        return _load_export(path, trust)
    return _load_torch_save(path, factory, factory_option, trust)


def _require_file(path: Path, subject: str) -> None:
    if path.is_dir():
        raise LoadError(f"{subject}: is a directory, not a file")
    if not path.exists():
        raise LoadError(f"{subject}: no such file")
    if not path.is_file():
        raise LoadError(f"{subject}: not a regular file")


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
    model, notes = _build_from_factory(factory, factory_option, state_dict, path)
    return LoadedModel(model, "safetensors state_dict", notes)


def _load_torchscript(path: Path, trust: bool) -> LoadedModel:
    if not trust:
        raise LoadError(f"{path}: is TorchScript, which PyTorch treats as code", needs_trust=True)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise LoadError(f"{path}: cannot be loaded as TorchScript ({_reason(error)})") from error
    notes = ["TorchScript modules take no Python hooks: parameter statistics only"]
    return LoadedModel(model, "TorchScript", notes)


def _load_export(path: Path, trust: bool) -> LoadedModel:
    if not trust:
        raise LoadError(
            f"{path}: is a torch.export archive (.pt2), which torch.export.load unpickles "
            "without weights_only: it can run code",
            needs_trust=True,
        )
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise LoadError(
            f"{path}: not a loadable torch.export archive ({_reason(error)})"
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
    if trust:
        obj = _trusted_load(path)
    else:
        if pickle_needs_trust():
            raise _old_torch_refusal(path)
        refuse_zip_bomb(path, str(path), needs_trust=True)
        obj = _weights_only_load(path, str(path))
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, "pickled module")
    state_dict = _state_dict_from(obj)
    if state_dict is None:
        raise LoadError(f"{path}: holds a {type(obj).__name__}, neither a model nor a state_dict")
    model, notes = _build_from_factory(factory, factory_option, state_dict, path)
    return LoadedModel(model, "state_dict", notes)


def _weights_only_load(path: Path, subject: str) -> Any:
    """``torch.load(weights_only=True)``; a refused pickle says what it references.

    Raises:
        LoadError: a pickle that references code (``needs_trust``), or a file torch
            cannot read at all.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch wraps every unpickling failure in one long text; the globals it refused
        # are what make the file a pickled Python object rather than a corrupt file.
        refused = _REFUSED_GLOBAL.findall(str(error))
        if refused:
            raise LoadError(
                f"{subject}: is a pickled Python object, not plain tensors "
                f"(it references {', '.join(dict.fromkeys(refused))})",
                needs_trust=True,
            ) from error
        raise LoadError(
            f"{subject}: not a readable torch file ({_unpickler_reason(error)})"
        ) from error
    except Exception as error:
        raise LoadError(f"{subject}: not a readable torch file ({_reason(error)})") from error


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights-only message that says what went wrong."""
    _, found, rest = str(error).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if found else []
    return f"weights-only unpickler: {lines[0]}" if lines else _reason(error)


def _trusted_load(path: Path) -> Any:
    """A weights-only load when it suffices, else a full unpickling (the caller trusts it)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, pickle.UnpicklingError) as error:
        # Which of the two a truncated pickle raises depends on the torch version.
        raise LoadError(f"{path}: not a readable torch file ({_reason(error)})") from error
    except Exception as error:
        raise LoadError(f"{path}: cannot be loaded ({_reason(error)})") from error


def load_tensors(path: Path, option: str) -> Any:
    """Tensors saved with torch.save (a tensor, a tuple/list or a dict), loaded safely.

    Inputs are data: no trust is ever offered for them, so no refusal sets
    ``needs_trust``.

    Raises:
        LoadError: a missing file, a zip bomb, or anything but plain tensors and
            containers; the message starts with ``option`` and the path.
    """
    subject = f"{option} {path}"
    _require_file(path, subject)
    try:
        refuse_zip_bomb(path, subject)
        return _weights_only_load(path, subject)
    except LoadError as error:
        raise LoadError(str(error)) from error
