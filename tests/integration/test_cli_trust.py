"""Issue 10 (trust) through the command line, in-process through ``main()``: what runs
before trust is given, bounded reads of untrusted zips, one-line errors that name the
flag, and saved models as users have them."""

from __future__ import annotations

import io
import pickle
import resource
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import gradcheckup as gcu
from gradcheckup.cli import main
from tests.helpers import importable_module

FACTORY = """
import torch
from torch import nn

class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight
    def forward(self, ids):
        return self.head(torch.relu(self.body(self.embed(ids))))

class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(16, 4)
    def forward(self, x):
        raise KeyError("needs a 'mask' entry")

def tied():
    return Tied()

def untied():
    model = Tied()
    model.head.weight = nn.Parameter(model.embed.weight.detach().clone())
    return model

def mlp():
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

def meta_mlp():
    with torch.device("meta"):
        return mlp()

def picky():
    return Picky()

def broken_factory():
    raise RuntimeError("no GPU weights here")

def broken_batch():
    return {"inputs": torch.randn(8, 16)}["x"]
"""

SHAPE = ("--input-shape", "8,16")
BOMB_BYTES = 600 * 2**20


class Evil:
    """Unpickling this creates a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    importable_module(tmp_path, monkeypatch, "trust_models", FACTORY)
    return tmp_path


def _models():
    import trust_models

    return trust_models


def _pt2(folder: Path, name: str = "benign.pt2") -> Path:
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    program = torch.export.export(model, (torch.randn(8, 16),))
    path = folder / name
    torch.export.save(program, str(path))
    return path


def _rewrite(
    source: Path,
    target: Path,
    replace: Callable[[str], bytes | None] = lambda name: None,
    bomb_member: str | None = None,
) -> None:
    """Copy a zip, replacing members ``replace`` gives bytes for, optionally adding (or
    replacing by) ``bomb_member``: BOMB_BYTES of zeros, deflated (about 600 KB)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            if info.filename == bomb_member:
                continue
            data = replace(info.filename)
            copy.writestr(info, original.read(info.filename) if data is None else data)
        if bomb_member is not None:
            # Streamed, so that making the bomb does not raise this process's peak memory.
            member = zipfile.ZipInfo(bomb_member)
            member.compress_type = zipfile.ZIP_DEFLATED
            with copy.open(member, "w", force_zip64=True) as handle:
                chunk = bytes(2**20)
                for _ in range(BOMB_BYTES // len(chunk)):
                    handle.write(chunk)
    assert target.stat().st_size < 2 * 2**20


def _one_line_error(captured: pytest.CaptureResult[str], *needles: str) -> str:
    err = captured.err
    # One line of text (a progress bar may leave an empty line before it).
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "internal error" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _peak_rss_growth_mib(action: Callable[[], object]) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    action()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


# ---- 1. security: every .pt2 needs --trust, nothing from it runs -----------------------
def test_every_pt2_needs_trust(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pt2(workdir)
    assert main(["report", "benign.pt2", *SHAPE]) == 2
    _one_line_error(capsys.readouterr(), "benign.pt2", "torch.export", "--trust")
    assert main(["report", "benign.pt2", *SHAPE, "--trust", "--quiet"]) in (0, 1)


@pytest.mark.parametrize("variant", ["legacy", "trailing-byte", "protocol-0", "torch.save"])
def test_malicious_pt2_is_refused_and_runs_nothing(
    workdir: Path, variant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The three ways past the old static scan, and the plain swapped member."""
    marker = workdir / f"pwned_{variant}"

    def payload() -> bytes:
        if variant in ("legacy", "torch.save"):
            buffer = io.BytesIO()
            torch.save(Evil(marker), buffer, _use_new_zipfile_serialization=variant != "legacy")
            return buffer.getvalue()
        if variant == "trailing-byte":
            return pickle.dumps(Evil(marker), protocol=2) + b"\x00"
        return pickle.dumps(Evil(marker), protocol=0)

    swapped = []

    def replace(name: str) -> bytes | None:
        if "sample_inputs" in name and not swapped:
            swapped.append(name)
            return payload()
        return None

    _rewrite(_pt2(workdir), workdir / "evil.pt2", replace)
    assert swapped
    assert main(["report", "evil.pt2", *SHAPE]) == 2
    _one_line_error(capsys.readouterr(), "evil.pt2", "--trust")
    assert not marker.exists()


def test_pt2_zip_bomb_is_refused_without_inflating(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rewrite(_pt2(workdir), workdir / "bomb.pt2", bomb_member="benign/data/bomb")
    codes = []
    grown = _peak_rss_growth_mib(lambda: codes.append(main(["report", "bomb.pt2", *SHAPE])))
    assert codes == [2] and grown < 200
    _one_line_error(capsys.readouterr(), "--trust")


def test_state_dict_zip_bomb_is_refused_without_inflating(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state_dict whose storage member inflates to 600 MB: torch's reader would
    allocate it whole before any check. The bound is lowered below the bomb's size
    (making a bomb over the real 1 GiB takes seconds; test_loading checks that one with a
    zip directory that lies)."""
    from gradcheckup import loading

    monkeypatch.setattr(loading, "MAX_UNPACKED_BYTES", 256 * 2**20)
    torch.save(_models().mlp().state_dict(), workdir / "plain.pt")
    with zipfile.ZipFile(workdir / "plain.pt") as archive:
        storage = next(name for name in archive.namelist() if name.endswith("data/0"))
    _rewrite(workdir / "plain.pt", workdir / "bomb.pt", bomb_member=storage)
    codes = []
    argv = ["report", "bomb.pt", "--factory", "trust_models:mlp", *SHAPE]
    grown = _peak_rss_growth_mib(lambda: codes.append(main(argv)))
    assert codes == [2] and grown < 200
    _one_line_error(capsys.readouterr(), "bomb.pt", "zip bomb", "0.25 GiB", "100x", "--trust")
    # Inputs are bounded the same way; no trust is offered for them.
    argv = ["check", "trust_models:mlp", "--input", "bomb.pt"]
    grown = _peak_rss_growth_mib(lambda: codes.append(main(argv)))
    assert codes[-1] == 2 and grown < 200
    err = _one_line_error(capsys.readouterr(), "--input bomb.pt", "zip bomb")
    assert "--trust" not in err


@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04garbage", b"not a torch file at all", "truncated-zip", "truncated-legacy"],
)
def test_corrupt_pt_is_not_told_to_trust(
    workdir: Path, content: bytes | str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _models().mlp().state_dict()
    if isinstance(content, str):
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=content == "truncated-zip")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    (workdir / "bad.pt").write_bytes(content)
    argv = ["report", "bad.pt", "--factory", "trust_models:mlp", *SHAPE]
    for extra in ([], ["--trust"]):
        assert main([*argv, *extra]) == 2
        err = _one_line_error(capsys.readouterr(), "bad.pt")
        assert "--trust" not in err and ("not a readable torch file" in err or extra), err


# ---- 4. clear errors for bad input ------------------------------------------------------
@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown", "--plot", "--baseline"])
@pytest.mark.parametrize("where", ["under-a-file", "a-directory", "unwritable-folder"])
def test_unwritable_outputs_fail_before_the_work(
    workdir: Path, flag: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if flag == "--plot":
        pytest.importorskip("matplotlib")
    if where == "unwritable-folder" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    (workdir / "a-file").write_text("")
    (workdir / "a-folder").mkdir()
    path = {
        "under-a-file": "a-file/out.x",
        "a-directory": "a-folder",
        # /proc takes no new files, even from root (permission bits would not say so).
        "unwritable-folder": "/proc/gradcheckup-test/out.x",
    }[where]
    extra = ["--update-baseline"] if flag == "--baseline" else []
    code = main(["check", "trust_models:mlp", *SHAPE, flag, path, *extra])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # no report printed, nothing written
    _one_line_error(captured, f"{flag} {path}")
    assert sorted(item.name for item in workdir.iterdir()) == [
        "a-file",
        "a-folder",
        "trust_models.py",
    ]
    assert list((workdir / "a-folder").iterdir()) == []


def test_missing_output_folders_are_still_created(workdir: Path) -> None:
    argv = ["check", "trust_models:mlp", *SHAPE, "--quiet", "--json", "new/deeper/r.json"]
    assert main(argv) == 0
    assert gcu.Report.model_validate_json((workdir / "new/deeper/r.json").read_text())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input-shape", "-2,4"], "--input-shape"),
        (["--input-shape=-2,4"], "--input-shape"),
        (["--input-shape", "0,16"], "--input-shape"),
        (["--input-shape", "100000,100000,100000"], "1,000,000,000,000,000 elements"),
        (["--input-shape", "8,16", "--dtype", "int64", "--int-high", "0"], "--int-high"),
        (["--input-shape", "8,16", "--dtype", "int32", "--int-high", str(2**40)], "--int-high"),
        (["--input-shape", "8,16", "--baseline-factor", "0.5"], "--baseline-factor"),
        (["--input-shape", "8,16", "--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_options_are_one_line(
    workdir: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "trust_models:mlp", *args]) == 2
    _one_line_error(capsys.readouterr(), needle)


def test_inputs_larger_than_memory_are_refused_before_allocating(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gradcheckup.cli import inputs

    monkeypatch.setattr(inputs, "_physical_memory", lambda: 2**20)
    assert main(["check", "trust_models:mlp", "--input-shape", "1024,1024"]) == 2
    _one_line_error(capsys.readouterr(), "--input-shape", "GiB", "memory")


def test_directory_as_model_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "adir").mkdir()
    assert main(["report", "adir", *SHAPE]) == 2
    _one_line_error(capsys.readouterr(), "adir", "is a directory")


def test_meta_model_is_told_it_has_no_values(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "trust_models:meta_mlp", *SHAPE]) == 2
    err = _one_line_error(capsys.readouterr(), "'meta'", "no values")
    assert ".to('meta')" not in err
    with pytest.raises(ValueError, match="'meta' device and have no values") as caught:
        gcu.check(_models().meta_mlp(), torch.randn(8, 16))
    assert ".to('meta')" not in str(caught.value)


def test_meta_factory_takes_the_weights_of_a_state_dict(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(_models().mlp().state_dict(), workdir / "weights.pt")
    for factory in ("mlp", "meta_mlp"):
        argv = ["report", "weights.pt", "--factory", f"trust_models:{factory}", *SHAPE]
        assert main([*argv, "--json", f"{factory}.json", "--quiet"]) == 0, capsys.readouterr()
    meta, plain = (
        gcu.Report.model_validate_json((workdir / f"{name}.json").read_text())
        for name in ("meta_mlp", "mlp")
    )
    assert [layer.grad_norm for layer in meta.layers] == [layer.grad_norm for layer in plain.layers]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('{"layers": {}}', "expected a list of reports"),
        (
            '[{"layers": {}, "findings": [["vanishing", "0", "fatal"]]}]',
            "not [kind, where, severity]",
        ),
        ("[3]", "no 'layers' mapping"),
    ],
)
def test_invalid_baseline_names_the_file_before_the_work(
    workdir: Path, content: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "base.json").write_text(content)
    code = main(["check", "trust_models:mlp", *SHAPE, "--baseline", "base.json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    _one_line_error(captured, "--baseline base.json", problem)


def test_a_directory_as_baseline(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "profiles").mkdir()
    assert main(["check", "trust_models:mlp", *SHAPE, "--baseline", "profiles"]) == 2
    _one_line_error(capsys.readouterr(), "--baseline profiles", "is a directory")


def test_torchscript_forward_error_is_its_last_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(_models().mlp()), str(workdir / "script.pt"))
        assert main(["report", "script.pt", "--trust", "--input-shape", "8,7"]) == 2
    err = _one_line_error(
        capsys.readouterr(),
        "forward pass failed on (tensor(8, 7) float32)",
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    )
    assert "TorchScript interpreter" not in err and "HERE" not in err


@pytest.mark.parametrize("steps", ["1", "2"])
def test_a_model_that_raises_is_one_line(
    workdir: Path, steps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "trust_models:picky", *SHAPE, "--steps", steps]) == 2
    _one_line_error(
        capsys.readouterr(), "forward pass failed on (tensor(8, 16) float32)", "KeyError"
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["trust_models:broken_factory", *SHAPE],
            ("factory 'trust_models:broken_factory'", "RuntimeError: no GPU weights here"),
        ),
        (
            ["trust_models:mlp", "--batch", "trust_models:broken_batch"],
            ("--batch 'trust_models:broken_batch': raised KeyError: 'x'",),
        ),
    ],
)
def test_user_callables_that_raise_are_one_line(
    workdir: Path, args: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", *args]) == 2
    _one_line_error(capsys.readouterr(), *needles)


# ---- 5. saved models as users have them ---------------------------------------------------
@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."]
)
def test_wrapper_prefixed_state_dict_loads(
    workdir: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {prefix + key: value for key, value in _models().mlp().state_dict().items()}
    torch.save(state, workdir / "wrapped.pt")
    argv = ["report", "wrapped.pt", "--factory", "trust_models:mlp", *SHAPE, "--quiet"]
    assert main(argv) == 0
    assert f"wrapper prefix {prefix!r}" in capsys.readouterr().err


def test_safetensors_save_model_of_a_tied_model(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_model

    save_model(_models().tied(), str(workdir / "tied.safetensors"))
    argv = ["report", "tied.safetensors", "--input-shape", "4,6", "--dtype", "int64"]
    argv += ["--int-high", "20", "--quiet"]
    assert main([*argv, "--factory", "trust_models:tied"]) in (0, 1)
    assert "tied to" in capsys.readouterr().err
    # A model that does not tie them still misses the key: not loaded, and said so.
    assert main([*argv, "--factory", "trust_models:untied"]) == 2
    _one_line_error(capsys.readouterr(), "does not fit", "missing keys head.weight")
