"""A matching tiny LM + codec for the engine and server tests: the Moshi tiny LM with card = the tiny
codec's codebook size (64), and the codec giving max(dep_q, n_q - dep_q) = 2 codebooks."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from tests.codec.tiny import make_tiny_codec
from tests.lm.tiny import MOSHI, make_tiny_lm

PAIR_LM = dataclasses.replace(MOSHI, card=64, mimi_name="codec.safetensors", mimi_config_name="codec.json")


@functools.lru_cache(maxsize=1)
def _codec():
    return make_tiny_codec(num_codebooks=PAIR_LM.codec_num_codebooks)


def make_pair(seed: int = 0):
    """(lm, codec): a fresh random LM and the (cached, stateless outside streaming) tiny codec."""
    return make_tiny_lm(PAIR_LM, seed), _codec()


def save_pair(directory) -> None:
    """Both in one directory, as a model repository: LM.from_pretrained(directory).codec loads the codec."""
    lm, codec = make_pair()
    lm.save_pretrained(directory)
    weights = codec.save_pretrained(directory)
    weights.with_suffix(".json").rename(Path(directory) / PAIR_LM.mimi_config_name)
    weights.rename(Path(directory) / PAIR_LM.mimi_name)
