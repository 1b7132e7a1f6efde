"""Training sequences in the multistream layout each task's front-end reads (lm/tasks.py), in natural
time alignment ([1 + n_q, T]: the text row, then audio rows; the LM applies its own delays):

- stt: one sequence per channel (each is one speaker's speech). text = the words of the speech, each
  WORD marker `text_delay` steps after its audio start; audio rows = the speech's codes (input), then
  `text_delay + STT_TAIL_STEPS` steps of the codec's silence codes, as the transcriber feeds after
  the audio, so that the last word's delayed text fits.
- tts: text = the words at their audio start (the padding machine's rules: `initial_padding` first,
  `padding_between + len(tokens) - 1` forced steps after a WORD marker, its tokens' steps among them);
  audio rows = the speech's codes (output) `audio_delay` steps behind, the zero token (-1) before.
- translation, dialogue: text = channel 0's words (target, model); audio rows = channel 0's codes
  (output) then channel 1's (input: source, user). Translation also marks the ends as Hibiki's
  front-end reads them: the source's end-of-input frame (every code = card) `END_LAG_S` after its last
  word, and the text EOS (2) the step after the target's last word ends.

Text: PAD everywhere, WORD (0) at a word's step, then its tokens one per step; a word whose step is
taken by the previous one starts at the first free step.
"""

from __future__ import annotations

import math

import torch

from antiphon.lm.tts import word_padding

FRAME_RATE = 12.5
WORD, PAD, EOS = 0, 3, 2
END_LAG_S = 0.24
STT_TAIL_STEPS = 8  # stt: silent steps after the text delay, room for the last word's pieces
TASKS = ("stt", "tts", "translation", "dialogue")


def text_stream(tokenizer, words, steps: int, delay_steps: int = 0, first_step: int = 0,
                padding_between: int | None = None) -> torch.Tensor:
    """words [(word, start_s, stop_s)] -> long [steps]. `padding_between` (TTS): the padding machine's
    forced steps after a WORD marker (lm/tts.py), `padding_between + len(tokens) - 1`, which count from
    the step after the marker, the word's own tokens included: so the next word may start `max(len(tokens),
    forced)` steps after the marker's next step, as at inference."""
    row = torch.full((steps,), PAD, dtype=torch.long)
    free = first_step
    for word, start, _ in words:
        tokens = tokenizer.encode(word)
        at = max(free, int(math.floor(start * FRAME_RATE)) + delay_steps)
        if at + len(tokens) >= steps:
            break
        row[at] = WORD
        row[at + 1: at + 1 + len(tokens)] = torch.tensor(tokens)
        forced = 0 if padding_between is None else word_padding(padding_between, len(tokens))
        free = at + 1 + max(len(tokens), forced)
    return row


def build(task: str, tokenizer, codes: list[torch.Tensor], words: list[list], delay_steps: int,
          card: int = 2048, silence: torch.Tensor | None = None) -> torch.Tensor:
    """One example -> [1 + n_q, T] long. codes: per channel [K, F]; words: per channel; card: the
    codebook size (the end-of-input code); silence: stt, the codec's codes [K] of silence (required)."""
    if task == "stt":
        if silence is None:
            raise ValueError("stt sequences end with the codec's silence codes: pass silence")
        tail = silence[:, None].expand(-1, delay_steps + STT_TAIL_STEPS)
        audio = torch.cat([codes[0], tail.to(codes[0].dtype)], dim=1)
        text = text_stream(tokenizer, words[0], audio.shape[-1], delay_steps=delay_steps)
        return torch.cat([text[None], audio])
    if task == "tts":
        audio = codes[0]
        steps = audio.shape[-1] + delay_steps
        text = text_stream(tokenizer, words[0], steps, first_step=2, padding_between=1)
        delayed = torch.cat([torch.full((audio.shape[0], delay_steps), -1, dtype=torch.long), audio], dim=1)
        return torch.cat([text[None], delayed])
    if task in ("translation", "dialogue"):
        steps = codes[0].shape[-1]
        text = text_stream(tokenizer, words[0], steps)
        source = codes[1].clone()
        if task == "translation" and words[0] and words[1]:
            end_of_input = min(steps - 1, math.ceil((words[1][-1][2] + END_LAG_S) * FRAME_RATE))
            source[:, end_of_input] = card
            last_token = int((text != PAD).nonzero().max()) if (text != PAD).any() else 0
            eos = max(end_of_input, math.ceil(words[0][-1][2] * FRAME_RATE), last_token) + 1
            if eos < steps:
                text[eos] = EOS
        return torch.cat([text[None], codes[0], source])
    raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")


def sequences(task: str, tokenizer, codes: list[torch.Tensor], words: list[list], delay_steps: int,
              card: int = 2048, silence: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One example's training sequences (`build`'s arguments): for stt, one per channel, since every
    channel is one speaker's speech with its words (a translation's two sides, a dialogue's two
    speakers); for the other tasks, the example's one sequence."""
    if task == "stt":
        return [build(task, tokenizer, [c], [w], delay_steps, card, silence) for c, w in zip(codes, words)]
    return [build(task, tokenizer, codes, words, delay_steps, card, silence)]


def crop_batch(sequences: list[torch.Tensor], steps: int, rng) -> torch.Tensor:
    """Random windows of `steps` (the whole sequence when shorter, padded with -1) -> [B, K, steps]."""
    out = torch.full((len(sequences), sequences[0].shape[0], steps), -1, dtype=torch.long)
    for b, seq in enumerate(sequences):
        start = int(rng.integers(max(1, seq.shape[-1] - steps + 1)))
        piece = seq[:, start:start + steps]
        out[b, :, :piece.shape[-1]] = piece
    return out
