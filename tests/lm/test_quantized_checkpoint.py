"""Kyutai's q8 checkpoints (`"quantize": true`, `model.q8.safetensors`): int8 Linear weights with their
float32 row scales `<name>_scb` (bitsandbytes' vector-wise format), dequantized at load. The reference's
quantized path needs bitsandbytes (CUDA), so these files are written here by the format's formula."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from antiphon.errors import CheckpointError
from antiphon.lm import LM
from antiphon.lm.checkpoint import antiphon_to_released

from .tiny import MOSHI, TTS, make_tiny_lm, random_codes

Q8 = "model.q8.safetensors"
_TABLE = re.compile(r"^(emb\.\d+|text_emb|depformer_emb\.\d+|depformer_text_emb)\.weight$")


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (int8 [out, in], scales float32 [out]): q = round(127 W / absmax_row), scb = absmax_row."""
    scb = w.float().abs().amax(dim=1)
    return torch.round(w.float() * 127 / scb[:, None]).to(torch.int8), scb


def dequantized(q: torch.Tensor, scb: torch.Tensor) -> torch.Tensor:
    return q.float() * scb[:, None] / 127


def is_linear(key: str, tensor: torch.Tensor) -> bool:
    """The reference quantizes every Linear: every released matrix but the embedding tables."""
    return key.endswith("weight") and tensor.dim() == 2 and not _TABLE.match(key)


def per_step_names(state: dict[str, torch.Tensor], sets: int) -> dict[str, torch.Tensor]:
    """Fused attention weights and their scales -> `in_projs.{i}.weight[_scb]` / `out_projs.{i}.weight[_scb]`
    (newer state dicts). Rows are quantized one by one, so splitting them keeps their scales."""
    out = {}
    for key, tensor in state.items():
        match = re.match(r"^(.*\.self_attn)\.(in_proj_weight|out_proj\.weight)(_scb)?$", key)
        if match is None:
            out[key] = tensor
            continue
        parts = tensor.chunk(sets if key.startswith("depformer.") else 1)
        kind = "in_projs" if match.group(2) == "in_proj_weight" else "out_projs"
        out.update({f"{match.group(1)}.{kind}.{i}.weight{match.group(3) or ''}": p.contiguous()
                    for i, p in enumerate(parts)})
    return out


def write_q8(lm: LM, directory: Path, per_step: bool = False) -> dict[str, torch.Tensor]:
    """Save `lm` as a q8 repository; returns the expected (dequantized) weights under released names."""
    config = dataclasses.replace(lm.config, moshi_name=Q8)
    state = {k: v.detach().contiguous() for k, v in antiphon_to_released(lm).items()}
    expected, stored = {}, {}
    for key, tensor in state.items():
        if is_linear(key, tensor):
            q, scb = quantize_rows(tensor)
            expected[key] = dequantized(q, scb)
            stored[key], stored[key + "_scb"] = q, scb
        else:
            expected[key] = stored[key] = tensor.contiguous()
    if per_step:
        stored = per_step_names(stored, config.depformer_weight_sets)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(stored, str(directory / Q8))
    (directory / "config.json").write_text(json.dumps(config.to_kyutai() | {"quantize": True}))
    return expected


def _rewrite(directory: Path, change) -> None:
    state = load_file(str(directory / Q8))
    change(state)
    save_file(state, str(directory / Q8))


@pytest.mark.parametrize("config, per_step", [(MOSHI, False), (MOSHI, True), (TTS, False)],
                         ids=["moshi", "moshi-per-step-names", "tts"])
def test_q8_weights_are_dequantized_exactly(config, per_step, tmp_path):
    lm = make_tiny_lm(config)
    expected = write_q8(lm, tmp_path, per_step)
    loaded = LM.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.config == config  # a plain model, saved as model.safetensors
    got = antiphon_to_released(loaded)
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    assert sum(is_linear(k, v) for k, v in expected.items()) >= 20


@pytest.mark.parametrize("config", [MOSHI, TTS], ids=["moshi", "tts"])
def test_q8_logits_are_close_to_the_float_model(config, tmp_path):
    lm = make_tiny_lm(config)
    write_q8(lm, tmp_path)
    codes = random_codes(config, batch=2, steps=9)
    a, b = lm(codes), LM.from_pretrained(tmp_path)(codes)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.text_mask, b.text_mask)
    for x, y in ((a.text_logits, b.text_logits), (a.logits, b.logits)):
        x, y = x.nan_to_num(), y.nan_to_num()
        # Each weight moves by at most absmax_row / 254 (0.4 % of its row's largest); through the
        # layers the logits move by about 1 % of their largest (measured: 0.7 to 1.2 %). Bound: 5 %.
        assert not torch.equal(x, y)  # the int8 path ran
        assert (x - y).abs().max() < 0.05 * x.abs().max()


def test_q8_dequantizes_to_the_requested_dtype(tmp_path):
    expected = write_q8(make_tiny_lm(MOSHI), tmp_path)
    loaded = LM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    key = "transformer.layers.0.gating.linear_in.weight"
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(antiphon_to_released(loaded)[key], expected[key].to(torch.bfloat16))


def test_a_q8_model_saves_a_plain_checkpoint(tmp_path):
    lm = make_tiny_lm(MOSHI)
    write_q8(lm, tmp_path / "q8")
    loaded = LM.from_pretrained(tmp_path / "q8")
    weights = loaded.save_pretrained(tmp_path / "plain")
    assert weights.name == "model.safetensors"
    assert "quantize" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    codes = random_codes(MOSHI, 1, 5)
    again = LM.from_pretrained(tmp_path / "plain")
    assert torch.equal(again(codes).logits.nan_to_num(), loaded(codes).logits.nan_to_num())


GATE = "transformer.layers.0.gating.linear_in.weight"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop(GATE + "_scb"), f"the int8 weight {GATE} has no scale {GATE}_scb"),
    (lambda s: s.update({GATE + "_scb": torch.ones(3)}),
     f"{GATE}_scb is torch.float32 [3], expected one float per row"),
    (lambda s: s.update({"text_linear.weight": torch.zeros(40, 32)}),
     "the scale text_linear.weight_scb belongs to no int8 weight (text_linear.weight: a torch.float32 tensor)"),
    (lambda s: s.update({"out_norm.alpha_scb": torch.ones(1)}),
     "the scale out_norm.alpha_scb belongs to no int8 weight"),
    (lambda s: [s.update({k: v.float()}) for k, v in list(s.items()) if v.dtype == torch.int8],
     "says \"quantize\": true but .* holds no int8 tensors"),
], ids=["no-scale", "scale-shape", "scale-of-float", "scale-of-norm", "no-int8"])
def test_bad_q8_files_are_named(change, message, tmp_path):
    write_q8(make_tiny_lm(MOSHI), tmp_path)
    _rewrite(tmp_path, change)
    with pytest.raises(CheckpointError, match=message if ".*" in message else re.escape(message)):
        LM.from_pretrained(tmp_path)


def test_int8_weights_need_quantize_true(tmp_path):
    write_q8(make_tiny_lm(MOSHI), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(raw | {"quantize": False}))
    with pytest.raises(CheckpointError, match="holds int8 weights or scales .* does not say \"quantize\": true"):
        LM.from_pretrained(tmp_path)
