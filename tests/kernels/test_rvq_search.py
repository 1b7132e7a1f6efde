"""Nearest-centroid search: the Triton kernel (interpreted on CPU) picks the reference's centroids, the
lowest index on ties, and the residual loop over K codebooks gives the codec's codes."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels import dispatch
from antiphon.kernels.rvq_search import rvq_encode, rvq_search_reference, rvq_search_triton


def _distances(residual, codebook):
    return torch.cdist(residual.double(), codebook.double()).pow(2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the codebook's dtype; the search is f32
@pytest.mark.parametrize("n, c, d", [(1, 5, 3), (19, 100, 37), (3, 70, 64)])
def test_rvq_search_picks_the_nearest_centroid(dtype, n, c, d):
    gen = torch.Generator().manual_seed(10)
    codebook = torch.randn(c, d, generator=gen).to(dtype)
    norms = codebook.float().pow(2).sum(-1)
    residual = torch.randn(n, d, generator=gen)
    out = rvq_search_triton(residual, codebook, norms)
    ref = rvq_search_reference(residual, codebook, norms)
    dist = _distances(residual, codebook.float())
    assert out.dtype == torch.int64 and out.shape == (n,)
    assert torch.equal(out, ref)
    assert torch.equal(out, dist.argmin(-1))


def test_rvq_search_ties_go_to_the_lowest_index():
    # small integers: every dot product is exact, so duplicated centroids tie exactly in any summation order
    gen = torch.Generator().manual_seed(16)
    codebook = torch.randint(-3, 4, (100, 16), generator=gen).float()
    codebook[33] = codebook[2]  # a tie inside the first tile of 64 centroids
    codebook[90] = codebook[5]  # a tie across tiles
    norms = codebook.pow(2).sum(-1)
    residual = torch.stack([codebook[2], codebook[5], codebook[90] + 0.25 * torch.randint(-1, 2, (16,), generator=gen)])
    out = rvq_search_triton(residual, codebook, norms)
    assert out.tolist()[:2] == [2, 5]
    assert torch.equal(out, rvq_search_reference(residual, codebook, norms))


def test_rvq_search_update_subtracts_the_centroid():
    gen = torch.Generator().manual_seed(11)
    codebook = torch.randn(50, 20, generator=gen)
    norms = codebook.pow(2).sum(-1)
    residual = torch.randn(17, 20, generator=gen)
    before = residual.clone()
    index = rvq_search_triton(residual, codebook, norms, update=True)
    torch.testing.assert_close(residual, before - codebook[index], rtol=0, atol=1e-6)


def test_rvq_encode_equals_the_codec_loop(monkeypatch):
    gen = torch.Generator().manual_seed(12)
    k, c, d = 3, 70, 24
    codebooks = torch.randn(k, c, d, generator=gen)
    norms = codebooks.pow(2).sum(-1)
    x = torch.randn(21, d, generator=gen) * 2
    # the codec's formula, written out
    residual, expected = x.clone(), []
    for cb, nm in zip(codebooks, norms):
        index = (nm - 2 * residual @ cb.t()).argmin(-1)
        residual = residual - cb[index]
        expected.append(index)
    expected = torch.stack(expected, 1)
    assert torch.equal(rvq_encode(x, codebooks, norms), expected)
    assert torch.equal(rvq_encode(x, codebooks, norms, rvq_search_triton), expected)
    monkeypatch.setenv(dispatch.ENV, "triton")
    assert torch.equal(dispatch.rvq_encode(x, codebooks, norms), expected)
    assert len(set(expected[:, 1].tolist())) > 1
