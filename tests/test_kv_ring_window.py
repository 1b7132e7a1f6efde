"""KVRing's live window: attention reads only the columns written since the oldest slot's reset; every
column left out is masked for every slot, so the result is the same as over the whole ring."""

from __future__ import annotations

import random

import torch

from antiphon.kv_ring import PIECE, KVRing

CONTEXT, SLOTS = 6, 3


def _allowed_over_whole_ring(ring: KVRing, positions: torch.Tensor) -> torch.Tensor:
    """[B, T, R]: what the mask over the whole ring would allow."""
    keys = ring.key_positions
    delta = positions[:, :, None] - keys[:, None, :]
    return (keys[:, None, :] >= 0) & (delta >= 0) & (delta < ring.context)


def test_columns_outside_the_window_are_masked_for_every_slot():
    rng = random.Random(0)
    ring = KVRing(1, SLOTS, 1, 1, CONTEXT, torch.device("cpu"), torch.float32)
    widths = []
    for _ in range(400):
        if rng.random() < 0.1:
            ring.reset(torch.tensor([rng.random() < 0.5 for _ in range(SLOTS)]))
        active = torch.tensor([rng.random() < 0.8 for _ in range(SLOTS)]) if rng.random() < 0.3 else None
        release = ring.hold(active) if active is not None else None
        steps = rng.randint(1, PIECE)
        step = ring.begin(steps)
        allowed = _allowed_over_whole_ring(ring, step.positions)
        outside = torch.ones(ring.capacity, dtype=torch.bool)
        outside[step.window] = False
        assert not allowed[:, :, outside].any()
        assert torch.equal(step.mask[:, 0] == 0, allowed[:, :, step.window])
        keys, _ = ring.write(0, step.index, torch.zeros(SLOTS, 1, steps, 1), torch.zeros(SLOTS, 1, steps, 1))
        assert keys.shape[2] == step.window.stop - step.window.start
        widths.append(keys.shape[2])
        ring.end(steps)
        if release:
            release()
    assert min(widths) < ring.capacity and max(widths) == ring.capacity  # it saves, and wraps to the whole ring


def test_a_young_ring_reads_only_its_written_columns():
    ring = KVRing(2, SLOTS, 1, 4, 3000, torch.device("cpu"), torch.float32)
    for t in range(5):
        step = ring.begin(1)
        assert step.window == slice(0, t + 1) and step.mask.shape == (SLOTS, 1, 1, t + 1)
        ring.end(1)
    ring.reset(torch.ones(SLOTS, dtype=torch.bool))  # every slot restarts: only the new columns are read
    step = ring.begin(2)
    assert step.window == slice(5, 7)


def test_without_live_window_the_whole_ring_is_read():
    ring = KVRing(1, SLOTS, 1, 1, CONTEXT, torch.device("cpu"), torch.float32, live_window=False)
    assert ring.begin(1).window == slice(0, ring.capacity)
