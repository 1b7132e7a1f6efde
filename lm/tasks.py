"""Task front-ends over the streaming generator (lm.generate): one call per 80 ms frame for B slots,
small typed results. Dialogue (Moshi): user audio codes in -> text token + audio codes out. STT (Kyutai
STT): audio codes in -> text tokens with timestamps and the semantic VAD probabilities.

TTS and translation need conditioning (speaker cross-attention, LUT conditioners) that lm/ does not
build yet; they are not here.

Sampling defaults come from the config's `lm_gen_config` (temp, temp_text, top_k, top_k_text), then from
the task's defaults; keyword arguments override both. Like the reference (§3.1), the model never sees the
first frame a fresh slot is given (it reads initial tokens instead): callers feed that frame twice, or a
frame of silence first.
"""

from __future__ import annotations

import dataclasses

import torch

from antiphon.errors import InputError
from antiphon.lm.generate import UNGENERATED, LMGenerator

FRAME_SECONDS = 0.08  # one step: 1920 samples at 24 kHz
_SAMPLING = ("temp", "temp_text", "top_k", "top_k_text")


def _generator(lm, batch_size: int, defaults: dict, overrides: dict) -> LMGenerator:
    unknown = set(overrides) - set(_SAMPLING) - {"rng", "check_inputs"}
    if unknown:
        raise InputError(f"unknown generation options {sorted(unknown)} (use {', '.join(_SAMPLING)}, rng, check_inputs)")
    options = dict(defaults)
    options.update({k: v for k, v in lm.config.lm_gen_config.items() if k in _SAMPLING})
    options.update(overrides)
    return lm.generator(batch_size, **options)


def _is_word(lm, text: torch.Tensor) -> torch.Tensor:
    """text [B] -> bool [B]: a real text token (not PAD, EPAD or nothing yet)."""
    cfg = lm.config
    return (text >= 0) & (text != cfg.existing_text_padding_id) & (text != cfg.existing_text_end_padding_id)


@dataclasses.dataclass(frozen=True)
class DialogueFrame:
    text: torch.Tensor  # [B] long: the text token of this frame (-2: slot has no output yet)
    audio: torch.Tensor  # [B, dep_q, 1] long: the model's audio codes of this frame, for codec.decode (-2: none yet)
    ready: torch.Tensor  # [B] bool: the slot has output this frame
    is_word: torch.Tensor  # [B] bool: `text` is a piece to show (not PAD / EPAD)


class Dialogue:
    """Full-duplex dialogue: `step(user_codes [B, n_q - dep_q, 1])` -> DialogueFrame, or None on the
    first max_delay steps. `reset(mask [B])` starts new conversations in the chosen slots."""

    def __init__(self, lm, batch_size: int, **sampling):
        if not lm.config.dep_q:
            raise InputError("dialogue needs a model that generates audio (dep_q > 0); this one has no depformer")
        self.lm = lm
        self.generator = _generator(lm, batch_size, {}, sampling)

    def step(self, user_codes: torch.Tensor) -> DialogueFrame | None:
        out = self.generator.step(user_codes)
        if out is None:
            return None
        text = out[:, 0, 0]
        ready = text != UNGENERATED
        return DialogueFrame(text=text, audio=out[:, 1:], ready=ready, is_word=_is_word(self.lm, text))

    def reset(self, mask: torch.Tensor) -> None:
        self.generator.reset(mask)


@dataclasses.dataclass(frozen=True)
class TranscriptFrame:
    text: torch.Tensor  # [B] long: the text token of this frame (-2: slot has no output yet)
    time: torch.Tensor  # [B] float, seconds: where this token sits in the slot's audio (frame * 0.08 - text delay)
    is_word: torch.Tensor  # [B] bool: `text` is a piece (not PAD / EPAD / nothing yet)
    pause: torch.Tensor | None  # [B, heads] float: per VAD head, the probability of no voice activity (None: no heads)


class Transcriber:
    """Streaming speech recognition: `step(audio_codes [B, n_q, 1])` -> TranscriptFrame (None while no
    slot has output). The text stream runs `stt_config["audio_delay_seconds"]` behind the audio; `time`
    takes it off. `reset(mask [B])` starts new streams in the chosen slots."""

    def __init__(self, lm, batch_size: int, **sampling):
        cfg = lm.config
        if cfg.dep_q:
            raise InputError(f"transcription needs a text-only model (dep_q = 0, like Kyutai STT); this one has "
                             f"dep_q = {cfg.dep_q}")
        self.lm = lm
        self.generator = _generator(lm, batch_size, {"temp_text": 0.0}, sampling)
        self.text_delay = float(cfg.stt_config.get("audio_delay_seconds", 0.0))  # seconds

    def step(self, audio_codes: torch.Tensor) -> TranscriptFrame | None:
        gen = self.generator
        out = gen.step(audio_codes)
        if out is None:
            return None
        text = out[:, 0, 0]
        frame = gen.offsets - 1 - gen.max_delay  # [B]: the frame this token belongs to
        heads = gen.last_extra_heads
        return TranscriptFrame(text=text, time=frame * FRAME_SECONDS - self.text_delay, is_word=_is_word(self.lm, text),
                               pause=None if heads is None else heads[..., 0])

    def reset(self, mask: torch.Tensor) -> None:
        self.generator.reset(mask)
