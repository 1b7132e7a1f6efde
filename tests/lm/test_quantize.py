"""Weight-only int8 / int4 quantization of a loaded LM (lm/quantize.py): which weights, how close the
quantized model's logits stay, loading with quantize=, and errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from antiphon.errors import InputError
from antiphon.lm import LM
from antiphon.lm.quantize import quantize_lm
from antiphon.quantize import QuantizedWeight

from .tiny import MOSHI, make_tiny_lm, random_codes

# widths 64 (dim) and 64 (gated hidden of 1.5 x 64): int4 groups of 32 fit both
WIDE = dataclasses.replace(MOSHI, dim=64, hidden_scale=1.5)


def logits(lm: LM, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = lm(codes)
    return torch.cat([out.text_logits[out.text_mask].flatten(), out.logits[out.mask].flatten()])


@pytest.mark.parametrize("mode, group_size, bound", [("int8", 128, 0.02), ("int4", 32, 0.25)])
def test_quantized_logits_stay_close(mode, group_size, bound):
    codes = random_codes(WIDE, 2, 6)
    lm = make_tiny_lm(WIDE)
    expected = logits(lm, codes)
    assert quantize_lm(lm, mode, group_size) == 4 * WIDE.num_layers
    got = logits(lm, codes)
    error = ((got - expected).norm() / expected.norm()).item()
    assert 0 < error < bound, error  # changed (the weights are quantized), but little


def test_quantized_weights_replace_the_temporal_linears_only():
    lm = make_tiny_lm(WIDE)
    depformer = {k: v.clone() for k, v in lm.state_dict().items() if k.startswith("depformer")}
    quantize_lm(lm, "int8")
    state = lm.state_dict()
    assert state["transformer.layers.0.self_attn.in_proj_weight.q"].dtype == torch.int8
    assert state["transformer.layers.1.gating.linear_out.weight.scale"].shape == (WIDE.dim,)
    assert not any(k.endswith("in_proj_weight") and k.startswith("transformer.") for k in state)
    assert all(torch.equal(state[k], v) for k, v in depformer.items())
    assert isinstance(lm.transformer.layers[0].self_attn.out_proj.weight, QuantizedWeight)


def test_a_quantized_model_streams(tmp_path):
    lm = make_tiny_lm(WIDE)
    lm.save_pretrained(tmp_path)
    quantized = LM.from_pretrained(tmp_path, quantize="int4", group_size=32, kv_dtype="int8")
    assert isinstance(quantized.transformer.layers[0].self_attn.in_proj_weight, QuantizedWeight)
    assert quantized.transformer.kv_dtype == "int8"
    gen = quantized.generator(1, temp=0.0, temp_text=0.0)
    inputs = random_codes(WIDE, 1, 8, zeros=False)[:, 1 + WIDE.dep_q:]
    frames = [out for t in range(8) if (out := gen.step(inputs[:, :, t: t + 1])) is not None]
    assert frames and all(f.shape == (1, 1 + WIDE.dep_q, 1) for f in frames)


def test_bad_quantization_requests(tmp_path):
    with pytest.raises(InputError, match="unknown kv_dtype 'fp8'"):
        LM.from_pretrained(tmp_path, kv_dtype="fp8")
    with pytest.raises(InputError, match="unknown quantization 'int3'"):
        quantize_lm(make_tiny_lm(WIDE), "int3")
    with pytest.raises(InputError, match="group size 48 must be even and divide every input width"):
        quantize_lm(make_tiny_lm(WIDE), "int4", 48)
