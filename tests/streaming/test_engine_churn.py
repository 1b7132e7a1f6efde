"""Churn: 500 sessions join, stream a frame and leave, two slots at a time, with no slot or memory leak
and a neighbour that stays live throughout."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import torch

from antiphon.streaming.engine import Engine
from antiphon.streaming.frames import FRAME_SAMPLES, InputFrame, OutputFrame

from tests.streaming.tiny_pair import make_pair

CYCLES = 500


def test_500_join_leave_cycles_leak_no_slot_and_no_memory():
    engine = Engine(*make_pair(), 3, rng=torch.Generator().manual_seed(0))
    try:
        steps = []  # the neighbour's output steps (only those: keeping its PCM would look like a leak)
        engine.admit(0, lambda event: steps.append(event.step) if isinstance(event, OutputFrame) else None)
        frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)

        def cycle(i: int) -> None:
            session = 1 + i
            assert engine.admit(session, lambda event: None) in (1, 2)
            engine.submit(InputFrame(session, frame))
            engine.submit(InputFrame(0, frame))
            engine.tick()
            engine.leave(session)

        for i in range(20):  # warm up allocator caches before measuring
            cycle(i)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i in range(20, 20 + CYCLES):
            cycle(i)
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        engine.tick()  # applies the last leave
        assert engine.scheduler.free_slots == 2 and engine.scheduler.live_sessions == 1
        assert grown < 500_000, f"python heap grew by {grown} bytes over {CYCLES} cycles"
        assert steps == list(range(len(steps))) and len(steps) >= CYCLES  # never reset, never skipped
    finally:
        engine.close()
