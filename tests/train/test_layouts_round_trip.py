"""The training layouts are what the streaming front-ends read: a tiny model that has memorized one
training sequence gives it back through the inference front-end (lm/tasks.py), greedily: the TTS
speaker's words and audio codes, the transcriber's words, the last one included. A layout the
front-end reads otherwise (other delays, another end) fails here, not after hours of training. (Where
a word's text sits against its audio is checked in test_lm_train.py: the padding machine would
follow a memorized schedule even if it drifted.)"""

from __future__ import annotations

import math

import torch

from antiphon.apps.transcribe_cmd import FLUSH_FRAMES
from antiphon.lm import LM
from antiphon.lm.tasks import Speaker, Transcriber
from antiphon.train import streams
from antiphon.train.lm_train import LMRecipe, delay_steps, init_weights, lm_loss, model_config
from tests.streaming.tiny_pair import LetterTokenizer

CARD, TEXT_CARD = 16, 40


def memorized(task: str, sequence: torch.Tensor, steps: int = 400) -> LM:
    """A tiny LM of `task` fitted to one sequence [1 + n_q, T] until it predicts every output token."""
    torch.manual_seed(0)
    recipe = LMRecipe(task=task, size="tiny", codebooks=2)
    model = init_weights(LM(model_config(recipe, text_card=TEXT_CARD, card=CARD)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, _ = lm_loss(model, sequence[None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01, f"the tiny {task} model did not memorize its sequence (loss {loss.item():.3f})"
    return model.eval()


def test_a_memorized_tts_sequence_comes_back_through_the_speaker():
    tok = LetterTokenizer()
    words = [("ab", 0.1, 0.3), ("cde", 0.3, 0.6), ("f", 0.65, 0.8), ("gh", 0.8, 1.1)]
    audio = torch.randint(0, CARD, (2, 16), generator=torch.Generator().manual_seed(1))
    model = memorized("tts", streams.build("tts", tok, [audio], [words], delay_steps=12))
    delay = delay_steps(model.config)
    assert delay == 12
    speaker = Speaker(model, 1, cfg=None, tokenizer=tok, temp=0.0, temp_text=0.0)
    speaker.push(0, " ".join(w for w, _, _ in words))
    speaker.end(0)
    frames, said = [], []
    with torch.inference_mode():
        for _ in range(60):
            frame = speaker.step()
            said += [w.text for w in frame.words]
            if frame.ready[0]:
                frames.append(frame.audio[0, :, 0])
            if frame.last[0]:
                break
    assert said == [w for w, _, _ in words]
    spoken = torch.stack(frames, dim=1)  # [2, frames]
    # the acoustic codebook runs a step behind the first (the LM's delays): its last frame falls past the
    # end of the training sequence, so nothing was learned there
    assert torch.equal(spoken[0, :16], audio[0]) and torch.equal(spoken[1, :15], audio[1, :15])


def test_a_memorized_stt_sequence_comes_back_through_the_transcriber_last_word_included():
    tok = LetterTokenizer()
    words = [("ab", 0.1, 0.4), ("cd", 0.5, 0.9), ("efg", 1.0, 1.25)]  # the last ends with the audio
    audio = torch.randint(1, CARD, (2, 16), generator=torch.Generator().manual_seed(2))
    silence = torch.zeros(2, dtype=torch.long)
    model = memorized("stt", streams.build("stt", tok, [audio], [words], delay_steps=6, silence=silence))
    transcriber = Transcriber(model, 1)
    # as `transcribe` feeds it: the audio, then the text delay's and FLUSH_FRAMES' frames of silence
    tail = math.ceil(transcriber.text_delay / 0.08) + transcriber.generator.max_delay + FLUSH_FRAMES
    fed = torch.cat([audio, silence[:, None].expand(-1, tail)], dim=1)
    tokens = []
    with torch.inference_mode():
        for f in range(fed.shape[1]):
            out = transcriber.step(fed[None, :, f:f + 1])
            if out is not None and bool(out.is_word[0]):
                tokens.append(int(out.text[0]))
    assert tokens == [t for w, _, _ in words for t in tok.encode(w)]
