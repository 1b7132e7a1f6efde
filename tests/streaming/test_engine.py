"""The engine's tick, driven by hand: slots, first frame, per-slot reset, admission, the silence rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from antiphon.streaming.engine import Engine
from antiphon.streaming.errors import CLOSE_TRY_AGAIN_LATER, EngineError
from antiphon.streaming.frames import (
    FRAME_SAMPLES,
    EngineFailed,
    InputFrame,
    OutputFrame,
    SlotReady,
)
from antiphon.streaming.scheduler import NoFreeSlot

from tests.streaming.tiny_pair import make_pair


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture
def make_engine(pair):
    engines = []

    def make(slots=2, **sampling):
        sampling.setdefault("rng", torch.Generator().manual_seed(0))
        engine = Engine(*pair, slots, **sampling)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def voice(seed: int, frames: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    t = np.arange(frames * FRAME_SAMPLES) / 24000
    wav = 0.3 * np.sin(2 * np.pi * g.uniform(100, 400) * t) + 0.02 * g.standard_normal(t.size)
    return list(wav.astype(np.float32).reshape(frames, FRAME_SAMPLES))


def outputs(events) -> list[OutputFrame]:
    return [e for e in events if isinstance(e, OutputFrame)]


def test_join_then_frames(make_engine):
    engine = make_engine(slots=2)
    got = []
    assert engine.admit(7, got.append) == 0
    assert got == []  # the slot is reset by the next tick, not now
    engine.tick()
    assert isinstance(got[0], SlotReady) and got[0].slot == 0
    assert outputs(got) == []  # first frame: thrown away, nothing out yet (max_delay = 1)
    for frame in voice(0, 4):
        engine.submit(InputFrame(7, frame))
        engine.tick()
    frames = outputs(got)
    assert [f.step for f in frames] == [0, 1, 2, 3]
    assert all(f.pcm.shape == (FRAME_SAMPLES,) and f.pcm.dtype == np.float32 for f in frames)
    assert all(np.isfinite(f.pcm).all() for f in frames)
    assert any(f.text is not None for f in frames)
    assert engine.frames_in == 4 and engine.frames_out == 4
    assert engine.stats.summary()["count"] == 5


def test_idle_engine_does_no_work(make_engine):
    engine = make_engine()
    assert engine.tick() is False
    assert engine.stats.count == 0


def test_all_slots_taken_is_refused_at_once(make_engine):
    engine = make_engine(slots=1)
    engine.admit(1, lambda e: None)
    with pytest.raises(NoFreeSlot) as info:
        engine.admit(2, lambda e: None)
    assert info.value.code == CLOSE_TRY_AGAIN_LATER
    engine.leave(1)
    assert engine.admit(2, lambda e: None) == 0  # freed at once, reset at the next tick


def run_neighbour(engine, churn: bool) -> list[OutputFrame]:
    """Session 2 in slot 1 talks for 10 ticks; slot 0 is used by 1, and with `churn` 1 leaves and 3 joins."""
    mine, other = [], []
    engine.admit(1, other.append)
    engine.admit(2, mine.append)
    for i, frame in enumerate(voice(1, 10)):
        if churn and i == 3:
            engine.leave(1)
        if churn and i == 5:
            assert engine.admit(3, other.append) == 0
        engine.submit(InputFrame(2, frame))
        engine.submit(InputFrame(1, voice(2, 1)[0]))
        engine.tick()
    return outputs(mine)


def test_join_and_leave_leave_other_slots_bit_identical(make_engine):
    engine = make_engine()
    calm = run_neighbour(engine, churn=False)
    engine.close()  # one codec streams for one engine at a time
    churned = run_neighbour(make_engine(), churn=True)
    assert len(calm) == len(churned) == 9
    for a, b in zip(calm, churned):
        assert a.text == b.text
        np.testing.assert_array_equal(a.pcm, b.pcm)


def test_reused_slot_starts_fresh(make_engine):
    """Greedy: a session in a reused slot gets what it would get in a fresh engine."""
    def talk(engine, session):
        got = []
        engine.admit(session, got.append)
        engine.tick()
        for frame in voice(3, 5):
            engine.submit(InputFrame(session, frame))
            engine.tick()
        return outputs(got)

    used = make_engine(slots=1, temp=0, temp_text=0)
    talk(used, 1)
    used.leave(1)
    again = talk(used, 2)
    used.close()
    fresh = talk(make_engine(slots=1, temp=0, temp_text=0), 1)
    assert [f.text for f in again] == [f.text for f in fresh]
    for a, b in zip(again, fresh):
        np.testing.assert_allclose(a.pcm, b.pcm, atol=1e-6)


def test_silence_when_nothing_arrived_and_backlog_is_bounded(make_engine):
    engine = make_engine(slots=1)
    engine.scheduler.max_backlog = 3
    engine.admit(1, lambda e: None)
    engine.tick()
    engine.tick()
    assert engine.silence_frames == 2
    for frame in voice(0, 5):
        engine.submit(InputFrame(1, frame))
    engine.tick()
    assert engine.scheduler.dropped_frames == 2 and engine.silence_frames == 2


def test_frames_of_a_session_that_left_are_dropped(make_engine):
    engine = make_engine(slots=1)
    engine.admit(1, lambda e: None)
    engine.tick()
    engine.submit(InputFrame(1, voice(0, 1)[0]))
    engine.leave(1)
    got = []
    engine.admit(2, got.append)
    engine.tick()
    assert engine.silence_frames == 2  # 2 heard silence, not the frame 1 sent before leaving
    assert isinstance(got[0], SlotReady)


def test_a_broken_sink_does_not_stop_the_tick(make_engine):
    engine = make_engine(slots=2)

    def broken(event):
        raise RuntimeError("socket gone")

    got = []
    engine.admit(1, broken)
    engine.admit(2, got.append)
    for _ in range(3):
        engine.tick()
    assert len(outputs(got)) == 2
    assert engine.scheduler.live_sessions == 1


def test_engine_failure_is_fatal_and_told(make_engine, monkeypatch):
    engine = make_engine(slots=1)
    got = []
    engine.admit(1, got.append)
    monkeypatch.setattr(engine.task.runner.generator, "step", lambda codes, **_: 1 / 0)
    with pytest.raises(EngineError):
        engine.tick()
    assert isinstance(got[-1], EngineFailed) and "ZeroDivisionError" in got[-1].message
    assert engine.failed
    with pytest.raises(EngineError):
        engine.admit(2, got.append)


def _run_two(engine, sampling, frames) -> list[list[OutputFrame]]:
    got = {1: [], 2: []}
    for session in got:
        engine.admit(session, got[session].append, sampling)
    engine.tick()
    for frame in frames:
        for session in got:
            engine.submit(InputFrame(session, frame))
        engine.tick()
    for session in got:
        engine.leave(session)
    engine.tick()
    return [outputs(got[1]), outputs(got[2])]


def test_per_session_sampling_applies_to_its_slot_only_and_is_reset(make_engine):
    engine = make_engine(slots=2)
    frames = voice(3, 8)
    greedy = {"temp": 0.0, "temp_text": 0.0}
    a, b = _run_two(engine, greedy, frames)  # greedy sessions hearing the same audio say the same thing
    assert [f.text for f in a] == [f.text for f in b]
    assert all(np.array_equal(x.pcm, y.pcm) for x, y in zip(a, b))
    a, b = _run_two(engine, None, frames)  # the next sessions in those slots sample again (engine's temp 0.8)
    assert [f.text for f in a] != [f.text for f in b] or any(not np.array_equal(x.pcm, y.pcm) for x, y in zip(a, b))
    with pytest.raises(Exception, match="unknown sampling"):
        engine.task.configure(0, {"temperature": 1.0})
