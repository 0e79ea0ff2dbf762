"""``add_gradient_hook``: what ``Tensor.register_hook`` does, without a handle."""

from __future__ import annotations

import torch

from gradcheckup.probes._hooks import add_gradient_hook


def _recorder(seen: list[torch.Tensor], label: str, log: list[str]):  # type: ignore[no-untyped-def]
    def hook(grad: torch.Tensor) -> None:
        seen.append(grad.clone())
        log.append(label)

    return hook


def test_the_hook_sees_the_gradient_register_hook_sees() -> None:
    weight = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    ours, torchs, log = [], [], []
    y = x @ weight
    add_gradient_hook(y, _recorder(ours, "ours", log))
    (y.tanh() * 3).sum().backward()
    y_again = x @ weight
    y_again.register_hook(_recorder(torchs, "torch", log))
    (y_again.tanh() * 3).sum().backward()
    assert len(ours) == len(torchs) == 1
    assert torch.equal(ours[0], torchs[0])
    assert not torch.equal(ours[0], torch.zeros_like(ours[0]))


def test_hooks_of_the_user_before_and_after_ours_all_run_in_order() -> None:
    weight = torch.randn(3, 3, requires_grad=True)
    seen: list[torch.Tensor] = []
    log: list[str] = []
    y = torch.randn(2, 3) @ weight
    add_gradient_hook(y, _recorder(seen, "ours", log))
    y.register_hook(_recorder(seen, "user after", log))
    z = torch.randn(2, 3) @ weight
    z.register_hook(_recorder(seen, "user before", log))
    add_gradient_hook(z, _recorder(seen, "ours on z", log))  # already hooked: torch's way
    (y.sum() + 2 * z.sum()).backward()
    assert sorted(log) == ["ours", "ours on z", "user after", "user before"]
    assert log.index("user before") < log.index("ours on z")
    assert log.index("ours") < log.index("user after")


def test_a_hook_before_an_in_place_change_sees_the_gradient_before_it() -> None:
    weight = torch.randn(3, 3, requires_grad=True)
    seen: list[torch.Tensor] = []
    y = torch.randn(4, 3) @ weight
    add_gradient_hook(y, _recorder(seen, "ours", []))
    y.relu_()  # nn.ReLU(inplace=True) after a layer
    y.sum().backward()
    (grad,) = seen
    assert torch.equal(grad, (y > 0).to(grad.dtype))  # dL/d(pre-activation)


def test_leaves_and_subclasses_go_through_register_hook() -> None:
    leaf = torch.randn(3, requires_grad=True)
    seen: list[torch.Tensor] = []
    add_gradient_hook(leaf, _recorder(seen, "leaf", []))
    (leaf * 2).sum().backward()
    assert torch.equal(seen[0], torch.full((3,), 2.0))
    parameter = torch.nn.Parameter(torch.randn(2))
    add_gradient_hook(parameter, _recorder(seen, "parameter", []))
    (parameter**2).sum().backward()
    assert torch.allclose(seen[1], 2 * parameter.detach())
