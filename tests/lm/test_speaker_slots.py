"""The Speaker's per-slot controls: a slot paused while it waits for words (`step(active)`) speaks as if
its words had all been there, and `set_voice` + reset gives a slot the output of a Speaker built with
that voice."""

from __future__ import annotations

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm.tasks import Speaker

from .tiny import SPEAKER_DIM, TTS_CROSS, make_tiny_lm

STEPS = 40


class LetterTokenizer:
    def encode(self, word):
        return [4 + (ord(c) % 30) for c in word]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm(TTS_CROSS, seed=3)


def voices(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, SPEAKER_DIM, 4, generator=g) for _ in range(n)]


def speaker(lm, voice) -> Speaker:
    return Speaker(lm, 2, voice=voice, tokenizer=LetterTokenizer(), temp=0, temp_text=0)


def spoken(frames, slot: int) -> tuple[list[torch.Tensor], list[tuple[str, float, float]]]:
    """A slot's ready audio frames and its words (text, start, stop), in order."""
    audio = [f.audio[slot] for f in frames if f.ready[slot]]
    return audio, [(w.text, w.start, w.stop) for f in frames for w in f.words if w.slot == slot]


def test_a_slot_paused_while_waiting_speaks_as_if_its_words_were_there(lm):
    words = ["one", "two", "three", "four", "five"]
    whole = speaker(lm, voices(1)[0])
    whole.push(0, "hello there you")
    whole.end(0)
    whole.push(1, " ".join(words))
    whole.end(1)
    expected = [whole.step() for _ in range(STEPS)]

    paused = speaker(lm, voices(1)[0])
    paused.push(0, "hello there you")
    paused.end(0)
    frames, queue = [], list(words)
    for step in range(STEPS + 20):
        if step % 6 == 0 and queue:  # a word every 6 steps: slot 1 runs dry (lookahead 2) and waits
            paused.push(1, queue.pop(0))
            if not queue:
                paused.end(1)
        frames.append(paused.step(active=torch.tensor([True, not paused.waiting[1]])))
    assert sum(not f.ready[1] and f.ready[0] for f in frames[:STEPS]) > 3  # slot 1 was paused
    assert _same(spoken(frames[:STEPS], 0), spoken(expected, 0))
    assert _same(spoken(frames, 1), spoken(expected, 1))
    paused_frames = [f for f in frames if not f.ready[1]]
    assert all(not f.last[1] and all(w.slot == 0 for w in f.words) for f in paused_frames)


def _same(a, b) -> bool:
    """Same words and the same audio frames (those of the shorter run; at least 10)."""
    (audio_a, words_a), (audio_b, words_b) = a, b
    return words_a == words_b and min(len(audio_a), len(audio_b)) >= 10 and all(map(torch.equal, audio_a, audio_b))


def test_set_voice_then_reset_equals_a_speaker_built_with_that_voice(lm):
    first, second = voices(2, seed=1)
    changed = speaker(lm, first)
    for slot in (0, 1):
        changed.push(slot, "some words to say")
        changed.end(slot)
    for _ in range(5):
        changed.step()
    changed.set_voice(1, second)
    changed.reset(torch.tensor([False, True]))
    built = speaker(lm, [first, second])
    for target in (changed, built):
        target.push(1, "a b c d")
        target.end(1)
    got = [changed.step() for _ in range(STEPS)]
    want = [built.step() for _ in range(STEPS)]
    assert _same(spoken(got, 1), spoken(want, 1))
    assert not _same(spoken(want, 1), spoken(_one_voice(lm, first), 1))


def _one_voice(lm, voice) -> list:
    """Slot 1 speaking "a b c d" in `voice` from a fresh Speaker."""
    fresh = speaker(lm, voice)
    fresh.push(1, "a b c d")
    fresh.end(1)
    return [fresh.step() for _ in range(STEPS)]


def test_set_voice_checks(lm):
    target = speaker(lm, voices(1)[0])
    with pytest.raises(InputError, match="slot must be"):
        target.set_voice(2, voices(1)[0])
    with pytest.raises(InputError, match="shape of the current one"):
        target.set_voice(0, torch.randn(1, SPEAKER_DIM, 6))


def test_check_voice_accepts_what_set_voice_takes_and_refuses_the_rest(lm):
    target = speaker(lm, voices(1)[0])
    target.check_voice(voices(2)[1])  # same C and T: taken
    with pytest.raises(InputError, match="of 6 frames"):
        target.check_voice(torch.randn(1, SPEAKER_DIM, 6))
    with pytest.raises(InputError):
        target.check_voice(torch.randn(1, SPEAKER_DIM + 1, 4))
