"""Loading and saving the released LM format: key names, sources, companions, every bad checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from antiphon.errors import CheckpointError
from antiphon.lm import LM, LMConfig
from antiphon.lm.checkpoint import antiphon_to_released

from .tiny import MOSHI, TTS, make_tiny_lm, random_codes

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def tiny_lm() -> LM:
    return make_tiny_lm(MOSHI)


@pytest.fixture
def saved(tmp_path, tiny_lm) -> Path:
    tiny_lm.save_pretrained(tmp_path)
    return tmp_path


def _released_keys() -> dict[str, list[int]]:
    rows = [line.split("\t") for line in (DATA / "moshi7b_keys.tsv").read_text().splitlines() if not line.startswith("#")]
    return {key: json.loads(shape) for key, shape, _ in rows}


def _rewrite(directory: Path, change) -> None:
    path = directory / MOSHI.moshi_name
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_moshi_7b_keys_and_shapes_equal_the_released_file():
    with torch.device("meta"):
        lm = LM()
    assert {k: list(v.shape) for k, v in antiphon_to_released(lm).items()} == _released_keys()


@pytest.mark.parametrize("config", [MOSHI, TTS], ids=["moshi", "tts"])
def test_round_trip_through_the_released_format(config, tmp_path):
    lm = make_tiny_lm(config)
    weights = lm.save_pretrained(tmp_path)
    assert weights.name == "model.safetensors" and (tmp_path / "config.json").is_file()
    sets = config.depformer_weight_sets
    assert load_file(str(weights))["depformer.layers.1.self_attn.out_proj.weight"].shape == (sets * 16, 16)
    loaded = LM.from_pretrained(tmp_path)
    assert loaded.config == config and loaded.dtype == torch.float32
    codes = random_codes(config, 2, 7)
    a, b = lm(codes), loaded(codes)
    assert torch.equal(a.logits.nan_to_num(), b.logits.nan_to_num())
    assert torch.equal(a.text_logits.nan_to_num(), b.text_logits.nan_to_num())
    assert torch.equal(LM.from_pretrained(weights)(codes).text_logits.nan_to_num(), a.text_logits.nan_to_num())


def test_per_step_attention_names_are_accepted(saved, tiny_lm):
    def split(state):
        for j in range(MOSHI.depformer_num_layers):
            prefix = f"depformer.layers.{j}.self_attn."
            for fused, each in (("in_proj_weight", "in_projs"), ("out_proj.weight", "out_projs")):
                for i, part in enumerate(state.pop(prefix + fused).chunk(MOSHI.dep_q)):
                    state[f"{prefix}{each}.{i}.weight"] = part.contiguous()
        state["transformer.layers.0.self_attn.in_projs.0.weight"] = state.pop("transformer.layers.0.self_attn.in_proj_weight")
    _rewrite(saved, split)
    codes = random_codes(MOSHI, 1, 5)
    assert torch.equal(LM.from_pretrained(saved)(codes).logits.nan_to_num(), tiny_lm(codes).logits.nan_to_num())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("depformer_emb.0.weight"), "missing tensors: depformer_emb.0.weight"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected tensors: extra.weight"),
    (lambda s: s.update({"out_norm.alpha": torch.zeros(1, 1, 8)}), "misshaped tensors: out_norm.alpha"),
    (lambda s: s.update({"depformer.layers.0.self_attn.in_proj_weight": torch.zeros(48, 16)}),
     "depformer.layers.0.self_attn.in_proj_weight: checkpoint [48, 16], model [96, 16]"),
    (lambda s: s.update({"depformer.layers.0.self_attn.in_projs.3.weight": torch.zeros(48, 16)}), "has steps [3]"),
])
def test_bad_tensors_are_named(saved, change, message):
    _rewrite(saved, change)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LM.from_pretrained(saved)


def test_bad_files(saved, tmp_path):
    (saved / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        LM.from_pretrained(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        LM.from_pretrained(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read LM config"):
        LM.from_pretrained(saved)
    with pytest.raises(CheckpointError, match="LM checkpoint not found"):
        LM.from_pretrained(tmp_path / "nowhere" / "x.safetensors")


def test_no_config_means_moshi_7b(saved, caplog):
    (saved / "config.json").unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError, match="missing tensors"):
        LM.from_pretrained(saved)  # the tiny weights do not fit 7B: refused before allocating 7B
    assert "assuming Moshi 7B" in caplog.text


def test_config_errors_name_the_key(saved, caplog):
    raw = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(raw | {"future_knob": 1}))
    with caplog.at_level(logging.WARNING):
        LM.from_pretrained(saved)
    assert "future_knob" in caplog.text
    for key, value in (("cross_attention", True), ("conditioners", {"description": {}}), ("quantize", True),
                       ("lora_name", "x"), ("norm", "batch_norm"), ("depformer_pos_emb", "alibi")):
        (saved / "config.json").write_text(json.dumps(raw | {key: value}))
        with pytest.raises(CheckpointError, match=key):
            LM.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "num_layers"}))
    with pytest.raises(CheckpointError, match="required key 'num_layers'"):
        LM.from_pretrained(saved)


def test_missing_keys_take_the_reference_defaults():
    cfg = LMConfig.from_kyutai({"dim": 32, "num_heads": 4, "num_layers": 3, "depformer_num_heads": 2,
                                "delays": [0] * 9, "gating": "silu"})
    assert (cfg.norm, cfg.positional_embedding, cfg.depformer_pos_emb, cfg.card, cfg.context) == (
        "layer_norm", "sin", "sin", 1024, None)
    assert (cfg.depformer_num_layers, cfg.depformer_gating) == (3, "silu")  # inherited from the temporal one
    assert LMConfig.from_kyutai(LMConfig().to_kyutai()) == LMConfig()


def test_codec_and_tokenizer_load_lazily(saved, tmp_path):
    lm = LM.from_pretrained(saved)  # the test checkpoint has neither
    with pytest.raises(CheckpointError, match="no codec weights mimi.safetensors"):
        lm.codec
    with pytest.raises(CheckpointError, match="no text tokenizer tok.model"):
        lm.tokenizer
    with pytest.raises(CheckpointError, match="not loaded from a checkpoint"):
        make_tiny_lm(MOSHI).codec


def test_codec_companion(saved):
    from ..codec.tiny import TINY, make_tiny_codec

    weights = make_tiny_codec().save_pretrained(saved / "codec")
    weights.rename(saved / "mimi.safetensors")
    weights.with_suffix(".json").rename(saved / "mimi.json")
    codec = LM.from_pretrained(saved).codec
    assert codec.config == TINY and codec.num_codebooks == 2  # max(dep_q, n_q - dep_q)


def _train_tokenizer(directory: Path, vocab_size: int) -> None:
    spm = pytest.importorskip("sentencepiece")
    text = directory / "corpus.txt"
    text.write_text("\n".join(["hello world", "bonjour le monde", "the model listens and speaks",
                               "quick brown foxes jump over lazy dogs", "zebras quietly vex my wizard",
                               "pack my box with five dozen liquor jugs", "un petit chat gris joue dehors"] * 20))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(directory / "tok"), vocab_size=vocab_size,
                                   minloglevel=2)


def test_tokenizer_companion(saved):
    _train_tokenizer(saved, MOSHI.text_card)
    tokenizer = LM.from_pretrained(saved).tokenizer
    assert tokenizer.vocab_size() == MOSHI.text_card
    assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"


def test_tokenizer_of_another_size_is_refused(saved):
    _train_tokenizer(saved, 30)
    with pytest.raises(CheckpointError, match="has 30 pieces, the LM's text_card is 40"):
        LM.from_pretrained(saved).tokenizer


def test_codec_with_too_few_codebooks_is_refused(tmp_path):
    import dataclasses

    from ..codec.tiny import TINY, make_tiny_codec

    config = dataclasses.replace(MOSHI, n_q=6, dep_q=3, delays=(0, 0, 1, 1, 0, 1, 1))  # needs 3 codebooks
    make_tiny_lm(config).save_pretrained(tmp_path)
    weights = make_tiny_codec(num_codebooks=2, config=dataclasses.replace(TINY, n_q=2)).save_pretrained(tmp_path / "codec")
    weights.rename(tmp_path / "mimi.safetensors")
    weights.with_suffix(".json").rename(tmp_path / "mimi.json")
    with pytest.raises(CheckpointError, match="has 2 codebooks, the LM needs 3"):
        LM.from_pretrained(tmp_path).codec
