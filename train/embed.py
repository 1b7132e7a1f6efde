"""Copy trained models into the package as the embedded defaults (antiphon/models/, MODELS.md): float16
weights, or for a language model int8 ones (Kyutai's q8 format, which the loader dequantizes: every matrix,
the embedding tables included, int8 with a float32 scale per row; vectors stay float16), and one codec
shared by the language models (their configs name it by a relative path). A model fine-tuned with
low-rank adapters from an embedded one can be stored as its adapters alone, its config naming the other
model's weights (`embed_adapters`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from antiphon.codec import Codec
from antiphon.codec.checkpoint import MIMI_FILENAME
from antiphon.checkpoint_io import read_safetensors
from antiphon.embedded import MODELS
from antiphon.errors import InputError
from antiphon.lm import LM
from antiphon.lm.checkpoint import Source, read_config
from antiphon.lm.config import LORA_NAME
from antiphon.lm.weight_formats import SCALE, quantize

logger = logging.getLogger(__name__)

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
    _drop_adapters_of(name, models)
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


def embed_adapters(source: str, name: str, base: str, models: Path = MODELS) -> Path:
    """A LoRA run's model (`antiphon train lm --init embedded:BASE --lora-rank R`: the base weights as
    stored + lora.safetensors) -> models/NAME: the adapters in float16 and a config.json whose weights are
    embedded model BASE's (`../BASE/...`); loading merges them. The run's base weights must be BASE's own."""
    where, _ = Source.parse(source)
    config, stored = read_config(where)
    if not stored.lora:
        raise InputError(f"{source} holds no LoRA adapters (its config.json does not say \"lora\": true)")
    base_dir = models / base
    if not (base_dir / "config.json").is_file():
        raise InputError(f"there is no embedded {base} model in {models}")
    base_config, base_stored = read_config(Source(directory=base_dir))
    if (where.fetch(config.moshi_name).read_bytes() != (base_dir / base_config.moshi_name).read_bytes()
            or stored.quantize != base_stored.quantize):
        raise InputError(f"the adapters of {source} were trained on other weights than the embedded {base} "
                         f"model's: train them with --init embedded:{base}")
    adapters = _nonzero_adapters(read_safetensors(where.fetch(stored.lora_name)))
    tokenizer = where.fetch(config.tokenizer_name).read_bytes()
    out = models / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file(adapters, str(out / LORA_NAME))
    (out / config.tokenizer_name).write_bytes(tokenizer)
    cfg = json.loads(where.fetch("config.json").read_text())
    cfg |= {"moshi_name": f"../{base}/{base_config.moshi_name}", "mimi_name": base_config.mimi_name,
            "mimi_config_name": base_config.mimi_config_name, "lora_name": LORA_NAME}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out / LORA_NAME


def _nonzero_adapters(adapters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In float16, without the pairs whose lora_B is zero (no update: a run's export holds one for every
    Linear it did not adapt, for Kyutai's loader); other tensors kept."""
    zero = {k.removesuffix(".lora_B.weight") for k, v in adapters.items() if k.endswith(".lora_B.weight") and not v.any()}
    return {k: v.half() for k, v in adapters.items()
            if not (k.endswith((".lora_A.weight", ".lora_B.weight")) and k.rsplit(".", 2)[0] in zero)}


def _drop_adapters_of(name: str, models: Path) -> None:
    """Embedded models stored as adapters on NAME's weights (`embed_adapters`) do not fit new weights: they go,
    with a warning to train them again."""
    for config in sorted(models.glob("*/config.json")):
        if json.loads(config.read_text()).get("moshi_name", "").startswith(f"../{name}/"):
            logger.warning("removed the embedded %s model: its adapters were trained on the %s model's old "
                           "weights; train them again on the new ones and embed them", config.parent.name, name)
            shutil.rmtree(config.parent)
