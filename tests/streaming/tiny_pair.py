"""Matching tiny LM + codec pairs for the engine and server tests: the tiny LMs of each task with card = the
tiny codec's codebook size (64), and the codec giving the codebooks the LM reads and writes."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from tests.codec.tiny import make_tiny_codec
from tests.lm.tiny import HIBIKI, MOSHI, STT, TTS, make_tiny_lm

PAIR_LM = dataclasses.replace(MOSHI, card=64, mimi_name="codec.safetensors", mimi_config_name="codec.json")
TASK_LMS = {
    "dialogue": PAIR_LM,
    "translation": dataclasses.replace(HIBIKI, card=64),
    "stt": dataclasses.replace(STT, card=64, stt_config={"audio_delay_seconds": 0.16}),
    "tts": dataclasses.replace(TTS, card=64, model_type="tts", tts_config={"audio_delay": 0.16}),
}


@functools.lru_cache(maxsize=4)
def _codec(num_codebooks: int):
    return make_tiny_codec(num_codebooks=num_codebooks)


def make_pair(seed: int = 0, task: str = "dialogue"):
    """(lm, codec): a fresh random LM of `task` and the (cached, stateless outside streaming) tiny codec."""
    config = TASK_LMS[task]
    return make_tiny_lm(config, seed), _codec(config.codec_num_codebooks)


class LetterTokenizer:
    """A stand-in text tokenizer for the tiny models: a letter per token, ids 4..33."""

    def encode(self, word: str) -> list[int]:
        return [4 + (ord(c) % 30) for c in word]

    def decode(self, ids) -> str:
        return "".join(chr(ord("a") + (i - 4) % 26) for i in ids)


def save_pair(directory) -> None:
    """Both in one directory, as a model repository: LM.from_pretrained(directory).codec loads the codec."""
    lm, codec = make_pair()
    lm.save_pretrained(directory)
    weights = codec.save_pretrained(directory)
    weights.with_suffix(".json").rename(Path(directory) / PAIR_LM.mimi_config_name)
    weights.rename(Path(directory) / PAIR_LM.mimi_name)
