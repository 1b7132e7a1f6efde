"""Kyutai TTS pieces that live on the host (reference: kyutai-stt-tts-hibiki-unmute §2.2-2.3): words to
entries, the padding state machine that turns the model's WORD / PAD actions into the text it is fed,
and speaker embeddings from kyutai/tts-voices files.

The machine, per slot, once per step:
- before the step, `choices(step)` -> (token if the model samples anything but WORD, token if it samples
  WORD): the generator picks one on the device (`LMGenerator.step(text=[B, 2])`), no host read inside;
- after the step, `advance(step, sampled)` with the token the model sampled commits the same decision.

Its rules: `initial_padding` forced PADs first; a popped word's tokens are fed one per step and no new
word is allowed meanwhile, then `padding` more forced PADs (padding_between + len(tokens) - 1); at most
`max_padding` PADs in a row, then a WORD is forced; a WORD with no word left marks `end_step`. With a
lookahead stream (`second_stream_ahead` = l > 0), the tokens of word i + l ride on the second stream while
word i is fed, and the fed token packs both: (second + 1) * (text_card + 1) + main. A slot that has not
ended but has fewer than l + 1 words queued waits: it is fed PAD, and the wait counts against neither
max_padding nor anything else (the reference server skips such a slot's step instead).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

import torch

from antiphon.errors import InputError

FRAME_RATE = 12.5  # steps per second
MAIN, OTHER = 1, 2  # start of a turn of the main / other speaker (the first word of a session gets MAIN)
MAX_SPEAKERS = 5  # speaker slots of the cross-attention source
VOICE_KEY = "speaker_wavs"

_EVENT = re.compile(r'<break\s+time="([0-9]+(?:\.[0-9]*)?)s"\s*/?>|\s+')


@dataclasses.dataclass(frozen=True)
class Entry:
    """One word to say (tokens), or a pause (no tokens), followed by `padding` forced PAD steps."""

    tokens: tuple[int, ...]
    text: str
    padding: int = 0


def normalize(text: str) -> str:
    """The reference's text clean-up: ’ -> ', ':' -> space, parentheses dropped."""
    return text.replace("\u2019", "'").replace(":", " ").replace("(", "").replace(")", "")


def word_padding(padding_between: int, tokens: int) -> int:
    """The steps forced after a word's WORD marker, its `tokens` pieces' steps among them."""
    return max(0, padding_between + tokens - 1) if padding_between > 0 else 0


def text_to_entries(tokenizer, text: str, padding_between: int = 1, first_token: int | None = None) -> list[Entry]:
    """Whole words (split on whitespace) and `<break time="0.5s"/>` pauses -> entries. `first_token`
    (MAIN, OTHER or None) goes before the first word's tokens."""
    entries, line = [], normalize(text)

    def word(w: str) -> None:
        nonlocal first_token
        tokens = list(tokenizer.encode(w))
        if first_token is not None:
            tokens.insert(0, first_token)
            first_token = None
        padding = word_padding(padding_between, len(tokens))
        entries.append(Entry(tuple(tokens), w, padding))

    start = 0
    for match in _EVENT.finditer(line):
        if match.start() > start:
            word(line[start: match.start()])
        if match.group(1):
            entries.append(Entry((), "", int(round(float(match.group(1)) * FRAME_RATE))))
        start = match.end()
    if start < len(line):
        word(line[start:])
    return entries


@dataclasses.dataclass(frozen=True)
class WordSteps:
    """A word said: the step whose fed token carried its WORD marker (`start`), and the step after the one
    that fed its last token (`stop`)."""

    text: str
    start: int
    stop: int


class PaddingMachine:
    """The padding state machine of one slot (module docstring). Token ids: new_word 0, pad 3 by default
    (the config's existing_text_end_padding_id / existing_text_padding_id)."""

    def __init__(self, text_card: int, second_stream_ahead: int = 0, max_padding: int = 8, initial_padding: int = 2,
                 new_word: int = 0, pad: int = 3):
        self.card, self.ahead_by = text_card + 1, second_stream_ahead
        self.max_padding, self.new_word, self.pad = max_padding, new_word, pad
        self.entries: collections.deque[Entry] = collections.deque()
        self.feeding: collections.deque[int] = collections.deque()  # tokens of the current word still to feed
        self.ahead: collections.deque[int] = collections.deque()  # lookahead tokens still to feed
        self.forced = initial_padding  # PADs still forced
        self.budget = initial_padding  # PADs still allowed before a WORD is forced
        self.ended = False  # no more words will come
        self.end_step: int | None = None  # the step that asked for a word past the last one
        self.said: list[WordSteps] = []  # words whose last token has been fed, in order
        self._word: tuple[str, int] | None = None  # the word being fed: (text, start step)

    # ------------------------------------------------------------------ input
    def push(self, entries: list[Entry]) -> None:
        if self.ended:
            raise InputError("this slot's text has ended; reset it before pushing more words")
        self.entries.extend(entries)

    def end(self) -> None:
        self.ended = True

    @property
    def waiting(self) -> bool:
        """Not ended and fewer than lookahead + 1 words queued: the next word cannot be fed faithfully."""
        return not self.ended and len(self.entries) < self.ahead_by + 1

    # ------------------------------------------------------------------ per step
    def choices(self, step: int) -> tuple[int, int]:
        """(token fed if the model samples anything but WORD, token fed if it samples WORD); no change."""
        return self._copy()._apply(step, self.pad), self._copy()._apply(step, self.new_word)

    def advance(self, step: int, sampled: int) -> int:
        """Commit this step's decision given the token the model sampled; returns the token fed."""
        return self._apply(step, sampled)

    # ------------------------------------------------------------------ the rules
    def _apply(self, step: int, sampled: int) -> int:
        word = sampled == self.new_word
        stall = False
        if self.feeding or self.forced > 0:
            word = False
        elif self.waiting:
            word, stall = False, True
        elif self.budget <= 0:
            word = True
        marker = False  # a WORD marker is fed at this step
        if word:
            if self.entries:
                entry = self.entries.popleft()
                if entry.tokens:
                    self.feeding.extend(entry.tokens)
                    self._word = (entry.text, step)
                    if self.ahead_by:
                        self.ahead.extend(self._tokens_ahead())
                    self.budget = self.max_padding
                    marker = True
                self.forced = entry.padding
                word = marker  # a pause reads as a PAD
            else:
                marker = bool(self.ahead_by) and self.end_step is None
                word = marker
                if self.end_step is None:
                    self.end_step = step
        if not word and not stall:
            self.budget = max(self.budget - 1, 0)
            self.forced = max(self.forced - 1, 0)
        if word and not self.ahead_by:
            return self.new_word
        main = self._feed(step) if (self.feeding and (marker or not word)) else self.pad
        if not self.ahead_by:
            return main
        if marker:
            second = self.new_word
        else:
            second = self.ahead.popleft() if self.ahead else -1
        return (second + 1) * self.card + main

    def _feed(self, step: int) -> int:
        token = self.feeding.popleft()
        if not self.feeding and self._word is not None:
            self.said.append(WordSteps(self._word[0], self._word[1], step + 1))
            self._word = None
        return token

    def _tokens_ahead(self) -> tuple[int, ...]:
        """The tokens of the word `ahead_by` words after the one just popped (pauses skipped)."""
        words = [e for e in self.entries if e.tokens]
        return words[self.ahead_by - 1].tokens if len(words) >= self.ahead_by else ()

    def _copy(self) -> PaddingMachine:
        other = object.__new__(PaddingMachine)
        other.__dict__.update(self.__dict__)
        for name in ("entries", "feeding", "ahead"):
            setattr(other, name, collections.deque(getattr(self, name)))
        other.said = list(self.said)
        return other


# ---------------------------------------------------------------------------------------- voices
def load_voice(voice, dim: int | None = None) -> torch.Tensor:
    """A speaker embedding as in kyutai/tts-voices -> [T, C] float32. `voice`: a path to a safetensors
    file holding `speaker_wavs` [1, C, T] (C = 512 and T = 125 for 10 s in the released files), or that
    tensor ([1, C, T] or [C, T]). `dim`: the C the model's speaker conditioner takes."""
    name = "the voice tensor"
    if isinstance(voice, (str, Path)):
        voice, name = _read_voice_file(Path(voice)), f"voice file {voice}"
    if not isinstance(voice, torch.Tensor):
        raise InputError(f"a voice is a path to a speaker-embedding .safetensors file or a tensor [1, C, T], "
                         f"got {type(voice).__name__}")
    if voice.dim() == 2:
        voice = voice[None]
    if voice.dim() != 3 or voice.shape[0] != 1 or voice.shape[2] < 1 or not voice.dtype.is_floating_point:
        raise InputError(f"{name}: {VOICE_KEY} must be a float tensor [1, C, T], got {voice.dtype} {list(voice.shape)}")
    if dim is not None and voice.shape[1] != dim:
        raise InputError(f"{name}: the embedding has C = {voice.shape[1]} channels, this model's speaker "
                         f"conditioner takes {dim} (is the voice made for another model?)")
    return voice[0].t().float().contiguous()


def _read_voice_file(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"voice file {path} not found (speaker embeddings are <voice>.<sig>@<epoch>.safetensors "
                         f"files of kyutai/tts-voices)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"voice file {path} is not a readable safetensors file: {e}") from None
    if VOICE_KEY not in tensors:
        raise InputError(f"voice file {path} has no {VOICE_KEY!r} tensor (it has {sorted(tensors)})")
    return tensors[VOICE_KEY]


def speaker_source(voices: list[torch.Tensor], max_speakers: int = MAX_SPEAKERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `max_speakers` voices [T, C] (same T) -> the cross-attention source of one row:
    ([1, max_speakers * T, C], mask bool [1, max_speakers * T]); unused speaker slots are masked."""
    if not 1 <= len(voices) <= max_speakers:
        raise InputError(f"give 1 to {max_speakers} voices, got {len(voices)}")
    steps, dim = voices[0].shape
    if any(v.shape != (steps, dim) for v in voices):
        raise InputError(f"the voices must have the same shape [T, C], got {[list(v.shape) for v in voices]}")
    source = torch.zeros(max_speakers, steps, dim)
    mask = torch.zeros(max_speakers, steps, dtype=torch.bool)
    for i, v in enumerate(voices):
        source[i], mask[i] = v, True
    return source.reshape(1, -1, dim), mask.reshape(1, -1)
