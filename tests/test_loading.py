"""Loading model files: what a refusal carries, without naming any command-line flag."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from gradcheckup import loading
from gradcheckup.loading import (
    MAX_UNPACK_RATIO,
    MAX_UNPACKED_BYTES,
    LoadError,
    build_module,
    load_model,
    load_tensors,
    pickle_needs_trust,
    refuse_zip_bomb,
    resolve_callable,
)
from tests.helpers import importable_module

FACTORIES = """
import torch
from torch import nn

def linear():
    return nn.Linear(3, 2)

def meta_linear():
    with torch.device("meta"):
        return nn.Linear(3, 2)

class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = nn.Linear(3, 2)

def holder():
    return Holder()

class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight

def tied():
    return Tied()

def meta_tied():
    with torch.device("meta"):
        return Tied()

def not_a_model():
    return 42

VALUE = 7
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``loading_factories`` importable from the current folder."""
    return importable_module(tmp_path, monkeypatch, "loading_factories", FACTORIES)


def _no_flag_in(error: LoadError) -> None:
    assert "--" not in str(error)


def test_loading_policy_before_torch_2_10() -> None:
    assert pickle_needs_trust("2.9.1+cu121") and pickle_needs_trust("2.2.0")
    assert not pickle_needs_trust("2.10.0") and not pickle_needs_trust("2.13.0+cpu")


def test_a_state_dict_without_factory_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(LoadError, match=r"holds a state_dict \(2 tensors\)$") as caught:
        load_model(path)
    assert caught.value.needs_factory and not caught.value.needs_trust
    _no_flag_in(caught.value)


def test_code_formats_need_trust(tmp_path: Path) -> None:
    script = tmp_path / "script.pt"
    module = tmp_path / "module.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(script))
    torch.save(nn.Linear(3, 2), module)
    for path, kind in ((script, "TorchScript"), (module, "pickled Python object")):
        with pytest.raises(LoadError, match=kind) as caught:
            load_model(path)
        assert caught.value.needs_trust and not caught.value.needs_factory
        _no_flag_in(caught.value)
    assert isinstance(load_model(module, trust=True).model, nn.Linear)


def test_a_state_dict_loads_into_the_factory_model(tmp_path: Path, factories: str) -> None:
    original = nn.Linear(3, 2)
    path = tmp_path / "weights.pt"
    torch.save(original.state_dict(), path)
    loaded = load_model(path, factory=f"{factories}:linear")
    assert loaded.format == "state_dict"
    assert torch.equal(loaded.model.weight, original.weight)


def test_the_caller_names_its_factory_option(tmp_path: Path, factories: str) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(5, 2).state_dict(), path)
    with pytest.raises(
        LoadError, match="does not fit the model from factory 'loading_factories:linear'"
    ):
        load_model(path, factory=f"{factories}:linear")
    with pytest.raises(LoadError, match="from --make 'loading_factories:linear'"):
        load_model(path, factory=f"{factories}:linear", factory_option="--make")


def test_build_module_checks_what_the_factory_returned(factories: str) -> None:
    assert isinstance(build_module(f"{factories}:linear", "factory"), nn.Linear)
    with pytest.raises(
        LoadError,
        match=r"^factory 'loading_factories:not_a_model': returned int, expected an nn.Module$",
    ):
        build_module(f"{factories}:not_a_model", "factory")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loading_factories", "expected 'package.module:callable'"),
        ("no_such_module:x", "cannot import module 'no_such_module'"),
        ("loading_factories:missing", "has no attribute 'missing'"),
        ("loading_factories:VALUE", "'VALUE' is not callable"),
    ],
)
def test_resolve_callable_errors_name_the_option(factories: str, spec: str, message: str) -> None:
    with pytest.raises(LoadError, match=f"^--opt '{spec}': ") as caught:
        resolve_callable(spec, "--opt")
    assert message in str(caught.value)


def test_load_tensors_is_safe_and_names_the_option(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"a": torch.ones(2)}, path)
    assert torch.equal(load_tensors(path, "inputs")["a"], torch.ones(2))
    with pytest.raises(LoadError, match=r"^inputs .*missing\.pt: no such file"):
        load_tensors(tmp_path / "missing.pt", "inputs")
    torch.save(nn.Linear(1, 1), path)
    with pytest.raises(LoadError, match="not plain tensors"):
        load_tensors(path, "inputs")


# ---- issue 10: what runs before trust, bounded reads, unreadable files --------------------
def _exported(path: Path) -> Path:
    program = torch.export.export(nn.Linear(3, 2), (torch.randn(4, 3),))
    torch.export.save(program, str(path))
    return path


def test_every_pt2_needs_trust_and_nothing_of_it_runs_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _exported(tmp_path / "model.pt2")
    unpickled = []
    monkeypatch.setattr(torch.export, "load", lambda *args, **kwargs: unpickled.append(args))
    for name in ("model.pt2", "renamed.bin"):  # told by its content, not only its name
        (tmp_path / name).write_bytes(path.read_bytes())
        with pytest.raises(LoadError, match=r"torch\.export archive") as caught:
            load_model(tmp_path / name)
        assert caught.value.needs_trust and not unpickled
        _no_flag_in(caught.value)
    monkeypatch.undo()
    loaded = load_model(path, trust=True)
    assert loaded.format == "torch.export program"
    assert loaded.model(torch.ones(4, 3)).shape == (4, 2)


def test_the_scanner_is_gone() -> None:
    for name in ("unsafe_members_of_export", "_is_complete_pickle", "_unsafe_globals"):
        assert not hasattr(loading, name)


def _lying_zip(path: Path, declared: int) -> Path:
    """A torch.save file whose zip directory claims ``declared`` bytes for a storage."""
    buffer = io.BytesIO()
    torch.save(nn.Linear(3, 2).state_dict(), buffer)
    data = bytearray(buffer.getvalue())
    entry = data.find(b"PK\x01\x02")  # central directory entries
    while entry != -1:
        name_length = struct.unpack_from("<H", data, entry + 28)[0]
        if data[entry + 46 : entry + 46 + name_length].endswith(b"data/0"):
            struct.pack_into("<I", data, entry + 24, declared)  # uncompressed size
        entry = data.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert sum(info.file_size for info in archive.infolist()) > declared
    return path


def test_a_zip_directory_that_lies_is_refused_before_torch_reads_it(
    tmp_path: Path, factories: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (MAX_UNPACKED_BYTES, MAX_UNPACK_RATIO) == (2**30, 100)
    path = _lying_zip(tmp_path / "weights.pt", 0xF000_0000)
    read = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: read.append(args))
    with pytest.raises(
        LoadError, match=r"declares 3\.8 GiB unpacked .*over 1 GiB and over 100x"
    ) as caught:
        load_model(path, factory=f"{factories}:linear")
    assert caught.value.needs_trust and not read
    with pytest.raises(LoadError, match=r"^inputs .*weights\.pt: .*possible zip bomb") as caught:
        load_tensors(path, "inputs")
    assert not caught.value.needs_trust and not read


def test_an_honest_zip_passes_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(2**18)}, path)  # 1 MiB, stored: ratio 1
    refuse_zip_bomb(path, "big.pt")
    # Over the ratio, under the size: no bomb either.
    refuse_zip_bomb(_lying_zip(tmp_path / "small.pt", 2**29), "small.pt")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "the file is empty"),
        (b"hello", "neither a zip archive nor a torch.save pickle"),
        (b"PK\x03\x04junk", "a truncated or corrupt zip archive"),
        ("truncated-zip", "a truncated or corrupt zip archive"),
        ("truncated-legacy", "EOFError"),
    ],
)
@pytest.mark.parametrize("trust", [False, True])
def test_unreadable_files_are_told_so_never_to_trust(
    tmp_path: Path, factories: str, content: bytes | str, why: str, trust: bool
) -> None:
    if isinstance(content, str):
        buffer = io.BytesIO()
        torch.save(
            nn.Linear(3, 2).state_dict(),
            buffer,
            _use_new_zipfile_serialization=content == "truncated-zip",
        )
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(LoadError) as caught:
        load_model(path, factory=f"{factories}:linear", trust=trust)
    message = str(caught.value)
    # A truncated legacy pickle raises EOFError or UnpicklingError, by torch version.
    whys = ("EOFError", "UnpicklingError") if why == "EOFError" else (why,)
    assert message.startswith(str(path)) and not caught.value.needs_trust
    assert any(reason in message for reason in whys), message
    assert "not a readable torch file" in message


def test_directories_are_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="is a directory"):
        load_model(tmp_path)
    with pytest.raises(LoadError, match=r"^--input .*: is a directory"):
        load_tensors(tmp_path, "--input")


def test_inputs_are_never_offered_trust(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(1, 1), path)
    with pytest.raises(LoadError, match="not plain tensors") as caught:
        load_tensors(path, "inputs")
    assert not caught.value.needs_trust


# ---- issue 10: saved models as users have them ----------------------------------------------
@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_wrapper_prefixes_are_stripped_and_said(
    tmp_path: Path, factories: str, prefix: str
) -> None:
    original = nn.Linear(3, 2)
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + key: value for key, value in original.state_dict().items()}, path)
    loaded = load_model(path, factory=f"{factories}:linear")
    assert torch.equal(loaded.model.weight, original.weight)
    (note,) = loaded.notes
    assert f"wrapper prefix {prefix!r}" in note and note.startswith(str(path))


def test_a_submodule_called_module_is_not_a_wrapper(tmp_path: Path, factories: str) -> None:
    import loading_factories

    holder = loading_factories.holder()
    path = tmp_path / "holder.pt"
    torch.save(holder.state_dict(), path)  # keys module.weight, module.bias: they fit
    loaded = load_model(path, factory=f"{factories}:holder")
    assert loaded.notes == [] and torch.equal(loaded.model.module.weight, holder.module.weight)
    # Saved from DistributedDataParallel(holder): one 'module.' is the wrapper's.
    torch.save({"module." + key: value for key, value in holder.state_dict().items()}, path)
    loaded = load_model(path, factory=f"{factories}:holder")
    assert "'module.'" in loaded.notes[0]
    assert torch.equal(loaded.model.module.weight, holder.module.weight)


def test_keys_that_fit_neither_way_are_named(tmp_path: Path, factories: str) -> None:
    path = tmp_path / "odd.pt"
    state = nn.Linear(3, 2).state_dict()
    torch.save({"module.weight": state["weight"], "bias": state["bias"]}, path)
    with pytest.raises(
        LoadError, match=r"does not fit .*: missing keys weight; unexpected keys module\.weight$"
    ):
        load_model(path, factory=f"{factories}:linear")


def test_a_tied_alias_dropped_by_save_model_loads(tmp_path: Path, factories: str) -> None:
    import loading_factories
    from safetensors.torch import save_model

    original = loading_factories.tied()
    path = tmp_path / "tied.safetensors"
    save_model(original, str(path))
    loaded = load_model(path, factory=f"{factories}:tied")
    assert loaded.model.head.weight is loaded.model.embed.weight
    assert torch.equal(loaded.model.head.weight, original.embed.weight)
    assert any("head.weight (tied to embed.weight)" in note for note in loaded.notes)
    # Built on the meta device, the tensors are assigned and tied again.
    loaded = load_model(path, factory=f"{factories}:meta_tied")
    assert loaded.model.head.weight is loaded.model.embed.weight
    assert torch.equal(loaded.model.head.weight, original.embed.weight)
    tied_path = tmp_path / "tied.pt"
    torch.save(original.state_dict(), tied_path)  # both keys, one storage
    loaded = load_model(tied_path, factory=f"{factories}:meta_tied")
    assert loaded.model.head.weight is loaded.model.embed.weight


def test_a_meta_factory_gets_the_tensors(tmp_path: Path, factories: str) -> None:
    original = nn.Linear(3, 2)
    path = tmp_path / "weights.pt"
    torch.save(original.state_dict(), path)
    loaded = load_model(path, factory=f"{factories}:meta_linear")
    assert not loaded.model.weight.is_meta and torch.equal(loaded.model.weight, original.weight)
