"""Summed multi-stream embedding lookup: the Triton kernel (interpreted on CPU) equals the reference."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels import embedding_sum
from antiphon.kernels.embedding_sum import embedding_sum_reference, embedding_sum_triton, stack_tables

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _tokens(b, t, sizes, gen):
    """[B, S, T] with ids -1 (the zero vector) .. size - 1 per stream."""
    return torch.stack([torch.randint(-1, n, (b, t), generator=gen) for n in sizes], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, t, d", [(3, 1, 24), (2, 5, 37), (1, 2, 1)])
def test_embedding_sum_equals_reference_for_tables_of_several_sizes(dtype, b, t, d):
    gen = torch.Generator().manual_seed(8)
    sizes = [41, 9, 9, 9]  # a text table and three audio tables
    tables = [torch.randn(n, d, generator=gen).to(dtype) for n in sizes]
    table, offsets = stack_tables(tables)
    tokens = _tokens(b, t, sizes, gen)
    out = embedding_sum_triton(tokens, table, offsets)
    assert out.shape == (b, t, d) and out.dtype == dtype
    torch.testing.assert_close(out, embedding_sum_reference(tokens, table, offsets), **TOL[dtype])
    # the reference against a plain loop over the streams
    expected = sum(torch.where(tokens[:, s, :, None] >= 0, tables[s].float()[tokens[:, s].clamp(min=0)], 0.0)
                   for s in range(len(sizes)))
    torch.testing.assert_close(embedding_sum_reference(tokens, table, offsets).float(), expected, **TOL[dtype])


def test_embedding_sum_stacked_tables_strided_tokens_and_zero_tokens(monkeypatch):
    monkeypatch.setattr(embedding_sum, "BLOCK_D", 16)  # D = 40 -> 3 blocks
    gen = torch.Generator().manual_seed(9)
    stacked = torch.randn(3, 6, 40, generator=gen)  # [S, V + 1, D]
    table, offsets = stack_tables(stacked)
    tokens = torch.randint(0, 6, (2, 4, 3), generator=gen).transpose(1, 2)  # [B, S=3, T=4], strided
    tokens[0, :, 1] = -1  # every stream zero at (0, 1)
    out = embedding_sum_triton(tokens, table, offsets)
    torch.testing.assert_close(out, embedding_sum_reference(tokens, table, offsets), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[0, 1], torch.zeros(40))
    torch.testing.assert_close(out[1, 2], stacked[torch.arange(3), tokens[1, :, 2]].sum(0))


def test_embedding_sum_rejects_bad_offsets():
    with pytest.raises(ValueError, match="offsets"):
        tokens, offsets = torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
        embedding_sum_triton(tokens, torch.randn(5, 4), offsets)
