"""Temperature + top-k + exponential race: the Triton kernel (interpreted on CPU) picks the same tokens as
the torch reference from the same noise; top-k is respected; temperature 0 is argmax."""

from __future__ import annotations

import pytest
import torch

from antiphon.kernels.sampling import draw_noise, sample_reference, sample_triton


def _logits(b, v, dtype, seed=3):
    return (torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, v, top_k", [(3, 37, 5), (2, 2049, 250), (1, 1, 1), (4, 100, 0), (2, 100, 100)])
def test_sample_equals_reference(dtype, b, v, top_k):
    logits = _logits(b, v, dtype)
    noise = draw_noise(logits, torch.Generator().manual_seed(4))
    out = sample_triton(logits, 0.8, top_k, noise)
    assert out.dtype == torch.int64 and out.shape == (b,)
    assert torch.equal(out, sample_reference(logits, 0.8, top_k, noise))


def test_sample_per_row_temperature_and_top_k():
    logits = _logits(4, 300, torch.float32)
    temps = torch.tensor([0.0, 0.5, 1.0, 2.0])
    ks = torch.tensor([0, 3, 250, 1])
    for seed in range(4):
        noise = draw_noise(logits, torch.Generator().manual_seed(seed))
        out = sample_triton(logits, temps, ks, noise)
        assert torch.equal(out, sample_reference(logits, temps, ks, noise))
        assert out[0] == logits[0].argmax() and out[3] == logits[3].argmax()  # greedy, top-1


def test_sample_greedy_is_argmax():
    logits = _logits(5, 1000, torch.bfloat16)
    noise = draw_noise(logits)
    expected = logits.float().argmax(-1)
    assert torch.equal(sample_triton(logits, 0.0, 250, noise), expected)
    assert torch.equal(sample_reference(logits, 0.0, 250, noise), expected)


def test_sample_respects_top_k_and_ties_go_to_the_kept_set():
    logits = _logits(2, 500, torch.float32)
    top3 = logits.topk(3, dim=-1).indices
    gen = torch.Generator().manual_seed(5)
    seen = set()
    for _ in range(8):
        out = sample_triton(logits, 5.0, 3, draw_noise(logits, gen))  # hot: without top-k, anything goes
        assert all(out[i] in top3[i] for i in range(2))
        seen.add(int(out[0]))
    assert len(seen) > 1  # it samples, it is not argmax
    # ties at the k-th value are all kept, in both implementations
    tied = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    noise = torch.tensor([[1e-3, 1.0, 1.0, 1e-3, 1e-6]])  # favours id 3 (tied with id 2) and id 4 (cut)
    assert sample_triton(tied, 1.0, 2, noise).item() == 3 == sample_reference(tied, 1.0, 2, noise).item()
    signed_zeros = torch.tensor([[1.0, 0.0, -0.0, -1.0]])  # -0.0 ties with 0.0 at the 2nd place: kept
    noise = torch.tensor([[1.0, 1.0, 1e-6, 1e-6]])
    assert sample_triton(signed_zeros, 1.0, 2, noise).item() == 2
    assert sample_reference(signed_zeros, 1.0, 2, noise).item() == 2


def test_sample_equal_scores_go_to_the_lowest_id():
    flat = torch.zeros(2, 2500)  # three tiles of the kernel, every score equal
    ones = torch.ones(2, 2500)
    assert sample_triton(flat, 0.0, 0, ones).tolist() == [0, 0] == sample_reference(flat, 0.0, 0, ones).tolist()
    assert sample_triton(flat, 1.0, 0, ones).tolist() == [0, 0] == sample_reference(flat, 1.0, 0, ones).tolist()


def test_sample_from_a_generator_is_reproducible():
    logits = _logits(3, 64, torch.float32)
    a = sample_triton(logits, 1.0, 10, rng=torch.Generator().manual_seed(6))
    b = sample_reference(logits, 1.0, 10, rng=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("v", [32000, 48000])
def test_sample_text_vocabulary(v):
    logits = _logits(2, v, torch.bfloat16)
    noise = draw_noise(logits, torch.Generator().manual_seed(7))
    for top_k in (25, 250):
        assert torch.equal(sample_triton(logits, 0.7, top_k, noise), sample_reference(logits, 0.7, top_k, noise))
