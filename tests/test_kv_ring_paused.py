"""KVRing with paused slots (`hold`): a paused slot keeps its offset and its columns of the paused steps
are masked; after a pause of k steps, the first step of a piece of T steps sees exactly its past steps
written within the last context + PIECE - 1 - T ring steps (all of its window while k <= PIECE - T)."""

from __future__ import annotations

import pytest
import torch

from antiphon.kv_ring import PIECE, KVRing

CONTEXT, BEFORE = 5, 20


def one_step(ring: KVRing, active: torch.Tensor | None = None) -> None:
    release = ring.hold(active) if active is not None else None
    step = ring.begin(1)
    ring.write(0, step.index, torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))
    ring.end(1)
    if release:
        release()


def visible_past(ring: KVRing, pieces: int, slot: int) -> set[int]:
    """The positions the first step of a piece of `pieces` steps attends to, for `slot`, but its own."""
    step = ring.begin(pieces)
    allowed = step.mask[slot, 0, 0] == 0
    return {int(p) for p in ring.key_positions[slot, step.window][allowed]} - {int(step.positions[slot, 0])}


@pytest.mark.parametrize("pieces", [1, 2, PIECE])
@pytest.mark.parametrize("paused", list(range(0, CONTEXT + PIECE + 2)))
def test_a_paused_slot_sees_its_steps_written_within_the_ring(paused, pieces):
    ring = KVRing(1, 2, 1, 1, CONTEXT, torch.device("cpu"), torch.float32)
    written = {}  # slot 1's position -> the ring step that wrote it
    for t in range(BEFORE):
        written[int(ring.offset[1])] = t
        one_step(ring)
    for _ in range(paused):
        one_step(ring, torch.tensor([True, False]))
    now, position = BEFORE + paused, int(ring.offset[1])
    assert position == BEFORE and int(ring.offset[0]) == now
    want = {p for p, t in written.items() if t >= now - (ring.capacity - pieces) and position - p < CONTEXT}
    got = visible_past(ring, pieces, slot=1)
    assert got == want
    assert len(got) == min(CONTEXT - 1, max(0, CONTEXT + PIECE - 1 - pieces - paused))  # the docstring's count


def test_hold_is_released_and_paused_rows_are_masked():
    ring = KVRing(1, 2, 1, 1, CONTEXT, torch.device("cpu"), torch.float32)
    one_step(ring)
    one_step(ring, torch.tensor([False, True]))
    assert ring.active is None
    assert ring.key_positions[:, 1].tolist() == [-1, 1] and ring.offset.tolist() == [1, 2]
