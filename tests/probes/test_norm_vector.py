"""norm_vector: stacked norms of many small tensors equal tensor_norm of each, in order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcheckup.probes import _tensors
from gradcheckup.probes._tensors import norm_vector, tensor_norm


def _mixed_tensors() -> list[torch.Tensor]:
    """Groups big enough to stack, interleaved with ones that are not."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    tensors: list[torch.Tensor] = []
    for block in range(9):
        tensors += [
            nn.Parameter(randn(6, 5)),
            randn(5),
            randn(3, 4, dtype=torch.float64),
            randn(7, dtype=torch.float16) * 1e3,  # squares overflow float16
            randn(2, 3, dtype=torch.bfloat16),
            -randn(1).squeeze().abs(),  # 0-d: its norm is its magnitude
        ]
        if block % 3 == 0:
            tensors += [
                randn(11, 13),  # a group too small to stack
                torch.zeros(0, 4),
                torch.complex(randn(4), randn(4)),
                randn(5, 5).to_sparse(),
                randn(8, 8).t(),  # not contiguous
            ]
    return tensors


@pytest.mark.parametrize("precise", [False, True])
def test_each_norm_equals_the_tensors_own_in_order(precise: bool) -> None:
    tensors = _mixed_tensors()

    vector = norm_vector(tensors, precise)

    expected = torch.stack([tensor_norm(t.detach(), precise).double() for t in tensors])
    assert vector.shape == (len(tensors),)
    assert vector.dtype == torch.float64
    torch.testing.assert_close(vector.double(), expected, rtol=1e-6, atol=0.0)
    assert torch.isfinite(vector).all()  # the float16 group is measured in float32


def test_precise_norms_survive_float32_underflow() -> None:
    tiny = [torch.full((4, 4), 1e-30) for _ in range(8)]

    assert norm_vector(tiny).eq(0).all()  # float32 squares underflow
    torch.testing.assert_close(
        norm_vector(tiny, precise=True), torch.full((8,), 4e-30, dtype=torch.float64)
    )


def test_chunks_cover_every_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tensors, "_STACKED_CHUNK_ELEMENTS", 50)  # 2 tensors of 25 a chunk
    tensors = [torch.full((5, 5), float(position)) for position in range(9)]

    vector = norm_vector(tensors)

    torch.testing.assert_close(vector, torch.arange(9.0) * 5)


def test_non_finite_values_stay_in_their_place() -> None:
    tensors = [torch.ones(3, 3) for _ in range(6)]
    tensors[2] = torch.full((3, 3), float("nan"))
    tensors[4] = torch.full((3, 3), float("inf"))

    vector = norm_vector(tensors)

    assert vector.isnan().tolist() == [False, False, True, False, False, False]
    assert vector.isinf().tolist() == [False, False, False, False, True, False]
    assert vector[0].item() == pytest.approx(3.0)


def test_records_no_graph_and_leaves_tensors_alone() -> None:
    weights = [nn.Parameter(torch.randn(4, 4)) for _ in range(6)]
    before = [weight.detach().clone() for weight in weights]

    vector = norm_vector(weights)

    assert not vector.requires_grad
    assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))
    assert all(weight.grad is None for weight in weights)


def test_empty_input_gives_an_empty_vector() -> None:
    assert norm_vector([]).shape == (0,)
