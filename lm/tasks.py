"""Task front-ends over the streaming generator (lm.generate): one call per 80 ms frame for B slots,
small typed results. Dialogue (Moshi): user audio codes in -> text token + audio codes out. STT (Kyutai
STT): audio codes in -> text tokens with timestamps and the semantic VAD probabilities. Translation
(Hibiki): source audio codes in -> target text token + audio codes out, conditioned on a quality label.

Sampling defaults come from the config's `lm_gen_config` (temp, temp_text, top_k, top_k_text), then from
the task's defaults; keyword arguments override both. Like the reference (§3.1), the model never sees the
first frame a fresh slot is given (it reads initial tokens instead): callers feed that frame twice, or a
frame of silence first.
"""

from __future__ import annotations

import dataclasses

import torch

from antiphon.errors import InputError
from antiphon.lm.conditioners import Condition
from antiphon.lm.generate import UNGENERATED, LMGenerator

FRAME_SECONDS = 0.08  # one step: 1920 samples at 24 kHz
_SAMPLING = ("temp", "temp_text", "top_k", "top_k_text")


def _generator(lm, batch_size: int, defaults: dict, overrides: dict, **fixed) -> LMGenerator:
    unknown = set(overrides) - set(_SAMPLING) - {"rng", "check_inputs"}
    if unknown:
        raise InputError(f"unknown generation options {sorted(unknown)} (use {', '.join(_SAMPLING)}, rng, check_inputs)")
    options = dict(defaults)
    options.update({k: v for k, v in lm.config.lm_gen_config.items() if k in _SAMPLING})
    options.update(overrides)
    return lm.generator(batch_size, **options, **fixed)


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


@dataclasses.dataclass(frozen=True)
class TranslationFrame:
    text: torch.Tensor  # [B] long: the target text token of this frame (-2: slot has no output yet)
    audio: torch.Tensor  # [B, dep_q, 1] long: the target audio codes of this frame, for codec.decode (-2: none yet)
    ready: torch.Tensor  # [B] bool: the slot has output this frame
    is_word: torch.Tensor  # [B] bool: `text` is a piece to show (not PAD / EPAD / EOS)
    is_end: torch.Tensor  # [B] bool: the model's text EOS after the source ended: the translation is complete


class Translator:
    """Simultaneous speech translation (Hibiki): `step(source_codes [B, n_q - dep_q, 1])` ->
    TranslationFrame, or None on the first max_delay steps. `reset(mask [B])` starts new sources in the
    chosen slots.

    A model with a quality conditioner ("description") is conditioned on `quality` ("very_good"); with
    cfg_coef != 1 (Hibiki's README: typically 3, more voice similarity, less accuracy) the null rows take
    `null_quality` ("very_bad"). When a slot's source ends, feed `end_of_input()` once (every code set to
    card), then silence frames until `is_end`: the model's text EOS (`eos_id`) counts only once its
    slot's source has ended (an earlier one reads as PAD, as the loader makes sure)."""

    def __init__(self, lm, batch_size: int, quality: str = "very_good", null_quality: str = "very_bad",
                 cfg_coef: float = 1.0, eos_id: int = 2, **sampling):
        cfg = lm.config
        if not cfg.dep_q or cfg.n_q == cfg.dep_q:
            raise InputError("translation needs a model with source and target audio streams (0 < dep_q < n_q)")
        condition = None
        if lm.is_conditioned:
            condition = lm.condition(batch_size, description=quality)
            if cfg_coef != 1.0:
                condition = Condition.cat(condition, lm.condition(batch_size, description=null_quality))
        self.lm, self.eos_id = lm, eos_id
        self.generator = _generator(lm, batch_size, {}, sampling, cfg_coef=cfg_coef, condition=condition)
        self.source_ended = torch.zeros(batch_size, dtype=torch.bool, device=lm.device)  # [B]

    def end_of_input(self) -> torch.Tensor:
        """The frame that ends a source: [B, n_q - dep_q, 1], every code = card (give it to the slots
        that end; the others keep their own frame)."""
        gen = self.generator
        return torch.full((gen.batch_size, gen.n_in, 1), self.lm.config.card, dtype=torch.long, device=self.lm.device)

    def step(self, source_codes: torch.Tensor) -> TranslationFrame | None:
        out = self.generator.step(source_codes)
        ended = (source_codes.to(self.source_ended.device) == self.lm.config.card).flatten(1).all(dim=1)
        self.source_ended |= ended
        if out is None:
            return None
        text = out[:, 0, 0]
        ready = text != UNGENERATED
        eos = text == self.eos_id
        return TranslationFrame(text=text, audio=out[:, 1:], ready=ready, is_word=_is_word(self.lm, text) & ~eos,
                                is_end=ready & eos & self.source_ended)

    def reset(self, mask: torch.Tensor) -> None:
        self.generator.reset(mask)
        self.source_ended.masked_fill_(mask.to(self.source_ended.device), False)
