"""Issue 10, check() side: check() never breaks on models and inputs that train fine without
it, and never reports what it did not measure."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradcheckup as gcu
from gradcheckup._check import raised_by_the_model


def mlp(width: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def plain_grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def layer_norm(grads: dict[str, torch.Tensor | None], prefix: str) -> float:
    parts = [g.flatten() for name, g in grads.items() if name.rsplit(".", 1)[0] == prefix]
    return float(torch.cat(parts).norm())


# ---- reentrant activation checkpointing ----------------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self, stem: bool) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8) if stem else nn.Identity()
        self.block = mlp()
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.block, self.stem(x), use_reentrant=True))


def test_reentrant_checkpoint_is_measured_and_every_grad_is_put_back() -> None:
    torch.manual_seed(0)
    model = Checkpointed(stem=True)
    x = torch.randn(4, 8, requires_grad=True)
    model(x).sum().backward()  # the user's own gradients, to be kept as they are
    model.head.bias.grad = None
    before = {name: p.grad for name, p in model.named_parameters()}
    values = {name: None if g is None else g.clone() for name, g in before.items()}
    x_grad = x.grad

    report = gcu.check(model, x, loss_fn=lambda out: out.square().sum())

    for name, p in model.named_parameters():
        assert p.grad is before[name]
        assert (p.grad is None) == (values[name] is None)
        assert p.grad is None or torch.equal(p.grad, values[name])
    assert x.grad is x_grad
    expected = plain_grads(model, model(x.detach()).square().sum())
    for layer in report.layers:
        assert layer.grad_norm == pytest.approx(layer_norm(expected, layer.name), rel=1e-5)
    assert any("use_reentrant=True" in note for note in report.unavailable)


def test_reentrant_checkpoint_on_plain_input_reports_what_torch_does() -> None:
    # torch warns "None of the inputs have requires_grad=True": the block's parameters get
    # no gradient in the user's own training either, and the report says so.
    model = Checkpointed(stem=False)
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        expected = plain_grads(model, model(x).sum())
        report = gcu.check(model, x)
    assert expected["block.0.weight"] is None
    assert report.layer("head").grad_norm is not None
    # The block ran, but nothing reached it: one error for the two consecutive layers.
    unreached = [(f.where, f.severity, f.value) for f in report.findings_of("no_gradient")]
    assert unreached == [("block.0", "error", 2.0)]


# ---- dtypes ---------------------------------------------------------------------------------
def test_float64_model_norms_are_measured() -> None:
    torch.manual_seed(0)
    model = mlp().double()
    x = torch.randn(4, 8, dtype=torch.float64)
    report = gcu.check(model, x, loss_fn=lambda out: out.sum())
    expected = plain_grads(model, model(x).sum())
    for layer in report.layers:
        assert layer.grad_norm == pytest.approx(layer_norm(expected, layer.name), rel=1e-6)
        assert layer.output_grad_norm is not None


def test_complex_parameters_norm_is_the_norm_of_the_magnitudes() -> None:
    class ComplexLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4, dtype=torch.cfloat))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.to(torch.cfloat) @ self.weight).abs()

    torch.manual_seed(0)
    model = nn.Sequential(ComplexLinear(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    report = gcu.check(model, x, loss_fn=lambda out: out.sum())
    grad = plain_grads(model, model(x).sum())["0.weight"]
    assert report.layer("0").grad_norm == pytest.approx(float(grad.abs().norm()), rel=1e-5)
    assert report.layer("0").weight_norm == pytest.approx(
        float(model[0].weight.detach().abs().norm()), rel=1e-5
    )


# ---- inputs behave like the caller's own tensors -------------------------------------------
def test_inference_mode_inputs_and_a_call_inside_inference_mode() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(24, 2))
    evaluated = mlp()
    with torch.inference_mode():
        ids = torch.randint(0, 10, (4, 3))
        features = torch.randn(4, 8)
        inside = gcu.check(evaluated, features)  # an eval loop calling check()
    assert ids.is_inference()
    assert gcu.check(model, ids).layer("0").grad_norm > 0
    assert gcu.check(mlp(), features).layer("0").grad_norm > 0
    assert inside.layer("0").grad_norm > 0


class FeatureEncoder(nn.Module):
    """Wav2Vec2FeatureEncoder's input handling, as in transformers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.head = nn.Linear(4, 2)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        self.seen.append((input_values.is_leaf, input_values.requires_grad))
        hidden = input_values[:, None]
        if self.training:
            hidden.requires_grad = True
        return self.head(self.conv(hidden).mean(-1))


def test_model_that_sets_requires_grad_on_a_view_of_its_input() -> None:
    model = FeatureEncoder()
    x = torch.randn(2, 16)
    report = gcu.check(model, x)
    assert model.seen == [(True, False)]  # a leaf without requires_grad, like x
    conv = report.layer("conv")
    assert conv.grad_norm > 0 and conv.backward_gain is not None and conv.backward_gain > 0
    assert not x.requires_grad and x.grad is None


class MaskedFeatureEncoder(FeatureEncoder):
    """Wav2Vec2Model with masking on: the outer module owns a parameter itself
    (``masked_spec_embed``), so it is a layer; its input must still reach the encoder's
    code as the caller's plain leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.masked_spec_embed = nn.Parameter(torch.zeros(2))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return super().forward(input_values) + self.masked_spec_embed


def test_a_layer_of_user_code_gets_the_callers_plain_input() -> None:
    model = MaskedFeatureEncoder()
    report = gcu.check(model, torch.randn(2, 16))
    assert model.seen == [(True, False)]
    assert report.layer("conv").backward_gain is not None


def test_the_model_sees_the_callers_leafness_and_requires_grad() -> None:
    seen = []

    class Records(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            seen.append([(t.is_leaf, t.requires_grad, t.is_inference()) for t in (x, scale)])
            return self.fc(x) * scale

    x, scale = torch.randn(4, 3, requires_grad=True), torch.ones(())
    gcu.check(Records(), {"x": x, "scale": scale})
    assert seen == [[(True, True, False), (True, False, False)]]
    assert x.grad is None


def test_in_place_changes_by_the_model_never_reach_the_callers_tensors() -> None:
    class Scales(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, ids: tuple[torch.Tensor, ...]) -> torch.Tensor:
            ids[0].add_(1)
            return self.fc(x.mul_(2.0))

    x, ids = torch.ones(4, 3), (torch.zeros(4, dtype=torch.long),)
    report = gcu.check(Scales(), (x, ids))
    assert torch.equal(x, torch.ones(4, 3)) and torch.equal(ids[0], torch.zeros(4).long())
    # The layer's plain input (a copy of x) still has its gradient measured.
    assert report.layer("fc").backward_gain is not None


# ---- the user's exceptions ------------------------------------------------------------------
def test_the_models_exception_propagates_with_a_note_naming_the_module() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return {"a": self.fc(x)}["missing"]

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    with pytest.raises(KeyError, match="missing") as raised:
        gcu.check(Outer(), torch.randn(2, 4))
    note = (
        "gradcheckup: the model's forward pass failed on (tensor(2, 4) float32) in module "
        "'inner' (Inner), in gcu.check()"
    )
    assert raised.value.__notes__ == [note]
    assert raised_by_the_model(raised.value) and not raised_by_the_model(KeyError("other"))


def test_loss_fn_exception_propagates_with_its_own_type_and_a_note() -> None:
    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise KeyError("label column")

    with pytest.raises(KeyError, match="label column") as raised:
        gcu.check(mlp(), torch.randn(2, 8), target=torch.zeros(2), loss_fn=loss_fn)
    assert not raised_by_the_model(raised.value)  # the loss's, not the model's
    assert raised.value.__notes__ == [
        "gradcheckup: loss_fn raised on the model's output, in gcu.check()"
    ]
    assert raised.value.__context__ is None


def test_problems_gradcheckup_detects_itself_stay_value_errors() -> None:
    with pytest.raises(ValueError, match=r"target: shape \(4, 5\) differs") as raised:
        gcu.check(nn.Linear(2, 3), torch.ones(4, 2), target=torch.ones(4, 5))
    assert not hasattr(raised.value, "__notes__")


# ---- never report what was not measured -----------------------------------------------------
@pytest.mark.parametrize(
    ("inputs", "label"),
    [
        (torch.randn(0, 8), r"inputs\[0\]: tensor of shape \(0, 8\) has no elements"),
        ({"input": torch.randn(0, 8)}, r"inputs\['input'\]: tensor of shape \(0, 8\)"),
        ((torch.randn(2, 0),), r"inputs\[0\]: tensor of shape \(2, 0\)"),
    ],
)
def test_an_input_without_elements_is_a_value_error(inputs: object, label: str) -> None:
    with pytest.raises(ValueError, match=label):
        gcu.check(mlp(), inputs)


@dataclass
class Heads:
    logits: torch.Tensor
    aux_logits: torch.Tensor


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.aux = nn.Linear(8, 3)
        self.unused = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | Heads:
        h = self.body(x)
        heads = Heads(logits=self.head(h), aux_logits=self.aux(h))
        return vars(heads) if self.as_dict else heads


@pytest.mark.parametrize("as_dict", [True, False])
def test_a_head_outside_the_loss_is_info_and_an_unused_layer_a_warning(as_dict: bool) -> None:
    report = gcu.check(TwoHeads(as_dict), torch.randn(4, 8))
    found = {f.where: f for f in report.findings if f.kind == "no_gradient"}
    assert set(found) == {"aux", "unused"}
    assert found["aux"].severity == "info"
    assert "not the loss that was differentiated" in found["aux"].message
    assert found["unused"].severity == "warning"
    # With a loss over both heads, the aux head is measured.
    both = gcu.check(
        TwoHeads(as_dict),
        torch.randn(4, 8),
        loss_fn=lambda out: (
            F.cross_entropy((out["logits"] if as_dict else out.logits), torch.zeros(4).long())
            + (out["aux_logits"] if as_dict else out.aux_logits).sum()
        ),
    )
    assert both.layer("aux").grad_norm > 0
    assert {f.where for f in both.findings if f.kind == "no_gradient"} == {"unused"}


def test_every_gradient_exactly_zero_is_an_error() -> None:
    report = gcu.check(mlp(), torch.randn(4, 8), loss_fn=lambda out: out.sum() * 0.0)
    assert not report.ok
    (finding,) = report.findings_of("vanishing")
    assert "exactly zero" in finding.message


def test_float16_gradients_that_all_underflow_are_an_error() -> None:
    model = mlp().half()
    report = gcu.check(
        model, torch.randn(4, 8).half(), loss_fn=lambda out: out.float().sum() * 1e-30
    )
    assert all(layer.grad_norm == 0 for layer in report.layers)
    assert not report.ok and "underflow" in report.findings_of("vanishing")[0].hint


def test_nan_in_the_input_batch_is_named() -> None:
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    report = gcu.check(mlp(), {"input": x})
    (finding,) = report.findings_of("nonfinite")
    assert finding.where == "inputs['input']"
    assert "The input is not finite: inputs['input'] (1 NaN, 0 inf entries)" in finding.message
    assert "forward pass" not in finding.message


def test_an_additive_minus_inf_mask_is_not_a_finding() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(x) + mask, dim=-1)

    mask = torch.zeros(4)
    mask[-1] = float("-inf")
    report = gcu.check(Masked(), (torch.randn(3, 4), mask))
    assert report.findings_of("nonfinite") == []


def test_a_tiny_hugging_face_wav2vec2_model() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        mask_time_prob=0.0,
    )
    model = transformers.Wav2Vec2Model(config)
    audio = torch.randn(2, 400)
    report = gcu.check(model, audio)
    first = report.layer("feature_extractor.conv_layers.0.conv")
    assert first.grad_norm > 0 and first.backward_gain is not None
    assert all(layer.grad_norm is not None for layer in report.layers)
    assert not audio.requires_grad


def test_a_chained_error_of_loss_fn_is_re_raised_itself() -> None:
    def loss_fn(output: torch.Tensor) -> torch.Tensor:
        try:
            {}["labels"]
        except KeyError as missing:
            raise ValueError("no labels in this batch") from missing

    with pytest.raises(ValueError, match="no labels in this batch") as raised:
        gcu.check(mlp(), torch.randn(2, 8), loss_fn=loss_fn)
    assert isinstance(raised.value.__cause__, KeyError)
    assert raised.value.__notes__ == [
        "gradcheckup: loss_fn raised on the model's output, in gcu.check()"
    ]
