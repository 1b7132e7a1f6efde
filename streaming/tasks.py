"""What one engine tick does for each task: the batched model work between the scheduler's plan and the
sessions' events. The engine (streaming.engine) owns the slots, the thread and the sinks; a task owns the
model state of every slot and turns a `TickPlan` into `(slot, event)` pairs.

| task | model (config model_type) | input per slot | idle rule | events |
|---|---|---|---|---|
| `DialogueTask` | Moshi ("moshi") | user audio | silence | `OutputFrame` (voice + text) |
| `TranslationTask` | Hibiki ("hibiki") | source audio, then `EndOfInput` | silence | `OutputFrame`, `end` once translated |
| `TranscriptionTask` | Kyutai STT ("stt") | audio | pause | `TextFrame` (token, time, VAD) |
| `SpeechTask` | Kyutai TTS ("tts") | `TextIn` words, `EndOfInput`, `VoiceIn` | pause (waits for words) | `VoiceFrame` (audio + timed words) |

Every tick runs with fixed shapes [B, ...]. Slots that must not move this tick (no session, an STT client
that sent nothing, a TTS slot waiting for words) are left out with an `active` mask: their state does not
change. Host reads: one per tick, at publish.

First frame (reference §3.1, §3.5): a fresh slot's first LM step never sees its input (initial tokens are
read instead), so the audio tasks step it on the engine's silence, before the client is told the slot is
ready, and restart the slot's encoder after it so the client's first frame gets the codec's first-frame
padding. The client's frame k is thus the slot's frame k + 1: times are shifted by one frame.
"""

from __future__ import annotations

import numpy as np
import torch

from antiphon.errors import InputError
from antiphon.lm.generate import UNGENERATED

from .frames import FRAME_SAMPLES, FRAME_SECONDS, EndOfInput, OutputFrame, TextFrame, TextIn, TimedWord, VoiceFrame, VoiceIn

TASKS = ("dialogue", "translation", "stt", "tts")
_BY_MODEL_TYPE = {"moshi": "dialogue", "hibiki": "translation", "stt": "stt", "tts": "tts"}


def task_of(lm) -> str:
    """The task a model performs, from its config (model_type; failing that, its shape)."""
    cfg = lm.config
    if cfg.model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[cfg.model_type]
    if not cfg.dep_q:
        return "stt"
    return "tts" if "audio_delay" in cfg.tts_config else "dialogue"


def make_task(lm, codec, slots: int, task: str | None = None, **options):
    """The task runner for `lm` (or the named `task`), over `slots` slots."""
    task = task or task_of(lm)
    runners = {"dialogue": DialogueTask, "translation": TranslationTask, "stt": TranscriptionTask, "tts": SpeechTask}
    if task not in runners:
        raise InputError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return runners[task](lm, codec, slots, **options)


def _mask(values: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).to(device)


class _Sampling:
    """Per-session sampling: a joining session's values for its slot, the generator's defaults for what it omits."""

    def configure(self, slot: int, sampling: dict) -> None:
        """Set `slot`'s sampling (temp, temp_text, top_k, top_k_text) for its new session."""
        generator = self.runner.generator
        unknown = set(sampling) - set(generator.default_sampling)
        if unknown:
            raise InputError(f"unknown sampling option(s) {sorted(unknown)}: expected "
                             f"{', '.join(generator.default_sampling)}")
        values = {**generator.default_sampling, **sampling}
        generator.set_sampling(_mask(np.arange(self.slots) == slot, self.device), **values)


def _check_codec(lm, codec, reads: int) -> None:
    """The codec must give the `reads` codebooks the LM hears and the dep_q it speaks, of card codes each."""
    cfg = lm.config
    if codec.num_codebooks < max(reads, cfg.dep_q) or codec.cardinality < cfg.card:
        raise InputError(f"the codec gives {codec.num_codebooks} codebooks of {codec.cardinality} codes; the LM "
                         f"reads {reads} and writes {cfg.dep_q} streams of {cfg.card} codes: set "
                         f"codec.num_codebooks or pair them right")


def _decode(codec, audio: torch.Tensor, ready: torch.Tensor) -> torch.Tensor:
    """audio codes [B, dep_q, 1] (negative where not ready) -> PCM [B, 1920]; rows not `ready` leave their
    decoder untouched (their PCM is not used)."""
    return codec.decode_latent(codec.quantizer.decode(audio.clamp(min=0)), active=ready)[:, 0]


class _AudioTask(_Sampling):
    """Shared by the tasks that hear audio: encode the plan's frames into the LM's input codes."""

    idle = "silence"

    def __init__(self, lm, codec, slots: int):
        cfg = lm.config
        self.lm, self.codec, self.slots = lm, codec, slots
        self.device = lm.device
        self.n_in = cfg.n_q - cfg.dep_q
        self.steps = np.zeros(slots, dtype=np.int64)  # events published per slot since its session joined
        _check_codec(lm, codec, self.n_in)

    def reset(self, mask: np.ndarray) -> None:
        m = _mask(mask, self.device)
        self.codec.reset_streaming(m)
        self.runner.reset(m)
        self.steps[mask] = 0

    def _encode(self, pcm: np.ndarray, active: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1920] PCM -> [B, n_in, 1] codes (the unchecked codec path: no host read)."""
        wav = torch.from_numpy(pcm).to(self.device)[:, None, :]
        return self.codec.encode_latent(self.codec.encode_to_latent(wav, active=active))[:, : self.n_in]

    def _restart_encoder_after_first(self, plan) -> None:
        if plan.first.any():  # the throw-away first frame: restart the slot's codec (reference §3.1)
            self.codec.reset_streaming(_mask(plan.first, self.device))

    def warmup(self, ticks: int) -> None:
        silence = np.zeros((self.slots, FRAME_SAMPLES), dtype=np.float32)
        everything = torch.ones(self.slots, dtype=torch.bool, device=self.device)
        for _ in range(ticks):
            self._warm_step(self._encode(silence, everything), everything)
        self.reset(np.ones(self.slots, dtype=bool))


class DialogueTask(_AudioTask):
    """Moshi: the user's audio in, the model's voice and inner-monologue text out, every tick."""

    kind = "dialogue"

    def __init__(self, lm, codec, slots: int, **sampling):
        from antiphon.lm.tasks import Dialogue

        super().__init__(lm, codec, slots)
        self.runner = Dialogue(lm, slots, check_inputs=False, **sampling)

    def step(self, plan) -> list:
        out = self.runner.step(self._encode(plan.pcm))
        self._restart_encoder_after_first(plan)
        if out is None:
            return []
        pcm = _decode(self.codec, out.audio, out.ready)
        text, pcm = out.text.cpu().numpy(), pcm.float().cpu().numpy()  # the tick's host read
        return self._publish(plan, text, pcm, np.zeros(self.slots, dtype=bool))

    def _publish(self, plan, text: np.ndarray, pcm: np.ndarray, end: np.ndarray) -> list:
        cfg = self.lm.config
        silent = (text < 0) | (text == cfg.existing_text_padding_id) | (text == cfg.existing_text_end_padding_id)
        events = []
        for slot in np.flatnonzero(plan.live & (text != UNGENERATED)):
            events.append((slot, OutputFrame(pcm=pcm[slot].copy(), text=None if silent[slot] else int(text[slot]),
                                             step=int(self.steps[slot]), end=bool(end[slot]))))
            self.steps[slot] += 1
        return events

    def _warm_step(self, codes: torch.Tensor, active: torch.Tensor) -> None:
        out = self.runner.step(codes)
        if out is not None:
            _decode(self.codec, out.audio, out.ready)


class TranslationTask(DialogueTask):
    """Hibiki: source audio in, translated voice and text out. A session's `EndOfInput` feeds the model the
    end-of-input frame (every code = card) in place of audio; the frame whose text is the model's EOS is
    published with `end=True` (the session then closes)."""

    kind = "translation"

    def __init__(self, lm, codec, slots: int, quality: str = "very_good", cfg_coef: float = 1.0, **sampling):
        from antiphon.lm.tasks import Translator

        _AudioTask.__init__(self, lm, codec, slots)
        self.runner = Translator(lm, slots, quality=quality, cfg_coef=cfg_coef, check_inputs=False, **sampling)

    def step(self, plan) -> list:
        codes = self._encode(plan.pcm)
        ended = np.zeros(self.slots, dtype=bool)
        for slot, item in plan.inputs:
            ended[slot] |= isinstance(item, EndOfInput)
        if ended.any():
            codes = torch.where(_mask(ended, self.device)[:, None, None], self.runner.end_of_input(), codes)
        out = self.runner.step(codes)
        self._restart_encoder_after_first(plan)
        if out is None:
            return []
        pcm = _decode(self.codec, out.audio, out.ready)
        text, pcm, end = out.text.cpu().numpy(), pcm.float().cpu().numpy(), out.is_end.cpu().numpy()
        text = np.where(out.is_word.cpu().numpy() | (text < 0), text, self.lm.config.existing_text_padding_id)
        return self._publish(plan, text, pcm, end)


class TranscriptionTask(_AudioTask):
    """Kyutai STT: audio in, one `TextFrame` per step of a slot that had audio (a slot whose client sent
    nothing in time is paused: not stepped, nothing out). Times are on the client's audio clock."""

    kind = "stt"

    idle = "pause"

    def __init__(self, lm, codec, slots: int, **sampling):
        from antiphon.lm.tasks import Transcriber

        super().__init__(lm, codec, slots)
        self.runner = Transcriber(lm, slots, check_inputs=False, **sampling)
        self.consumed = np.zeros(slots, dtype=np.int64)  # client frames taken per slot

    def reset(self, mask: np.ndarray) -> None:
        super().reset(mask)
        self.consumed[mask] = 0

    def step(self, plan) -> list:
        moving = plan.has_frame | plan.first
        if not moving.any():
            return []
        active = _mask(moving, self.device)
        out = self.runner.step(self._encode(plan.pcm, active), active=active)
        self._restart_encoder_after_first(plan)
        self.consumed += plan.has_frame
        if out is None:
            return []
        text, time = out.text.cpu().numpy(), out.time.cpu().numpy()  # the tick's host read
        pause = None if out.pause is None else out.pause.float().cpu().numpy()
        events = []
        for slot in np.flatnonzero(plan.live & moving & (text != UNGENERATED)):
            events.append((slot, TextFrame(token=int(text[slot]), time=float(time[slot]) - FRAME_SECONDS,
                                           step=int(self.steps[slot]), consumed=int(self.consumed[slot]),
                                           pause=None if pause is None else tuple(float(p) for p in pause[slot]))))
            self.steps[slot] += 1
        return events

    def _warm_step(self, codes: torch.Tensor, active: torch.Tensor) -> None:
        self.runner.step(codes, active=active)


class SpeechTask(_Sampling):
    """Kyutai TTS: words in (`TextIn`, then `EndOfInput`), voice and word times out. A slot steps only
    when its padding machine has enough words queued (or its text ended): the rest wait, untouched. The
    first `audio_delay` steps of an utterance are text only (no PCM). The frame after the last word's
    final padding is published with `end=True` (the session then closes).

    `voice`: the default voice (a speaker-embedding file or tensor) for a model that speaks in a given
    voice; a session's `VoiceIn` replaces it for that session."""

    kind = "tts"

    idle = "pause"

    def __init__(self, lm, codec, slots: int, voice=None, cfg: float | None = 2.0, tokenizer=None, cfg_coef: float = 1.0,
                 **sampling):
        from antiphon.lm.tasks import Speaker

        self.lm, self.codec, self.slots, self.device = lm, codec, slots, lm.device
        cfg_value = cfg if lm.is_conditioned else None
        self.runner = Speaker(lm, slots, voice=voice, cfg=cfg_value, tokenizer=tokenizer, cfg_coef=cfg_coef, **sampling)
        self.default_voice = voice
        self.own_voice = np.zeros(slots, dtype=bool)  # slots whose session gave its own voice (VoiceIn)
        _check_codec(lm, codec, lm.config.n_q - lm.config.dep_q)

    def reset(self, mask: np.ndarray) -> None:
        m = _mask(mask, self.device)
        for slot in np.flatnonzero(mask & self.own_voice):  # back to the default voice for the next session
            self.runner.set_voice(int(slot), self.default_voice)
        self.own_voice[mask] = False
        self.codec.reset_streaming(m)
        self.runner.reset(m)

    def step(self, plan) -> list:
        for slot, item in plan.inputs:
            self._take(slot, item)
        waiting = np.array(self.runner.waiting)
        moving = plan.live & ~waiting
        if not moving.any():
            return []
        frame = self.runner.step(active=_mask(moving, self.device))
        pcm = _decode(self.codec, frame.audio, frame.ready)
        ready, last, pcm = frame.ready.cpu().numpy(), frame.last.cpu().numpy(), pcm.float().cpu().numpy()
        words: dict[int, list[TimedWord]] = {}
        for w in frame.words:
            words.setdefault(w.slot, []).append(TimedWord(w.text, w.start, w.stop))
        events = []
        for slot in np.flatnonzero(moving):
            said = tuple(words.get(int(slot), ()))
            if ready[slot] or said or last[slot]:
                events.append((slot, VoiceFrame(pcm=pcm[slot].copy() if ready[slot] else None, words=said,
                                                end=bool(last[slot]))))
        return events

    def check_voice(self, embedding: np.ndarray) -> None:
        """Raise InputError unless a VoiceIn of `embedding` [1, C, T] would be taken (the network side calls
        this before submitting one: a voice the model cannot take must fail its session, not the tick)."""
        self.runner.check_voice(torch.tensor(embedding))  # a copy: the network buffer is read-only

    def _take(self, slot: int, item) -> None:
        if isinstance(item, TextIn):
            self.runner.push(slot, item.text)
        elif isinstance(item, EndOfInput):
            self.runner.end(slot)
        elif isinstance(item, VoiceIn):
            self.runner.set_voice(slot, torch.tensor(item.embedding))
            self.own_voice[slot] = True
            self.runner.reset(_mask(np.arange(self.slots) == slot, self.device))

    def warmup(self, ticks: int) -> None:
        everything = torch.ones(self.slots, dtype=torch.bool, device=self.device)
        for _ in range(ticks):
            _decode(self.codec, self.runner.step(active=everything).audio, everything)
        self.reset(np.ones(self.slots, dtype=bool))
