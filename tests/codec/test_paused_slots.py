"""Streaming the codec with paused slots (`active`): a slot paused at random calls gives, over its active
calls, the codes and audio of the same slot streamed without pauses, and a paused call leaves its whole
streaming state bit-identical."""

from __future__ import annotations

import random

import pytest
import torch

from antiphon.errors import InputError
from antiphon.stateful import stateful_modules

from .tiny import chirp_audio

FRAME = 1920
FRAMES = 16


def pause_pattern(seed: int, window: int = 7, most: int = 2) -> list[bool]:
    """Per call until slot 1 has had FRAMES, whether it is active: paused at random, at most `most` pauses
    in any `window` calls, so that its attention window stays in the ring (antiphon/kv_ring.py; a call
    is 2 transformer steps)."""
    rng, active = random.Random(seed), []
    while active.count(True) < FRAMES:
        paused = rng.random() < 0.4 and active[-window + 1:].count(False) < most
        active.append(not paused)
    return active


def stream_with_pauses(call, inputs: torch.Tensor, pattern: list[bool]) -> torch.Tensor:
    """inputs [2, ..., FRAMES * n] (slot 0 always active, slot 1 active per `pattern`) -> the two slots'
    outputs over their active calls, concatenated on the last axis; slot 1's paused calls get noise."""
    n = inputs.shape[-1] // FRAMES
    taken, outs = [0, 0], [[], []]
    for slot1 in pattern:
        active = torch.tensor([True, slot1])
        chunk = torch.randn_like(inputs[..., :n]) if inputs.is_floating_point() else inputs[..., :n].flip(0)
        for slot in (0, 1):
            if active[slot] and taken[slot] < FRAMES:
                chunk[slot] = inputs[slot, ..., taken[slot] * n:(taken[slot] + 1) * n]
        out = call(chunk, active=active)
        for slot in (0, 1):
            if active[slot] and taken[slot] < FRAMES:
                outs[slot].append(out[slot])
                taken[slot] += 1
    return torch.stack([torch.cat(o, -1) for o in outs])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_paused_slot_streams_as_if_never_paused(tiny_codec, seed):
    """Equal up to float rounding: the paused slot's keys sit in other ring columns than in the unpaused
    run, so its attention sums run in another order (codes may flip at near-ties of the late codebooks)."""
    wav = chirp_audio(2, FRAMES, seed=seed)
    pattern = pause_pattern(seed)
    assert pattern.count(False) >= 3
    chunks = [wav[..., f * FRAME:(f + 1) * FRAME] for f in range(FRAMES)]
    with tiny_codec.streaming(2):  # each stream from a fresh state
        latent = torch.cat([tiny_codec.encode_to_latent(chunk) for chunk in chunks], -1)
        tiny_codec.reset_streaming()
        codes = torch.cat([tiny_codec.encode(chunk) for chunk in chunks], -1)
        audio = torch.cat([tiny_codec.decode(codes[..., f: f + 1]) for f in range(FRAMES)], -1)
        tiny_codec.reset_streaming()
        paused_latent = stream_with_pauses(tiny_codec.encode_to_latent, wav, pattern)
        tiny_codec.reset_streaming()
        paused_codes = stream_with_pauses(tiny_codec.encode, wav, pattern)
        paused_audio = stream_with_pauses(tiny_codec.decode, codes, pattern)
    torch.testing.assert_close(paused_latent, latent, rtol=0, atol=1e-5)
    assert torch.equal(paused_codes[:, 0], codes[:, 0]) and (paused_codes == codes).float().mean() >= 0.97
    torch.testing.assert_close(paused_audio, audio, rtol=0, atol=1e-5)


def test_a_paused_call_keeps_the_state_and_zeroes_the_rows(tiny_codec):
    """Conv states: bit-identical. Rings: same offset, and the paused slot's columns are unchanged but for
    those written by the call, now masked (position -1)."""
    wav = chirp_audio(2, 3, seed=5)
    paused = torch.tensor([True, False])
    with tiny_codec.streaming(2):
        tiny_codec.encode(wav[..., :FRAME])
        tiny_codec.decode(tiny_codec.encode(wav[..., FRAME: 2 * FRAME]))
        modules = stateful_modules(tiny_codec)
        before = [_copy(m.state) for m in modules]
        pointers = [getattr(m.state, "pointer", None) for m in modules]
        latent = tiny_codec.encode_to_latent(wav[..., 2 * FRAME:], active=paused)
        pcm = tiny_codec.decode_latent(latent, active=paused)
        after = [m.state for m in modules]
        for old, new, pointer in zip(before, after, pointers):
            if isinstance(new, dict):
                assert all(torch.equal(old[k][1], new[k][1]) for k in new)
            else:
                _assert_ring_kept_slot(old, new, pointer, slot=1, written=2)
    assert not (latent[1] != 0).any() and not (pcm[1] != 0).any() and (pcm[0] != 0).any()


def _copy(state):
    if isinstance(state, dict):
        return {k: t.clone() for k, t in state.items()}
    return {k: getattr(state, k).clone() for k in ("keys", "values", "key_positions", "offset")}


def _assert_ring_kept_slot(old: dict, ring, pointer: int, slot: int, written: int) -> None:
    columns = [(pointer + i) % ring.capacity for i in range(written)]
    kept = [c for c in range(ring.capacity) if c not in columns]
    assert ring.offset[slot] == old["offset"][slot]
    assert (ring.key_positions[slot, columns] == -1).all()
    assert torch.equal(ring.key_positions[slot, kept], old["key_positions"][slot, kept])
    for name in ("keys", "values"):
        assert torch.equal(getattr(ring, name)[:, slot, :, kept], old[name][:, slot, :, kept])


def test_active_is_checked(tiny_codec):
    wav = chirp_audio(2, 1)
    with pytest.raises(InputError, match="streaming"):
        tiny_codec.encode(wav, active=torch.tensor([True, False]))
    with tiny_codec.streaming(2):
        with pytest.raises(InputError, match=r"bool tensor \[B = 2\]"):
            tiny_codec.encode(wav, active=torch.tensor([1, 0]))
        with pytest.raises(InputError, match=r"bool tensor \[B = 2\]"):
            tiny_codec.decode(tiny_codec.encode(wav), active=torch.tensor([True]))
