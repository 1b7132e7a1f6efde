"""Copy trained models into the package as the embedded defaults (antiphon/models/, MODELS.md): float16
weights, and one codec shared by the language models (their configs name it by a relative path)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from antiphon.codec import Codec
from antiphon.codec.checkpoint import MIMI_FILENAME
from antiphon.embedded import MODELS
from antiphon.errors import InputError
from antiphon.lm import LM

SHARED_CODEC = f"../codec/{MIMI_FILENAME}"


def embed_codec(source: str, models: Path = MODELS) -> Path:
    codec = Codec.from_pretrained(source, num_codebooks=1)  # the weights hold all of its codebooks
    out = models / "codec"
    shutil.rmtree(out, ignore_errors=True)
    return codec.save_pretrained(out, dtype=torch.float16)


def embed_lm(source: str, name: str, models: Path = MODELS) -> Path:
    """An LM repository (from `antiphon train lm`) -> models/NAME, reading and writing the embedded codec."""
    lm = LM.from_pretrained(source)
    shared = Codec.from_pretrained(models / "codec", num_codebooks=1)
    per_stream = lm.config.dep_q or lm.config.n_q
    if shared.config.codebook_size != lm.config.card or shared.config.n_q < per_stream:
        raise InputError(f"{source} reads {per_stream} codebooks of {lm.config.card} entries; the embedded codec "
                         f"has {shared.config.n_q} of {shared.config.codebook_size}: embed its own codec first")
    out = models / name
    shutil.rmtree(out, ignore_errors=True)
    lm.config = dataclasses.replace(lm.config, mimi_name=SHARED_CODEC,
                                    mimi_config_name=str(Path(SHARED_CODEC).with_suffix(".json")))
    weights = lm.half().save_pretrained(out)
    shutil.copy(lm.source.fetch(lm.config.tokenizer_name), out / lm.config.tokenizer_name)
    return weights
