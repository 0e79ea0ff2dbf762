"""check() and watch() leave the user's model, inputs and RNG exactly as they were."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

import gradcheckup as gcu
from tests.helpers import hook_count
from tests.models import SmallResNet, TinyBert, tiny_bert_inputs


def _dropout_bn_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def test_check_leaves_params_grads_buffers_flags_rng_and_inputs_untouched() -> None:
    model = _dropout_bn_model()
    model.eval()
    model[1].train()  # mixed flags must survive exactly
    x = torch.randn(5, 3, 8, 8)
    # Existing gradients, one of them deliberately None.
    model(x).sum().backward()
    model[5].bias.grad = None
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    grad_objects = {name: p.grad for name, p in model.named_parameters()}
    grad_values = {name: None if g is None else g.clone() for name, g in grad_objects.items()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    flags = {name: m.training for name, m in model.named_modules()}
    target = torch.randint(0, 3, (5,))
    rng = torch.get_rng_state()

    report = gcu.check(model, x, target=target)

    assert report.passes == 1
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name])
        assert p.grad is grad_objects[name]
        if grad_values[name] is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, grad_values[name])
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert not x.requires_grad and x.grad is None
    assert hook_count(model) == 0


def test_check_runs_in_training_mode_by_default_and_eval_if_asked() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    seen = []
    model[1].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    gcu.check(model, torch.randn(6, 4))
    gcu.check(model, torch.randn(6, 4), config=gcu.Config(train_mode=False))
    assert seen == [True, False]
    assert not model.training


def test_input_that_requires_grad_keeps_it_and_gets_no_grad() -> None:
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    gcu.check(model, x)
    assert x.requires_grad and x.grad is None


def test_inplace_op_on_the_input_does_not_break_check() -> None:
    class InplaceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mul_(2.0))

    x = torch.ones(4, 3)
    report = gcu.check(InplaceFirst(), x)
    assert report.layer("fc").grad_norm is not None


def test_hooks_are_removed_when_forward_raises() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x)) @ torch.ones(5, 5)

    model = Broken()
    with pytest.raises(RuntimeError) as raised:
        gcu.check(model, torch.randn(4, 3))
    assert any(
        "forward pass failed on (tensor(4, 3) float32)" in note for note in raised.value.__notes__
    )
    assert hook_count(model) == 0
    # The activation mode was popped: torch functions run unobserved again.
    from torch.overrides import _get_current_function_mode_stack

    assert _get_current_function_mode_stack() == []


def test_hooks_are_removed_when_the_watched_loop_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(KeyError), gcu.watch(model) as monitor:
        model(torch.randn(2, 3)).sum().backward()
        assert hook_count(model) > 0 and monitor.hook_count > 0
        raise KeyError("user's loop failed")
    assert hook_count(model) == 0 and monitor.hook_count == 0
    assert monitor.report().passes == 1


def test_wrong_input_shape_keeps_torchs_error_and_notes_the_inputs() -> None:
    # torch's own error, not a ValueError that blames the inputs: the model raised it.
    with pytest.raises(RuntimeError, match=r"mat1 and mat2") as raised:
        gcu.check(nn.Linear(4, 2), torch.randn(3, 5))
    assert raised.value.__notes__ == [
        "gradcheckup: the model's forward pass failed on (tensor(3, 5) float32) in module "
        "'(model)' (Linear), in gcu.check()"
    ]


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda: gcu.check("not a model", torch.ones(1)),
            TypeError,
            r"model: expected a torch.nn.Module, got str",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 2), [1, 2].__iter__()),
            TypeError,
            r"inputs: expected a tensor",
        ),
        (
            lambda: gcu.check(nn.ReLU(), torch.ones(2)),
            ValueError,
            r"at least one trainable parameter, but it has no parameters",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 2).requires_grad_(False), torch.ones(1, 2)),
            ValueError,
            r"all 2 of its parameters have requires_grad=False",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 2), torch.ones(3, 2), loss_fn=lambda out: out),
            ValueError,
            r"loss_fn: must return a scalar, returned a tensor of shape \(3, 2\)",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 2), torch.ones(3, 2), loss_fn=lambda out: 1.0),
            TypeError,
            r"loss_fn: must return a tensor, returned float",
        ),
        (
            lambda: gcu.check(
                nn.Linear(2, 2), torch.ones(3, 2), loss_fn=lambda out: out.detach().sum()
            ),
            ValueError,
            r"does not depend on any trainable parameter",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 2), torch.ones(3, 2), loss_fn="mse"),
            TypeError,
            r"loss_fn: expected a callable",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 2), torch.ones(3, 2), config={"a": 1}),
            TypeError,
            r"config: expected a gradcheckup.Config",
        ),
        (
            lambda: gcu.check(nn.Linear(2, 3), torch.ones(4, 2), target=torch.ones(4, 5)),
            ValueError,
            r"target: shape \(4, 5\) differs from the output's \(4, 3\)",
        ),
        (
            lambda: gcu.check(nn.LazyLinear(2), torch.ones(4, 2)),
            ValueError,
            r"uninitialised lazy parameter",
        ),
        (lambda: gcu.watch(42), TypeError, r"model: expected a torch.nn.Module, got int"),
        (lambda: gcu.Config(vanishing_ratio=2.0), ValueError, r"vanishing_ratio"),
        (lambda: gcu.Config(dead_relu_fractoin=0.3), ValueError, r"dead_relu_fractoin"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_input_on_another_device_is_named() -> None:
    # A meta input stands in for another device on machines without one. (A model on
    # the meta device is told that it has no values: tests/integration/test_cli_trust.py.)
    with pytest.raises(
        ValueError, match=r"inputs\[0\]: tensor is on meta but the model's parameters are on cpu"
    ):
        gcu.check(nn.Linear(2, 2), torch.ones(3, 2, device="meta"))


def test_inputs_as_tuple_and_dict_and_default_losses() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoInputs()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    by_tuple = gcu.check(model, (x, y))
    by_dict = gcu.check(model, {"x": x, "y": y})
    assert by_tuple.layer("a").grad_norm == pytest.approx(by_dict.layer("a").grad_norm)
    # Default loss with an integer target is cross-entropy, with a float target MSE.
    labels = torch.randint(0, 4, (5,))
    report = gcu.check(model, (x, y), target=labels)
    assert report.loss == pytest.approx(F.cross_entropy(model(x, y), labels).item(), rel=1e-6)
    values = torch.randn(5, 4)
    report = gcu.check(model, (x, y), target=values)
    assert report.loss == pytest.approx(F.mse_loss(model(x, y), values).item(), rel=1e-6)


def test_hugging_face_style_model_uses_its_own_loss() -> None:
    model = TinyBert()
    inputs = tiny_bert_inputs()
    report = gcu.check(model, inputs)
    expected = model(**inputs)["loss"]
    assert report.loss == pytest.approx(expected.item(), rel=1e-5)
    assert report.ok


def test_default_random_projection_is_seeded_and_leaves_global_rng() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    x = torch.randn(8, 4)
    rng = torch.get_rng_state()
    first = gcu.check(model, x)
    second = gcu.check(model, x)
    other_seed = gcu.check(model, x, config=gcu.Config(loss_seed=1))
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.layer("0").grad_norm == second.layer("0").grad_norm
    assert first.layer("0").grad_norm != other_seed.layer("0").grad_norm
    # out.sum() through a final LayerNorm would give exactly zero; the projection does not.
    assert first.layer("0").grad_norm > 0


@pytest.mark.parametrize(
    "make_copy", [copy.deepcopy, AveragedModel], ids=["deepcopy", "AveragedModel"]
)
def test_copies_of_a_watched_model_do_not_feed_the_monitor(make_copy) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with gcu.watch(model) as monitor:
        copied = make_copy(model)
        copied(torch.randn(7, 3)).sum().backward()
    report = monitor.report()
    assert report.passes == 0 and report.activations == []
    assert all(layer.passes == 0 and layer.output_grad_norm is None for layer in report.layers)


def test_a_failing_probe_is_recorded_and_never_breaks_the_users_pass(monkeypatch) -> None:
    from gradcheckup.probes import _ledger

    def broken(*_args, **_kwargs):
        raise RuntimeError("probe bug")

    monkeypatch.setattr(_ledger, "tensor_norm", broken)
    monkeypatch.setattr(_ledger, "_vector_norm", broken)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    x = torch.randn(2, 3)
    with gcu.watch(model) as monitor:
        loss = model(x).sum()
        loss.backward()
    expected = torch.autograd.grad(model(x).sum(), model[0].weight)[0]
    assert torch.allclose(model[0].weight.grad, expected)
    report = monitor.report()
    assert report.probe_errors and "probe bug" in report.probe_errors[0]
    assert any("gradient hook of '0.weight'" in error for error in report.probe_errors)


def test_activation_checkpointing_recomputation_is_not_a_new_pass() -> None:
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(self.block, x, use_reentrant=False))

    model = Checkpointed()
    report = gcu.check(model, torch.randn(6, 4))
    assert report.passes == 1
    assert report.activation("block.0/relu").calls == 1
    assert report.layer("block.0").passes == 1


def test_healthy_resnet_state_is_restored_after_check() -> None:
    model = SmallResNet()
    before = copy.deepcopy(model.state_dict())
    gcu.check(model, torch.randn(4, 3, 16, 16), target=torch.randint(0, 10, (4,)))
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_buffers_registered_as_none_and_buffers_created_in_forward() -> None:
    class CachesInForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.norm = nn.BatchNorm1d(3, track_running_stats=False)  # None buffers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.register_buffer("last_input_mean", x.mean().detach())
            return self.norm(self.fc(x))

    model = CachesInForward()
    gcu.check(model, torch.randn(4, 3))
    assert "last_input_mean" not in dict(model.named_buffers())
    assert "running_mean" in model.norm._buffers and model.norm.running_mean is None
    model(torch.randn(4, 3))  # still works


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_model_gets_parameter_statistics_and_says_what_is_missing() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    report = gcu.check(scripted, torch.randn(8, 4))
    assert [layer.name for layer in report.layers] == ["0", "2"]
    assert all(layer.grad_norm and layer.grad_norm > 0 for layer in report.layers)
    assert all(layer.output_grad_norm is None for layer in report.layers)
    assert any("ScriptModule" in note for note in report.unavailable)
    assert report.probe_errors == []


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_sick_model_is_still_judged_through_its_bias_gradients() -> None:
    from tests.models import sigmoid_mlp

    scripted = torch.jit.script(sigmoid_mlp(depth=12, width=16))
    report = gcu.check(scripted, torch.randn(32, 16))
    (finding,) = report.findings_of("vanishing")
    assert finding.severity == "error" and "bias gradients" in finding.message


def test_dataclass_output_with_logits_and_loss() -> None:
    from dataclasses import dataclass

    @dataclass
    class Output:
        logits: torch.Tensor
        hidden: torch.Tensor
        loss: torch.Tensor | None = None

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(6, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
            hidden = torch.tanh(self.body(x))
            logits = self.head(hidden)
            loss = F.cross_entropy(logits, labels) if labels is not None else None
            return Output(logits=logits, hidden=hidden, loss=loss)

    model = Classifier()
    x, labels = torch.randn(10, 6), torch.randint(0, 3, (10,))
    with_labels = gcu.check(model, {"x": x, "labels": labels})
    assert with_labels.loss == pytest.approx(model(x, labels).loss.item(), rel=1e-6)
    with_target = gcu.check(model, x, target=labels)
    assert with_target.loss == pytest.approx(
        F.cross_entropy(model(x).logits, labels).item(), rel=1e-6
    )
    projected = gcu.check(model, x)  # random projection of the logits only
    assert projected.layer("head").output_grad_norm > 0 and projected.ok


def test_check_calls_a_train_override_and_restores_its_flags() -> None:
    # check() sets the flags itself only where no module class overrides train().
    class FrozenNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.norm = nn.BatchNorm1d(4)

        def train(self, mode: bool = True) -> FrozenNorm:
            super().train(mode)
            self.norm.eval()  # frozen statistics, as fine-tuning code does
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.fc(x))

    model = nn.Sequential(FrozenNorm(), nn.ReLU(), nn.Linear(4, 2)).eval()
    seen = []
    model[0].norm.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    model[2].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    gcu.check(model, torch.randn(6, 4))
    assert seen == [False, True]
    assert not any(module.training for module in model.modules())


def test_check_removes_buffers_that_forward_registers_on_modules_without_any() -> None:
    class Caches(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.register_buffer("seen", x.detach().clone(), persistent=False)
            return x

    model = nn.Sequential(nn.Linear(3, 3), Caches(), nn.Linear(3, 2))
    gcu.check(model, torch.randn(4, 3))
    assert all(not module._buffers for module in model.modules())


def test_check_leaves_no_entry_in_any_hook_dict_also_when_the_model_raises() -> None:
    class OwnRegistration(nn.Linear):
        def register_forward_hook(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return super().register_forward_hook(*args, **kwargs)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = OwnRegistration(3, 3)

        def forward(self, x: torch.Tensor, *, fail: bool = False) -> torch.Tensor:
            if fail:
                raise ValueError("asked to fail")
            return self.fc(x).relu()

    model = nn.Sequential(Scaled(), nn.Linear(3, 2))
    dicts = (
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )

    def entries() -> int:
        return sum(len(getattr(module, name)) for module in model.modules() for name in dicts)

    gcu.check(model, torch.randn(4, 3))
    assert entries() == 0
    with pytest.raises(ValueError, match="asked to fail"):
        gcu.check(model[0], {"x": torch.randn(4, 3), "fail": True})
    assert entries() == 0 and hook_count(model) == 0
    assert all("__getstate__" not in vars(module) for module in model.modules())


def test_check_calls_a_train_method_patched_onto_a_module() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    original = model[1].train
    calls = []

    def frozen_train(mode: bool = True) -> nn.Module:
        calls.append(mode)
        return original(False)  # the norm stays frozen

    model[1].train = frozen_train
    seen = []
    model[1].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    gcu.check(model, torch.randn(6, 4))
    assert calls == [True] and seen == [False]
    assert not any(module.training for module in model.modules())
