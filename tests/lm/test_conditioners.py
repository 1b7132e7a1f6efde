"""Conditioning (lm.conditioners) without the oracle: config checks, `lm.condition` inputs, loading."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from antiphon.errors import CheckpointError, InputError
from antiphon.lm import LM, LMConfig
from antiphon.lm.conditioners import Condition

from .tiny import HIBIKI_LUT, MOSHI, SPEAKER_DIM, TTS_CROSS, make_tiny_lm, random_codes


@pytest.fixture(scope="module")
def tts():
    return make_tiny_lm(TTS_CROSS, seed=2)


def _raw(config: LMConfig) -> dict:
    return json.loads(json.dumps(config.to_kyutai()))


@pytest.mark.parametrize("change, message", [
    (lambda r: r["fuser"].update(prepend=["cfg"]), "prepend"),
    (lambda r: r["conditioners"]["cfg"].update(type="t5"), "type 't5'"),
    (lambda r: r["conditioners"]["cfg"]["lut"].update(tokenizer="whitespace"), "tokenizer"),
    (lambda r: r["conditioners"]["cfg"]["lut"].update(output_bias=True), "output_bias"),
    (lambda r: r["conditioners"]["cfg"]["lut"].update(word_dropout=0.1), "word_dropout"),
    (lambda r: r["fuser"].update(sum=["control", "cfg", "genre"]), "'genre'"),
    (lambda r: r["fuser"].update(sum=["speaker_wavs"]), "cannot be fused by 'sum'"),
    (lambda r: r.update(cross_attention=False), "disagree"),
    (lambda r: r.update(kv_repeat=2), "kv_repeat"),
    (lambda r: r.pop("fuser"), "come together"),
    (lambda r: r["fuser"].update(input_interpolate=[]), "input_interpolate"),
])
def test_unsupported_conditioning_is_a_checkpoint_error(change, message):
    raw = _raw(TTS_CROSS)
    change(raw)
    with pytest.raises(CheckpointError, match=message):
        LMConfig.from_kyutai(raw)


def test_config_round_trip_and_released_names():
    assert LMConfig.from_kyutai(_raw(TTS_CROSS)) == TTS_CROSS
    assert "conditioners" not in MOSHI.to_kyutai()  # an unconditioned config stays as it was
    hibiki = LMConfig.from_kyutai(_raw(HIBIKI_LUT) | {"cross_attention": []})  # as released: an empty list
    assert not hibiki.cross_attention
    shapes = {k: tuple(v.shape) for k, v in LM(TTS_CROSS).state_dict().items() if k.startswith("condition_provider")}
    assert shapes == {
        "condition_provider.conditioners.speaker_wavs.learnt_padding": (1, 1, 32),
        "condition_provider.conditioners.speaker_wavs.output_proj.weight": (32, SPEAKER_DIM),
        "condition_provider.conditioners.cfg.learnt_padding": (1, 1, 32),
        "condition_provider.conditioners.cfg.output_proj.weight": (32, 16),
        "condition_provider.conditioners.cfg.embed.weight": (8, 16),
        "condition_provider.conditioners.control.learnt_padding": (1, 1, 32),
        "condition_provider.conditioners.control.output_proj.weight": (32, 32),
        "condition_provider.conditioners.control.embed.weight": (2, 32),
    }


def test_condition_values_and_errors(tts):
    speakers = torch.randn(1, 5, SPEAKER_DIM)
    c = tts.condition(2, control="ok", cfg=["2.0", None], speaker_wavs=speakers)
    assert c.sum.shape == (2, 32) and c.cross.shape == (2, 5, 32) and c.sum.dtype == torch.float32
    provider = tts.condition_provider.conditioners
    padding = provider["cfg"].learnt_padding[0, 0] + provider["control"].output_proj.weight @ provider["control"].embed.weight[0]
    torch.testing.assert_close(c.sum[1], padding)  # a dropped label is the learnt padding
    masked = tts.condition(control="ok", cfg="2.0", speaker_wavs=(speakers, torch.zeros(1, 5, dtype=torch.bool)))
    null = tts.condition(control=None, cfg=None, speaker_wavs=(speakers, torch.zeros(1, 5, dtype=torch.bool)))
    torch.testing.assert_close(masked.cross, null.cross)  # masked positions: padding + positions only
    for kwargs, message in [
        ({"control": "ok", "cfg": "2.0"}, "missing \\['speaker_wavs'\\]"),
        ({"control": "ok", "cfg": "5.0", "speaker_wavs": speakers}, "must be one of"),
        ({"control": "ok", "cfg": "2.0", "speaker_wavs": speakers, "genre": "rock"}, "unknown"),
        ({"control": "ok", "cfg": "2.0", "speaker_wavs": torch.randn(1, 5, 3)}, r"\[B, S >= 1, 12\]"),
        ({"control": "ok", "cfg": ["2.0"] * 3, "speaker_wavs": torch.randn(2, 5, SPEAKER_DIM)}, "batch size"),
    ]:
        with pytest.raises(InputError, match=message):
            tts.condition(**kwargs)
    with pytest.raises(InputError, match="no conditioners"):
        make_tiny_lm(MOSHI).condition(description="good")


def test_conditioned_models_need_a_condition(tts):
    codes = random_codes(TTS_CROSS, 2, 4)
    with pytest.raises(InputError, match="is conditioned"):
        tts(codes)
    with pytest.raises(InputError, match="is conditioned"):
        tts.generator(2)
    cond = tts.condition(2, control="ok", cfg="2.0", speaker_wavs=torch.randn(1, 3, SPEAKER_DIM))
    with pytest.raises(InputError, match="2B = 4 rows"):
        tts.generator(2, cfg_coef=2.0, condition=cond)
    with pytest.raises(InputError, match="has 2 rows, expected 3 or 1"):
        tts(random_codes(TTS_CROSS, 3, 4), cond)
    gen = tts.generator(2, cfg_coef=2.0, condition=Condition.cat(cond, cond), temp=0, temp_text=0)
    plain = tts.generator(2, condition=cond, temp=0, temp_text=0)
    for _ in range(5):  # identical null rows: guidance changes nothing
        frame = torch.zeros(2, 0, 1, dtype=torch.long)
        a, b = gen.step(frame), plain.step(frame)
        assert (a is None and b is None) or torch.equal(a, b)


def test_save_load_keeps_conditioners_float32_and_reads_per_step_names(tts, tmp_path):
    tts.save_pretrained(tmp_path)
    loaded = LM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.condition_provider.conditioners["cfg"].embed.weight.dtype == torch.float32
    assert loaded.text_emb.weight.dtype == torch.bfloat16
    speakers = torch.randn(2, 3, SPEAKER_DIM)
    codes = random_codes(TTS_CROSS, 2, 6)
    out = loaded(codes, loaded.condition(control="ok", cfg="1.5", speaker_wavs=speakers))
    want = tts(codes, tts.condition(control="ok", cfg="1.5", speaker_wavs=speakers))
    torch.testing.assert_close(out.logits, want.logits, atol=0.15, rtol=0, equal_nan=True)  # bf16
    # the newer per-step module names of the cross-attention weights load too
    weights = tmp_path / TTS_CROSS.moshi_name
    state = load_file(weights)
    for key in [k for k in state if ".cross_attention." in k]:
        kind = "in_projs" if key.endswith("in_proj_weight") else "out_projs"
        state[key.rsplit(".cross_attention.", 1)[0] + f".cross_attention.{kind}.0.weight"] = state.pop(key)
    save_file(state, str(weights))
    again = LM.from_pretrained(tmp_path)
    assert torch.equal(again.transformer.layers[1].cross_attention.in_proj_weight,
                       tts.transformer.layers[1].cross_attention.in_proj_weight)


def test_hibiki_quality_changes_the_output():
    lm = make_tiny_lm(HIBIKI_LUT, seed=4)
    codes = random_codes(HIBIKI_LUT, 1, 6)
    good, bad = (lm(codes, lm.condition(description=q)).text_logits for q in ("very_good", "very_bad"))
    assert not torch.allclose(good, bad, equal_nan=True)
    assert dataclasses.replace(HIBIKI_LUT).conditioning[1].sum == ("description",)
