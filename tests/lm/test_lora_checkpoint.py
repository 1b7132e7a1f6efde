"""LoRA checkpoints as moshi-finetune writes them: the base weights, config.json with `"lora": true`,
`lora_rank`, `lora_scaling`, `lora_name`, and an adapters file of `<linear>.lora_A.weight` [r, in] and
`<linear>.lora_B.weight` [out, r] under the reference's module names; merged at load as
W + lora_scaling * B @ A. Parity with the reference's own LoRA loader; every bad file named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from antiphon.errors import CheckpointError
from antiphon.lm import LM
from antiphon.lm.checkpoint import antiphon_to_released
from antiphon.lm.weight_formats import reference_linears

from .reference import make_reference_lm, reference_kwargs, save_reference_checkpoint
from .tiny import FAMILIES, MOSHI, TTS, make_tiny_lm, random_codes

RANK, SCALING = 3, 2.0
def write_lora(lm: LM, directory: Path, seed: int = 3, **config_keys) -> dict[str, torch.Tensor]:
    """Save `lm` as the base and random non-zero adapters on every Linear; returns the merged weights
    expected under released names."""
    lm.save_pretrained(directory)
    g = torch.Generator().manual_seed(seed)
    adapters, expected = {}, {}
    for key, weight in antiphon_to_released(lm).items():
        weight = weight.detach().clone()
        for module, rows in reference_linears(key, weight.shape, lm.config.depformer_weight_sets):
            a = (torch.rand(RANK, weight.shape[1], generator=g) * 2 - 1) / weight.shape[1] ** 0.5
            b = (torch.rand(weight[rows].shape[0], RANK, generator=g) * 2 - 1) / RANK ** 0.5
            adapters[f"{module}.lora_A.weight"], adapters[f"{module}.lora_B.weight"] = a, b
            weight[rows] += SCALING * (b @ a)
        expected[key] = weight
    save_file(adapters, str(directory / "lora.safetensors"))
    raw = json.loads((directory / "config.json").read_text())
    keys = {"lora": True, "lora_rank": RANK, "lora_scaling": SCALING, "lora_name": "lora.safetensors"}
    (directory / "config.json").write_text(json.dumps(raw | keys | config_keys))
    return expected


def _rewrite(directory: Path, change) -> None:
    state = load_file(str(directory / "lora.safetensors"))
    change(state)
    save_file(state, str(directory / "lora.safetensors"))


@pytest.mark.parametrize("config", [MOSHI, TTS], ids=["moshi", "tts"])
def test_adapters_are_merged_into_every_linear(config, tmp_path):
    lm = make_tiny_lm(config)
    expected = write_lora(lm, tmp_path)
    loaded = LM.from_pretrained(tmp_path)
    assert loaded.config == config  # the plain architecture
    got = antiphon_to_released(loaded)
    assert got.keys() == expected.keys()
    for key, weight in expected.items():
        torch.testing.assert_close(got[key], weight, atol=1e-6, rtol=0, msg=key)
    assert len(load_file(str(tmp_path / "lora.safetensors"))) >= 40
    codes = random_codes(config, 2, 6)
    assert not torch.allclose(loaded(codes).logits.nan_to_num(), lm(codes).logits.nan_to_num(), atol=1e-2)


def test_default_adapters_name_and_an_explicit_weights_file(tmp_path):
    """moshi-finetune writes `lora.safetensors` and no lora_name; the adapters sit beside the weights."""
    expected = write_lora(make_tiny_lm(MOSHI), tmp_path, lora_name=None)
    loaded = LM.from_pretrained(tmp_path / "model.safetensors")
    key = "depformer.layers.1.self_attn.in_proj_weight"
    torch.testing.assert_close(antiphon_to_released(loaded)[key], expected[key], atol=1e-6, rtol=0)


def test_other_adapter_tensors_replace_the_base_ones(tmp_path):
    """moshi-finetune's ft_embed saves whole trained embeddings (and `frozen_W` of Linears in them)."""
    write_lora(make_tiny_lm(MOSHI), tmp_path)
    table = torch.randn(25, 32)
    _rewrite(tmp_path, lambda s: s.update({"emb.1.weight": table}))
    assert torch.equal(LM.from_pretrained(tmp_path).emb[1].weight, table)


def test_a_lora_model_saves_a_plain_checkpoint(tmp_path):
    write_lora(make_tiny_lm(MOSHI), tmp_path / "lora")
    loaded = LM.from_pretrained(tmp_path / "lora")
    loaded.save_pretrained(tmp_path / "plain")
    assert "lora" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    codes = random_codes(MOSHI, 1, 5)
    again = LM.from_pretrained(tmp_path / "plain")
    assert torch.equal(again(codes).logits.nan_to_num(), loaded(codes).logits.nan_to_num())


GATE = "transformer.layers.0.gating.linear_in"
DEPTH = "depformer.layers.0.self_attn.in_projs"


def pair(module: str, a: list[int], b: list[int]) -> dict[str, torch.Tensor]:
    return {f"{module}.lora_A.weight": torch.zeros(a), f"{module}.lora_B.weight": torch.zeros(b)}


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(pair("emb.0", [RANK, 32], [25, RANK])),
     "the adapter emb.0 has no base Linear (emb.0.weight is not a Linear weight of the model)"),
    (lambda s: s.update(pair("nowhere", [RANK, 32], [8, RANK])),
     "the adapter nowhere has no base Linear"),
    (lambda s: s.update(pair(GATE, [2, 32], [176, 2])),
     f"{GATE}.lora_A [2, 32] and lora_B [176, 2] do not have the config's lora_rank 3"),
    (lambda s: s.pop(f"{GATE}.lora_B.weight"), f"{GATE} has lora_A without lora_B"),
    (lambda s: s.update({f"{GATE}.lora_B.weight": torch.zeros(170, RANK)}),
     f"the adapter {GATE} makes a [170, 32] update, its base weight {GATE}.weight is [176, 32]"),
    (lambda s: s.update(pair(f"{DEPTH}.7", [RANK, 16], [48, RANK])),
     f"the adapter {DEPTH}.7 names a weight set the base depformer.layers.0.self_attn.in_proj_weight [2, 48, 16]"),
    (lambda s: s.update({"emb.0.weight": torch.zeros(3, 32)}), "emb.0.weight [3, 32] replaces no base tensor"),
], ids=["table", "unknown", "rank", "unpaired", "update-shape", "weight-set", "replacement-shape"])
def test_bad_adapters_are_named(change, message, tmp_path):
    write_lora(make_tiny_lm(MOSHI), tmp_path)
    _rewrite(tmp_path, change)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        LM.from_pretrained(tmp_path)


def test_missing_adapters_name_the_path(tmp_path):
    write_lora(make_tiny_lm(MOSHI), tmp_path, lora_name="adapters/run1.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"the LoRA adapters are missing: {tmp_path} has no "
                                                        f"adapters/run1.safetensors")):
        LM.from_pretrained(tmp_path)


@pytest.mark.parametrize("keys, message", [
    ({"lora": False}, "lora_name='lora.safetensors' needs lora: true"),
    ({"lora_rank": 0}, "lora_rank must be a positive integer"),
    ({"lora": "yes"}, "lora must be true or false"),
])
def test_bad_lora_config_is_named(keys, message, tmp_path):
    write_lora(make_tiny_lm(MOSHI), tmp_path, **keys)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        LM.from_pretrained(tmp_path)


@pytest.mark.reference
@pytest.mark.parametrize("family", ["moshi", "tts"])
def test_lora_logits_equal_the_reference(family, tmp_path):
    """The reference's LoRA modules on every nn.Linear, random non-zero adapters saved as moshi-finetune
    does (`lora` keys only); the reference's loader (`get_moshi_lm(lora_weights=...)`) against ours."""
    pytest.importorskip("moshi")
    from moshi.models.loaders import get_moshi_lm
    from moshi.modules.lora import replace_all_linear_with_lora
    from moshi.utils.compile import no_compile

    config = FAMILIES[family]
    reference = make_reference_lm(config, seed=1)
    save_reference_checkpoint(reference, config, tmp_path)
    codes = random_codes(config, batch=3, steps=12, seed=2)
    with torch.no_grad(), no_compile():
        base = reference(codes)
    replace_all_linear_with_lora(reference, RANK, SCALING)
    g = torch.Generator().manual_seed(3)
    adapters = {k: ((torch.rand(v.shape, generator=g) * 2 - 1) / v.shape[-1] ** 0.5).contiguous()
                for k, v in reference.state_dict().items() if ".lora_" in k}
    assert any(".in_projs.1.lora_B" in k for k in adapters)  # per depformer weight set
    assert any("low_rank.lora_A" in k for k in adapters) == (family == "tts")  # the Linears inside embeddings
    save_file(adapters, str(tmp_path / "lora.safetensors"))
    keys = {"lora": True, "lora_rank": RANK, "lora_scaling": SCALING}
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(raw | keys | {"lora_name": "lora.safetensors"}))

    expected_lm = get_moshi_lm(tmp_path / config.moshi_name, lm_kwargs=reference_kwargs(config) | keys, device="cpu",
                               dtype=torch.float32, lora_weights=tmp_path / "lora.safetensors")
    with torch.no_grad(), no_compile():
        expected = expected_lm(codes)
    out = LM.from_pretrained(tmp_path)(codes)
    assert torch.equal(out.mask, expected.mask) and torch.equal(out.text_mask, expected.text_mask)
    torch.testing.assert_close(out.text_logits, expected.text_logits, atol=1e-4, rtol=0, equal_nan=True)
    torch.testing.assert_close(out.logits, expected.logits.float(), atol=1e-4, rtol=0, equal_nan=True)
    assert (out.logits - base.logits).nan_to_num().abs().max() > 0.1  # the adapters matter
