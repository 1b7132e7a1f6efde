"""Per-slot sampling: `sample` with per-row temperature and top-k follows each row's own parameters, and
`LMGenerator.set_sampling` gives chosen slots their own values (kept across reset), greedy where asked."""

from __future__ import annotations

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.sampling import sample

from .tiny import MOSHI, make_tiny_lm


def test_per_row_parameters_follow_each_rows_own_law():
    g = torch.Generator().manual_seed(0)
    peaked = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    params = [(0.7, 0), (1.0, 3), (0.0, 0), (1.3, 1), (0.9, 9)]  # (temp, top_k) per row
    rows = 20000
    logits = peaked.repeat(rows, len(params), 1)  # [rows, P, 5]
    temp = torch.tensor([t for t, _ in params]).expand(rows, -1)
    top_k = torch.tensor([k for _, k in params]).expand(rows, -1)
    ids = sample(logits, temp, top_k, rng=g)  # [rows, P]
    for p, (t, k) in enumerate(params):
        alone = sample(logits[:, p], t, k, rng=g)  # the same row sampled with scalar parameters
        want = torch.bincount(alone, minlength=5).float() / rows
        freq = torch.bincount(ids[:, p], minlength=5).float() / rows
        torch.testing.assert_close(freq, want, atol=0.015, rtol=0)
        if t <= 0 or k == 1:
            assert torch.equal(ids[:, p], logits[:, p].argmax(-1))


def test_random_rows_greedy_and_top_k_one_rows_are_the_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 30, generator=g)
    temp = torch.where(torch.arange(64) % 3 == 0, 0.0, 0.8)
    top_k = torch.where(torch.arange(64) % 3 == 1, 1, 5)
    ids = sample(logits, temp, top_k, rng=g)
    argmax = logits.argmax(-1)
    assert torch.equal(ids[temp <= 0], argmax[temp <= 0])
    assert torch.equal(ids[top_k == 1], argmax[top_k == 1])
    assert (logits.topk(5).indices == ids[:, None]).any(-1).all()


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(MOSHI, seed=1)


def generate(gen, steps: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, MOSHI.card, (steps, gen.batch_size, MOSHI.n_q - MOSHI.dep_q, 1), generator=g)
    return torch.cat([out for out in (gen.step(c) for c in codes) if out is not None], dim=2)


def test_set_sampling_makes_chosen_slots_greedy_and_keeps_across_reset(lm):
    greedy = generate(lm.generator(3, temp=0, temp_text=0))
    gen = lm.generator(3, rng=torch.Generator().manual_seed(3))
    gen.set_sampling(torch.tensor([False, True, False]), temp=0.0, temp_text=0.0)
    gen.set_sampling(torch.tensor([False, False, True]), top_k=1, top_k_text=1)
    assert isinstance(gen.temp, torch.Tensor) and gen.temp.tolist() == pytest.approx([0.8, 0.0, 0.8])
    mixed = generate(gen)
    assert torch.equal(mixed[1:], greedy[1:]) and not torch.equal(mixed[0], greedy[0])
    gen.reset(torch.ones(3, dtype=torch.bool))
    assert torch.equal(generate(gen)[1:], greedy[1:])


def test_all_slots_alike_go_back_to_the_scalar_path(lm):
    gen = lm.generator(2, temp=0.8)
    gen.set_sampling(torch.tensor([True, False]), temp=0.5, top_k=7)
    assert isinstance(gen.temp, torch.Tensor) and isinstance(gen.top_k, torch.Tensor)
    gen.set_sampling(torch.tensor([False, True]), temp=0.5, top_k=7)
    assert (gen.temp, gen.top_k, gen.temp_text) == (0.5, 7, 0.7)


def test_set_sampling_checks(lm):
    gen = lm.generator(2)
    with pytest.raises(InputError, match=r"set_sampling mask must be a bool tensor \[B = 2\]"):
        gen.set_sampling(torch.tensor([1, 0]), temp=0.5)
    with pytest.raises(InputError, match="top_k must be an int >= 0"):
        gen.set_sampling(torch.tensor([True, False]), top_k=-1)
    with pytest.raises(InputError, match="temp_text must be a number"):
        gen.set_sampling(torch.tensor([True, False]), temp_text="hot")
