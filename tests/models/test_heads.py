"""Tests of ich3d.models.heads: shapes, padding invariance, missing-slice embedding, factory."""

from __future__ import annotations

import pytest
import torch

from ich3d.errors import ConfigError
from ich3d.models.heads import GRUHead, SliceHead, build_head

F = 16


def _heads() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [SliceHead(F, dropout=0.2), GRUHead(F, hidden=8, num_layers=2, dropout=0.1),
            GRUHead(F, hidden=8, num_layers=1, input_norm=False, skip=False)]


def _lengths_mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("head", _heads(), ids=["slice", "gru", "gru-plain"])
def test_shapes_and_padding_invariance(head: torch.nn.Module) -> None:
    head.eval()
    emb = torch.randn(3, 7, F)
    mask = _lengths_mask([7, 4, 1], 7)
    logits = head(emb, mask)
    assert logits.shape == (3, 7, 6) and torch.isfinite(logits).all()
    garbage = emb.clone()
    garbage[~mask] = float("nan")
    padded = torch.cat([garbage, torch.full((3, 5, F), 1e6)], dim=1)  # more padding of garbage
    logits_padded = head(padded, _lengths_mask([7, 4, 1], 12))
    assert torch.isfinite(logits_padded).all()
    torch.testing.assert_close(logits_padded[:, :7][mask], logits[mask])
    alone = head(emb[1:2, :4], torch.ones(1, 4, dtype=torch.bool))  # the same series without a batch
    torch.testing.assert_close(logits[1, :4], alone[0])


@pytest.mark.parametrize("head", _heads()[:2], ids=["slice", "gru"])
def test_unreadable_slices_get_the_missing_embedding(head: torch.nn.Module) -> None:
    head.eval()
    emb = torch.randn(1, 5, F)
    mask = torch.ones(1, 5, dtype=torch.bool)
    readable = mask.clone()
    readable[0, 2] = False
    logits = head(emb, mask, readable)
    other = emb.clone()
    other[0, 2] = float("nan")  # the unreadable slice's own embedding is never used
    torch.testing.assert_close(head(other, mask, readable), logits)
    filled = emb.clone()
    filled[0, 2] = head.missing_embedding.detach()
    torch.testing.assert_close(head(filled, mask), logits)
    assert torch.isfinite(logits[0, 2]).all()


def test_gru_predicts_unreadable_slices_from_context() -> None:
    head = _heads()[1].eval()
    emb = torch.randn(1, 5, F)
    mask = torch.ones(1, 5, dtype=torch.bool)
    readable = torch.tensor([[True, True, False, True, True]])
    changed = emb.clone()
    changed[0, 1] = torch.randn(F)
    assert not torch.allclose(head(emb, mask, readable)[0, 2], head(changed, mask, readable)[0, 2])


def test_missing_embedding_is_trained() -> None:
    head = _heads()[1]
    mask = torch.ones(2, 4, dtype=torch.bool)
    readable = mask.clone()
    readable[1, 0] = False
    head(torch.randn(2, 4, F), mask, readable).sum().backward()
    assert head.missing_embedding.grad.abs().sum() > 0
    head.zero_grad(set_to_none=True)
    head(torch.randn(2, 4, F), mask).sum().backward()  # every parameter gets a gradient (DDP)
    assert all(p.grad is not None for p in head.parameters())


def test_all_padding_row_and_bad_masks() -> None:
    head = _heads()[1].eval()
    mask = _lengths_mask([3, 0], 3)
    assert torch.isfinite(head(torch.randn(2, 3, F), mask)).all()
    with pytest.raises(ValueError, match="suffix"):
        head(torch.randn(1, 3, F), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="bool"):
        head(torch.randn(1, 3, F), torch.ones(1, 3))


def test_build_head() -> None:
    gru = build_head({"name": "gru", "hidden": 8, "num_layers": 1, "dropout": 0.0}, F)
    assert isinstance(gru, GRUHead) and gru.gru.hidden_size == 8
    sliced = build_head({"name": "slice", "hidden": 8, "num_layers": 1, "dropout": 0.1}, F)
    assert isinstance(sliced, SliceHead)
    with pytest.raises(ConfigError, match="known heads: slice, gru"):
        build_head({"name": "lstm"}, F)
    with pytest.raises(ConfigError, match="bad settings"):
        build_head({"name": "gru", "width": 3}, F)


def test_a_residual_head_starts_as_the_slice_model_and_learns_a_correction() -> None:
    """On label logits the untrained head returns its input on every real slice, so the sequence
    stage starts from the slice model; one optimiser step moves it."""
    torch.manual_seed(0)
    head = GRUHead(6, hidden=8, num_layers=1, dropout=0.0, residual=True)
    logits = torch.randn(2, 5, 6) * 4
    mask = _lengths_mask([5, 3], 5)
    torch.testing.assert_close(head(logits, mask)[mask], logits[mask])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(head(logits, mask)[mask],
                                                                torch.ones_like(logits[mask]))
    loss.backward()
    torch.optim.SGD(head.parameters(), lr=1.0).step()
    assert not torch.allclose(head(logits, mask)[mask], logits[mask])
    with pytest.raises(ConfigError, match="label logits"):
        GRUHead(F, residual=True)


@pytest.mark.parametrize("head", [GRUHead(8, hidden=6, num_layers=2, dropout=0.0), GRUHead(6, hidden=4, residual=True),
                                  SliceHead(8)])
def test_whole_series_equals_forward_with_every_slice_real(head: torch.nn.Module) -> None:
    """The exportable path (no packing) gives the packed path's logits on unpadded series."""
    torch.manual_seed(0)
    if isinstance(head, GRUHead) and head.residual:
        torch.nn.init.normal_(head.out.weight)
    head.eval()
    features = head.missing_embedding.shape[0]
    embeddings = torch.randn(3, 9, features)
    readable = torch.rand(3, 9) > 0.2
    with torch.no_grad():
        expected = head(embeddings, torch.ones(3, 9, dtype=torch.bool), readable)
        assert torch.allclose(head.whole_series(embeddings, readable), expected, atol=1e-6)
