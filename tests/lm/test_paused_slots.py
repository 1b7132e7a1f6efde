"""Stepping the generator and the task front-ends with paused slots (`active`): a slot paused at random
steps emits, over its active steps, the frames of the same slot run without pauses, and a paused step
leaves its token cache and offset bit-identical."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.generate import UNGENERATED
from antiphon.lm.tasks import Dialogue, Transcriber, Translator

from .tiny import HIBIKI, MOSHI, STT, make_tiny_lm

BATCH, STEPS = 3, 40
SHORT = {name: dataclasses.replace(c, context=8) for name, c in (("moshi", MOSHI), ("stt", STT), ("hibiki", HIBIKI))}


def pause_patterns(seed: int, window: int = 14, most: int = 6) -> torch.Tensor:
    """bool [calls, B]: slot 0 always active, the others paused at random until each had STEPS active
    steps, at most `most` pauses in any `window` steps, so that their attention window of 8 steps stays
    in the ring (antiphon/kv_ring.py)."""
    rng, columns = random.Random(seed), [[True] * STEPS]
    for _ in range(BATCH - 1):
        active = []
        while active.count(True) < STEPS:
            pause = rng.random() < (0.2 if not active or active[-1] else 0.8)  # runs of pauses
            active.append(not (pause and active[-window + 1:].count(False) < most))
        columns.append(active)
    calls = max(len(c) for c in columns)
    return torch.tensor([c + [True] * (calls - len(c)) for c in columns]).t()


def slot_inputs(config, seed: int = 0) -> torch.Tensor:
    """[B, STEPS, n_q - dep_q, 1]: each slot's own input frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.card, (BATCH, STEPS, config.n_q - config.dep_q, 1), generator=g)


def run(step, inputs: torch.Tensor, pattern: torch.Tensor | None) -> list[list[torch.Tensor]]:
    """Feed each slot its next frame when active (a random frame when paused) -> per slot, its emitted
    frames (rows that are not -2) in order. `step(codes, active)` -> [B, ...] or None."""
    taken, emitted = [0] * BATCH, [[] for _ in range(BATCH)]
    g = torch.Generator().manual_seed(1)
    for active in (pattern if pattern is not None else torch.ones(STEPS, BATCH, dtype=torch.bool)):
        codes = torch.randint(0, 20, inputs[:, 0].shape, generator=g)
        for b in range(BATCH):
            if active[b]:
                codes[b] = inputs[b, min(taken[b], STEPS - 1)]
                taken[b] += 1
        out = step(codes, None if pattern is None else active)
        for b in range(BATCH):
            if out is not None and out[b].flatten()[0] != UNGENERATED:
                emitted[b].append(out[b])
    return emitted


def assert_same_frames(paused: list[list[torch.Tensor]], whole: list[list[torch.Tensor]]) -> None:
    for b in range(BATCH):
        n = min(len(paused[b]), len(whole[b]))
        assert n >= STEPS - 3, (b, n)
        assert all(torch.equal(p, w) for p, w in zip(paused[b][:n], whole[b][:n])), b


@pytest.mark.parametrize("family,cfg", [("moshi", 1.0), ("moshi", 2.0), ("stt", 1.0)])
def test_a_paused_slot_generates_as_if_never_paused(family, cfg):
    config = SHORT[family]
    lm = make_tiny_lm(config, seed=2)
    condition = torch.randn(2 * BATCH, config.dim, generator=torch.Generator().manual_seed(3)) if cfg != 1 else None
    inputs, pattern = slot_inputs(config), pause_patterns(seed=4)
    assert (~pattern).sum(0).tolist()[1:] >= [10, 10]

    def generate(with_pattern):
        gen = lm.generator(BATCH, temp=0, temp_text=0, cfg_coef=cfg, condition=condition)
        return run(lambda codes, active: gen.step(codes, active=active), inputs, with_pattern)
    assert_same_frames(generate(pattern), generate(None))


def test_a_paused_step_leaves_tokens_and_offsets_bit_identical():
    lm = make_tiny_lm(SHORT["moshi"], seed=2)
    gen = lm.generator(BATCH, temp=0.8, temp_text=0.7, rng=torch.Generator().manual_seed(0))
    inputs = slot_inputs(SHORT["moshi"])
    for s in range(6):
        gen.step(inputs[:, s])
    tokens, offsets = gen.tokens.clone(), gen.offsets.clone()
    out = gen.step(inputs[:, 6], active=torch.tensor([True, False, True]))
    assert torch.equal(gen.tokens[1], tokens[1]) and gen.offsets[1] == offsets[1]
    assert not torch.equal(gen.tokens[0], tokens[0]) and torch.equal(gen.offsets[[0, 2]], offsets[[0, 2]] + 1)
    assert (out[1] == UNGENERATED).all() and (out[[0, 2]] != UNGENERATED).all() and gen.last_text[1] == UNGENERATED


def test_active_is_checked():
    lm = make_tiny_lm(SHORT["moshi"])
    gen = lm.generator(2)
    codes = slot_inputs(SHORT["moshi"])[:2, 0]
    for bad in (torch.tensor([1, 0]), torch.tensor([True]), [True, False]):
        with pytest.raises(InputError, match=r"active must be a bool tensor \[B = 2\]"):
            gen.step(codes, active=bad)


# ---------------------------------------------------------------------------------------- tasks
def task_steps(frame) -> torch.Tensor | None:
    """A task frame -> its per-slot outputs stacked [B, ...] (None when the task gives none)."""
    if frame is None:
        return None
    parts = [frame.text[:, None]] + ([frame.audio.flatten(1)] if hasattr(frame, "audio") else [])
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("task,family", [(Dialogue, "moshi"), (Transcriber, "stt"), (Translator, "hibiki")])
def test_tasks_pass_active_through(task, family):
    config = SHORT[family]
    lm = make_tiny_lm(config, seed=5)
    inputs, pattern = slot_inputs(config, seed=6), pause_patterns(seed=7)

    def generate(with_pattern):
        front = task(lm, BATCH, temp=0, temp_text=0)
        return run(lambda codes, active: task_steps(front.step(codes, active=active)), inputs, with_pattern)
    assert_same_frames(generate(pattern), generate(None))


def test_translator_source_end_counts_only_for_active_slots():
    lm = make_tiny_lm(SHORT["hibiki"], seed=5)
    translator = Translator(lm, BATCH)
    translator.step(translator.end_of_input(), active=torch.tensor([True, False, True]))
    assert translator.source_ended.tolist() == [True, False, True]
