"""Copy trained models into the package as the embedded defaults (antiphon/models/, MODELS.md): float16
weights, or for a language model int8 ones (Kyutai's q8 format, which the loader dequantizes: every matrix,
the embedding tables included, int8 with a float32 scale per row; vectors stay float16), and one codec
shared by the language models (their configs name it by a relative path)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from antiphon.codec import Codec
from antiphon.codec.checkpoint import MIMI_FILENAME
from antiphon.embedded import MODELS
from antiphon.errors import InputError
from antiphon.lm import LM
from antiphon.lm.weight_formats import SCALE, quantize

SHARED_CODEC = f"../codec/{MIMI_FILENAME}"


def embed_codec(source: str, models: Path = MODELS) -> Path:
    codec = Codec.from_pretrained(source, num_codebooks=1)  # the weights hold all of its codebooks
    out = models / "codec"
    shutil.rmtree(out, ignore_errors=True)
    return codec.save_pretrained(out, dtype=torch.float16)


def embed_lm(source: str, name: str, models: Path = MODELS, int8: bool = False) -> Path:
    """An LM repository (from `antiphon train lm`) -> models/NAME, reading and writing the embedded codec;
    with `int8`, its matrices in int8 (half the size of float16)."""
    lm = LM.from_pretrained(source)
    shared = Codec.from_pretrained(models / "codec", num_codebooks=1)
    per_stream = lm.config.dep_q or lm.config.n_q
    if shared.config.codebook_size != lm.config.card or shared.config.n_q < per_stream:
        raise InputError(f"{source} reads {per_stream} codebooks of {lm.config.card} entries; the embedded codec "
                         f"has {shared.config.n_q} of {shared.config.codebook_size}: embed its own codec first")
    tokenizer = lm.source.fetch(lm.config.tokenizer_name).read_bytes()  # before `out` goes: it may be the source
    out = models / name
    shutil.rmtree(out, ignore_errors=True)
    lm.config = dataclasses.replace(lm.config, mimi_name=SHARED_CODEC,
                                    mimi_config_name=str(Path(SHARED_CODEC).with_suffix(".json")))
    weights = lm.half().save_pretrained(out)
    if int8:
        _to_q8(weights, out / "config.json")
    (out / lm.config.tokenizer_name).write_bytes(tokenizer)
    return weights


def _to_q8(weights: Path, config: Path) -> None:
    """Rewrite a saved LM's weights in the q8 format: each matrix int8 with its row scales (`<name>_scb`),
    and `"quantize": true` in its config.json."""
    state = load_file(str(weights))
    q8 = {}
    for key, tensor in state.items():
        if tensor.dim() == 2 and tensor.is_floating_point():
            q8[key], q8[key + SCALE] = quantize(tensor)
        else:
            q8[key] = tensor
    save_file(q8, str(weights))
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps(cfg | {"quantize": True}, indent=2))
