"""LMGenerator.set_condition_rows: chosen slots take new condition rows (with CFG, conditioned and null
rows both) and, once reset, generate as in a generator built with those rows; the others are untouched."""

from __future__ import annotations

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.conditioners import Condition

from .tiny import HIBIKI_LUT, make_tiny_lm

STEPS = 15


def condition(lm, labels: list[str], null: list[str]) -> Condition:
    return Condition.cat(lm.condition(len(labels), description=labels), lm.condition(len(null), description=null))


def generate(gen, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 24, (STEPS, gen.batch_size, gen.n_in, 1), generator=g)
    return torch.cat([out for out in (gen.step(c) for c in codes) if out is not None], dim=2)


def test_new_rows_then_reset_equal_a_generator_built_with_them():
    lm = make_tiny_lm(HIBIKI_LUT, seed=4)
    old = condition(lm, ["very_good"] * 3, ["very_bad"] * 3)
    new = condition(lm, ["bad"] * 3, ["good"] * 3)
    gen = lm.generator(3, temp=0, temp_text=0, cfg_coef=2.0, condition=old)
    untouched = generate(gen)
    gen.reset(torch.ones(3, dtype=torch.bool))
    gen.set_condition_rows(torch.tensor([False, True, False]), new)
    gen.reset(torch.tensor([False, True, False]))
    built = lm.generator(3, temp=0, temp_text=0, cfg_coef=2.0,
                         condition=condition(lm, ["very_good", "bad", "very_good"], ["very_bad", "good", "very_bad"]))
    got, want = generate(gen), generate(built)
    assert torch.equal(got, want)
    assert torch.equal(got[[0, 2]], untouched[[0, 2]]) and not torch.equal(got[1], untouched[1])


def test_set_condition_rows_checks():
    lm = make_tiny_lm(HIBIKI_LUT, seed=4)
    gen = lm.generator(2, condition=lm.condition(2, description="good"))
    with pytest.raises(InputError, match="rows"):
        gen.set_condition_rows(torch.tensor([True, False]), lm.condition(3, description="bad"))
    plain = make_tiny_lm(seed=4).generator(2)
    with pytest.raises(InputError, match="without a condition"):
        plain.set_condition_rows(torch.tensor([True, False]), torch.zeros(2, 32))
