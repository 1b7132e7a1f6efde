"""Task front-ends over the streaming generator (lm.generate): one call per 80 ms frame for B slots,
small typed results. Dialogue (Moshi): user audio codes in -> text token + audio codes out. STT (Kyutai
STT): audio codes in -> text tokens with timestamps and the semantic VAD probabilities. Translation
(Hibiki): source audio codes in -> target text token + audio codes out, conditioned on a quality label.
TTS (Kyutai TTS): words in per slot -> audio codes and word timestamps out, with the padding state
machine of lm.tts deciding the text stream on the host between steps.

Sampling defaults come from the config's `lm_gen_config` (temp, temp_text, top_k, top_k_text), then from
the task's defaults; keyword arguments override both. Like the reference (§3.1), the model never sees the
first frame a fresh slot is given (it reads initial tokens instead): callers feed that frame twice, or a
frame of silence first.
"""

from __future__ import annotations

import dataclasses
import functools

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

    def step(self, user_codes: torch.Tensor, active: torch.Tensor | None = None) -> DialogueFrame | None:
        """active (optional) bool [B]: the slots this step advances; paused ones are not ready."""
        out = self.generator.step(user_codes, active=active)
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

    def step(self, audio_codes: torch.Tensor, active: torch.Tensor | None = None) -> TranscriptFrame | None:
        """active (optional) bool [B]: the slots this step advances; paused ones get text -2 (and a
        meaningless time and pause)."""
        gen = self.generator
        out = gen.step(audio_codes, active=active)
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

    def step(self, source_codes: torch.Tensor, active: torch.Tensor | None = None) -> TranslationFrame | None:
        """active (optional) bool [B]: the slots this step advances; paused ones are not ready and their
        codes do not end their source."""
        out = self.generator.step(source_codes, active=active)
        ended = (source_codes.to(self.source_ended.device) == self.lm.config.card).flatten(1).all(dim=1)
        self.source_ended |= ended if active is None else ended & active.to(ended.device)
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


@dataclasses.dataclass(frozen=True)
class SpokenWord:
    slot: int
    text: str
    start: float  # seconds on the slot's audio clock (0 = its first `ready` frame)
    stop: float  # seconds: when its last token was fed (the next word may start later)


@dataclasses.dataclass(frozen=True)
class SpeechFrame:
    audio: torch.Tensor  # [B, dep_q, 1] long: this frame's audio codes, for codec.decode (-1 / -2 where not ready)
    ready: torch.Tensor  # [B] bool: the frame belongs to the slot's speech (past the audio delay, not past its end)
    last: torch.Tensor  # [B] bool: the slot's final frame: its text is fully spoken, reset it for new text
    words: tuple[SpokenWord, ...]  # words whose last token was fed at this step, with their times


class Speaker:
    """Streaming text-to-speech (Kyutai TTS, delayed streams): words in per slot (`push(slot, text)`,
    `end(slot)`), one audio frame out per `step()` for all B slots, with word timestamps.

    The audio runs `tts_config["audio_delay"]` seconds (delay_steps steps) behind the text; the padding
    state machine (lm.tts) decides on the host, between steps, which text the model is fed. Conditioning:
    `voice` (a kyutai/tts-voices speaker-embedding file or tensor [1, C, T], one for all slots or a list of
    B) through cross-attention, `cfg` (the distilled guidance value, a label of the cfg conditioner),
    control "ok". A model trained without CFG distillation (no cfg conditioner) takes two-pass guidance
    instead: `cfg_coef` != 1 adds a null row per slot with no text, no voice and no labels, whose audio
    logits are mixed in (the reference's cfg_is_no_text; twice the compute). `padding_bonus` (float or [B]; -2..2) slows speech when positive. A slot's step is
    faithful to the reference only while it has lookahead + 1 words queued or has ended; until then it
    waits on PAD (the reference server skips it). `reset(mask [B])` starts new utterances."""

    def __init__(self, lm, batch_size: int, voice=None, cfg: float | None = 2.0, padding_bonus: float | torch.Tensor = 0.0,
                 initial_padding: int = 2, max_padding: int = 8, padding_between: int = 1, final_padding: int = 4,
                 tokenizer=None, cfg_coef: float = 1.0, **sampling):
        from antiphon.lm import tts

        cfg_ = lm.config
        if not cfg_.dep_q or "audio_delay" not in cfg_.tts_config:
            raise InputError("text-to-speech needs a TTS model: a depformer and tts_config['audio_delay'] in config.json")
        self.lm, self.batch_size, self.tokenizer = lm, batch_size, tokenizer
        self.delay_steps = int(cfg_.tts_config["audio_delay"] * tts.FRAME_RATE)
        self.ahead = int(cfg_.tts_config.get("second_stream_ahead", 0))
        self.machine_options = dict(text_card=cfg_.text_card, second_stream_ahead=self.ahead, max_padding=max_padding,
                                    initial_padding=initial_padding, new_word=cfg_.existing_text_end_padding_id,
                                    pad=cfg_.existing_text_padding_id)
        self.padding_between, self.final_padding = padding_between, final_padding
        self.padding_bonus = torch.as_tensor(padding_bonus, dtype=torch.float32).to(lm.device).expand(batch_size)
        self.guidance, self.cfg_coef = cfg, float(cfg_coef)
        if self.cfg_coef != 1.0 and "cfg" in (lm.condition_provider.fused if lm.is_conditioned else ()):
            raise InputError("this TTS model was trained with CFG distillation: give the guidance as cfg=, "
                             "not cfg_coef (two-pass guidance)")
        condition, self.multi_speaker = self._condition(voice, cfg)
        self.generator = _generator(lm, batch_size, {"temp": 0.6, "temp_text": 0.6}, sampling, condition=condition,
                                    audio_delay=self.delay_steps, cfg_coef=self.cfg_coef, cfg_is_no_text=True)
        self.codes = torch.full((batch_size, cfg_.n_q - cfg_.dep_q, 1), -1, dtype=torch.long, device=lm.device)
        self.machines = [self._machine() for _ in range(batch_size)]
        self.steps = [0] * batch_size  # host: steps done per slot
        self.started = [False] * batch_size  # host: a word was pushed (the first one gets MAIN)

    # ------------------------------------------------------------------ text in
    def push(self, slot: int, text: str) -> None:
        """Whole words for `slot` (split on whitespace; `<break time="0.5s"/>` is a pause)."""
        from antiphon.lm import tts

        slot = self._check_slot(slot)
        first = tts.MAIN if self.multi_speaker and not self.started[slot] else None
        entries = tts.text_to_entries(self._tokenizer, text, self.padding_between, first)
        self.machines[slot].push(entries)
        self.started[slot] |= any(e.tokens for e in entries)

    def end(self, slot: int) -> None:
        """No more words for `slot`: it finishes the queued ones, then final_padding frames."""
        self.machines[self._check_slot(slot)].end()

    @property
    def waiting(self) -> list[bool]:
        """Per slot: not ended and too few words queued for a faithful next step (feed more words)."""
        return [m.waiting for m in self.machines]

    # ------------------------------------------------------------------ one frame
    def step(self, active: torch.Tensor | None = None) -> SpeechFrame:
        """One frame for all slots. active (optional) bool [B]: the slots this step advances; a paused slot
        (e.g. waiting for words, instead of being fed PAD) keeps its padding machine, its step count and
        its generation state, and its frame is not ready, not last and has no words."""
        choices = torch.tensor([m.choices(s) for m, s in zip(self.machines, self.steps)], dtype=torch.long)
        out = self.generator.step(self.codes, text=choices.to(self.lm.device), pad_bonus=self.padding_bonus,
                                  active=active)
        sampled = self.generator.last_text.tolist()  # the host reads, between steps
        moving = [True] * self.batch_size if active is None else active.tolist()
        words, ready, last = [], [], []
        for b, machine in enumerate(self.machines):
            if not moving[b]:
                ready.append(False)
                last.append(False)
                continue
            said = len(machine.said)
            machine.advance(self.steps[b], sampled[b])
            words += [self._timed(b, w) for w in machine.said[said:]]
            self.steps[b] += 1
            frame = self.steps[b] - 1 - self.generator.max_delay  # the frame emitted this step
            stop = None if machine.end_step is None else machine.end_step + self.delay_steps + self.final_padding
            ready.append(frame >= self.delay_steps and (stop is None or frame < stop))
            last.append(stop is not None and frame == stop - 1)
        dep_q = self.lm.config.dep_q
        audio = out[:, 1:] if out is not None else torch.full((self.batch_size, dep_q, 1), -2, device=self.lm.device)
        as_mask = functools.partial(torch.tensor, dtype=torch.bool, device=self.lm.device)
        return SpeechFrame(audio=audio, ready=as_mask(ready), last=as_mask(last), words=tuple(words))

    def set_voice(self, slot: int, voice) -> None:
        """Give `slot` another voice (as the constructor takes one: a kyutai/tts-voices speaker-embedding
        file or a tensor [1, C, T], with the T of the others): its condition and cross-attention keys and
        values are rebuilt, the other slots are untouched. Reset the slot before it speaks again."""
        slot = self._check_slot(slot)
        condition, _ = self._condition(voice, self.guidance)
        mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.lm.device)
        mask[slot] = True
        self.generator.set_condition_rows(mask, condition)

    def check_voice(self, voice) -> None:
        """Raise InputError unless `set_voice` would take `voice`: the model speaks in a given voice, and this
        one has its width C and the length T of the voices already given (cheap: nothing runs)."""
        from antiphon.lm import tts

        if not self.multi_speaker:
            raise InputError("this TTS model takes no voice")
        steps = tts.load_voice(voice, self.lm.condition_provider.conditioners[tts.VOICE_KEY].spec.dim).shape[0]
        if steps != self.voice_steps:
            raise InputError(f"a voice of {steps} frames; this model's slots take voices of {self.voice_steps}")

    def reset(self, mask: torch.Tensor) -> None:
        self.generator.reset(mask)
        for b in mask.nonzero().flatten().tolist():
            self.machines[b], self.steps[b], self.started[b] = self._machine(), 0, False

    # ------------------------------------------------------------------ helpers
    def _timed(self, slot: int, word) -> SpokenWord:
        # text step s sits at audio frame s + delay_steps: (s + delay_steps) * 0.08 s minus the audio delay,
        # on the clock of the slot's speech (0 = its first ready frame, frame delay_steps)
        return SpokenWord(slot, word.text, word.start * FRAME_SECONDS, word.stop * FRAME_SECONDS)

    def _machine(self):
        from antiphon.lm.tts import PaddingMachine

        return PaddingMachine(**self.machine_options)

    @property
    def _tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = self.lm.tokenizer
        return self.tokenizer

    def _check_slot(self, slot: int) -> int:
        if not isinstance(slot, int) or not 0 <= slot < self.batch_size:
            raise InputError(f"slot must be an int in [0, {self.batch_size}), got {slot!r}")
        return slot

    def _condition(self, voice, cfg: float | None):
        """-> (the generator's condition: B rows, or with two-pass guidance B conditioned then B null rows;
        whether the model takes a voice)."""
        from antiphon.lm import tts

        lm = self.lm
        if not lm.is_conditioned:
            if voice is not None or cfg is not None:
                raise InputError("this TTS model has no conditioners: pass voice=None, cfg=None")
            return None, False
        provider = lm.condition_provider
        attributes, null = {}, {}
        for name in provider.fused:
            spec = provider.conditioners[name].spec
            if name == tts.VOICE_KEY:
                attributes[name] = self._voices(voice, spec.dim)
                null[name] = (attributes[name][0], torch.zeros_like(attributes[name][1]))  # every position missing
            elif name == "cfg":
                attributes[name] = None if cfg is None else format(float(cfg), ".1f")
            elif name == "control":
                attributes[name] = "ok"
            else:
                raise InputError(f"this TTS model is conditioned on {name!r}, which Speaker does not know")
        if voice is not None and tts.VOICE_KEY not in provider.fused:
            raise InputError("this TTS model takes no voice (no speaker_wavs conditioner): pass voice=None")
        condition = lm.condition(self.batch_size, **attributes)
        if self.cfg_coef != 1.0:
            condition = Condition.cat(condition, lm.condition(self.batch_size, **{n: null.get(n) for n in attributes}))
        return condition, tts.VOICE_KEY in provider.fused

    def _voices(self, voice, dim: int):
        from antiphon.lm import tts

        if voice is None:
            raise InputError("this TTS model speaks in a given voice: pass voice= a kyutai/tts-voices "
                             "speaker-embedding .safetensors file (or a tensor [1, C, T])")
        each = list(voice) if isinstance(voice, (list, tuple)) else [voice] * self.batch_size
        if len(each) != self.batch_size:
            raise InputError(f"give one voice for all slots or a list of B = {self.batch_size}, got {len(each)}")
        loaded = [tts.load_voice(v, dim) for v in each]  # each [T, C]
        self.voice_steps = loaded[0].shape[0]
        sources = [tts.speaker_source([v]) for v in loaded]
        if len({s[0].shape for s in sources}) > 1:
            raise InputError("the voices of the slots must have the same length T")
        return torch.cat([s[0] for s in sources]), torch.cat([s[1] for s in sources])
