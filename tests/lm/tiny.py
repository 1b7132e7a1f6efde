"""Tiny LMs for the tests: each published family's architecture at a small size, random weights."""

from __future__ import annotations

import dataclasses

import torch

from antiphon.lm import LM, LMConfig

MOSHI = LMConfig(dim=32, num_heads=4, num_layers=2, context=5, text_card=40, n_q=4, dep_q=2, card=24,
                 delays=(0, 0, 1, 0, 1), depformer_dim=16, depformer_num_heads=2, depformer_num_layers=2,
                 depformer_dim_feedforward=66, tokenizer_name="tok.model", mimi_name="mimi.safetensors")
STT = dataclasses.replace(MOSHI, n_q=6, dep_q=0, delays=(0,) * 7, extra_heads_num_heads=2, max_period=100000.0,
                          model_type="stt")
HIBIKI = dataclasses.replace(MOSHI, delays=(0, 0, 2, 0, 2), model_type="hibiki")
TTS = dataclasses.replace(MOSHI, n_q=4, dep_q=4, delays=(0, 0, 2, 2, 2), depformer_weights_per_step_schedule=(0, 1, 1, 2),
                          depformer_low_rank_embeddings=8, demux_second_stream=True, depformer_pos_emb="sin",
                          depformer_norm="layer_norm", layer_scale=0.1, kv_repeat=2)
FAMILIES = {"moshi": MOSHI, "stt": STT, "hibiki": HIBIKI, "tts": TTS}

# Conditioned families, with the released configs' conditioners at a small size (reference §2.9).
QUALITY = ["very_bad", "bad", "neutral", "good", "very_good"]
HIBIKI_LUT = dataclasses.replace(
    HIBIKI, conditioners={"description": {"type": "lut", "lut": {"n_bins": 31, "dim": 16, "tokenizer": "noop",
                                                                   "possible_values": QUALITY}}},
    fuser={"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": ["description"],
           "prepend": [], "cross": []})
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
SPEAKER_DIM = 12
TTS_CROSS = dataclasses.replace(
    TTS, kv_repeat=1, model_type="tts", cross_attention=True,
    tts_config={"audio_delay": 0.16, "second_stream_ahead": 2},
    conditioners={"speaker_wavs": {"type": "tensor", "tensor": {"dim": SPEAKER_DIM}},
                  "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": CFG_VALUES}},
                  "control": {"type": "lut", "lut": {"dim": 32, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]}}},
    fuser={"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
           "prepend": [], "cross": ["speaker_wavs"]})
CONDITIONED = {"hibiki_lut": HIBIKI_LUT, "tts_cross": TTS_CROSS}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter uniform in +-1/sqrt(fan_in); norms and scales around 1 / their init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.rand(p.shape, generator=g) * 2 - 1
            if name.endswith(("alpha", ".scale")) or (name.endswith(".weight") and p.dim() == 1):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return model


def make_tiny_lm(config: LMConfig = MOSHI, seed: int = 0) -> LM:
    return randomize_(LM(config), seed)


def random_codes(config: LMConfig, batch: int, steps: int, seed: int = 0, zeros: bool = True) -> torch.Tensor:
    """[batch, 1 + n_q, steps] valid tokens; with `zeros`, a few -1 (zero tokens) in text and audio."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, config.card, (batch, config.num_codebooks, steps), generator=g)
    codes[:, 0] = torch.randint(0, config.text_card, (batch, steps), generator=g)
    if config.demux_second_stream:  # half the steps carry a second text token
        second = torch.randint(-1, config.text_card, (batch, steps), generator=g)
        codes[:, 0] += (second + 1) * (config.text_card + 1)
    if zeros:
        codes[0, 0, 2] = -1
        codes[-1, 1, 3] = -1
        codes[0, -1, 1] = -1
    return codes
