"""Loading and saving the released Mimi format: key names, sources, configs, and every bad checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from antiphon.codec import Codec, CodecConfig
from antiphon.codec.checkpoint import MIMI_FILENAME, antiphon_to_released
from antiphon.errors import CheckpointError

from .tiny import TINY, chirp_audio

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_codec):
    directory = tmp_path_factory.mktemp("codec")
    return tiny_codec.save_pretrained(directory)


def _released_keys() -> dict[str, list[int]]:
    rows = [line.split("\t") for line in (DATA / "mimi_keys.tsv").read_text().splitlines() if not line.startswith("#")]
    return {key: json.loads(shape) for key, shape, _ in rows}


def test_full_size_keys_and_shapes_equal_the_released_file():
    with torch.device("meta"):
        codec = Codec()
    state = {k: list(v.shape) for k, v in antiphon_to_released(codec).items()}
    assert state == _released_keys()


def test_round_trip_through_the_released_format(tiny_codec, saved):
    assert saved.name == MIMI_FILENAME and saved.with_suffix(".json").is_file()
    loaded = Codec.from_pretrained(saved, num_codebooks=8)
    wav = chirp_audio(2, 6)
    codes = tiny_codec.encode(wav)
    assert torch.equal(loaded.encode(wav), codes)
    assert torch.equal(loaded.decode(codes), tiny_codec.decode(codes))
    assert loaded.config == TINY


def test_sources_file_directory_and_lm_config(tiny_codec, saved, tmp_path):
    assert Codec.from_pretrained(saved.parent).config == TINY  # a directory with the known file name
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    (lm_dir / "my-mimi.safetensors").write_bytes(saved.read_bytes())
    (lm_dir / "my-mimi.json").write_bytes(saved.with_suffix(".json").read_bytes())
    (lm_dir / "other-mimi.safetensors").write_bytes(b"")
    (lm_dir / "config.json").write_text(json.dumps({"mimi_name": "my-mimi.safetensors", "dim": 16}))
    codec = Codec.from_pretrained(lm_dir, num_codebooks=4)
    assert codec.num_codebooks == 4 and codec.config == TINY


def test_legacy_and_new_module_names_load_the_same(tiny_codec, saved, tmp_path):
    state = load_file(str(saved))
    renamed = {}
    for key, value in state.items():
        key = key.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
        key = key.replace("self_attn.out_proj.weight", "self_attn.out_projs.0.weight")
        key = key.replace("_codebook.embedding_sum", "_codebook.embed_avg").replace("cluster_usage", "cluster_size")
        key = key.replace("_codebook._initialized", "_codebook.inited")
        renamed[key] = value
    path = tmp_path / "renamed.safetensors"
    save_file(renamed, str(path))
    (tmp_path / "renamed.json").write_bytes(saved.with_suffix(".json").read_bytes())
    wav = chirp_audio(1, 4)
    assert torch.equal(Codec.from_pretrained(path).encode(wav), tiny_codec.encode(wav))


def test_centroids_are_embedding_sum_over_usage(saved, tmp_path, tiny_codec):
    state = load_file(str(saved))
    usage = torch.rand(64) * 3 + 0.5
    key = "quantizer.rvq_first.vq.layers.0._codebook."
    state[key + "embedding_sum"] = state[key + "embedding_sum"] * usage[:, None]
    state[key + "cluster_usage"] = usage
    path = tmp_path / "usage.safetensors"
    save_file(state, str(path))
    (tmp_path / "usage.json").write_bytes(saved.with_suffix(".json").read_bytes())
    loaded = Codec.from_pretrained(path)
    torch.testing.assert_close(loaded.quantizer.rvq_first.codebooks, tiny_codec.quantizer.rvq_first.codebooks)


def test_weight_norm_pairs_are_folded(saved, tmp_path, tiny_codec):
    state = load_file(str(saved))
    key = "encoder.model.0.conv.conv.weight"
    weight = state.pop(key)
    norm = weight.norm(dim=(1, 2), keepdim=True)
    state[key[:-len("weight")] + "weight_g"] = norm
    state[key[:-len("weight")] + "weight_v"] = weight / norm * 2.0
    path = tmp_path / "wn.safetensors"
    save_file(state, str(path))
    (tmp_path / "wn.json").write_bytes(saved.with_suffix(".json").read_bytes())
    loaded = Codec.from_pretrained(path)
    torch.testing.assert_close(loaded.encoder.model[0].conv.weight, tiny_codec.encoder.model[0].conv.weight)


def test_dtype_and_device(saved):
    codec = Codec.from_pretrained(saved, device="cpu", dtype=torch.bfloat16)
    assert codec.encoder.model[0].conv.weight.dtype == torch.bfloat16
    assert codec.encode(chirp_audio(1, 2)).shape == (1, 8, 2)


# ---------------------------------------------------------------------------- bad checkpoints
def _save_modified(saved: Path, tmp_path: Path, edit) -> Path:
    state = load_file(str(saved))
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    (tmp_path / "bad.json").write_bytes(saved.with_suffix(".json").read_bytes())
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("decoder.model.14.conv.conv.bias"), r"missing tensors: decoder\.model\.14\.conv\.bias"),
    (lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(1)), r"unexpected tensors: encoder\.extra\.weight"),
    (lambda s: s.__setitem__("encoder.model.0.conv.conv.weight", torch.zeros(4, 1, 5)), r"misshaped tensors: encoder\.model\.0\.conv\.weight: checkpoint \[4, 1, 5\]"),
    (lambda s: s.pop("quantizer.rvq_rest.vq.layers.30._codebook.embedding_sum"), "needs embedding_sum and cluster_usage"),
    (lambda s: [s.pop(k) for k in list(s) if ".layers.30._codebook" in k], "codebook layers 0..30, the checkpoint has 30"),
    (lambda s: s.__setitem__("quantizer.rvq_first.input_proj.weight", torch.zeros(16, 32, 3)), "1x1 conv"),
])
def test_bad_tensors_are_named(saved, tmp_path, edit, match):
    path = _save_modified(saved, tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        Codec.from_pretrained(path)


def test_full_size_config_is_the_default_and_rejects_a_tiny_checkpoint(saved, tmp_path):
    path = tmp_path / "nosidecar.safetensors"
    path.write_bytes(saved.read_bytes())
    with pytest.raises(CheckpointError, match="does not fit the codec config"):
        Codec.from_pretrained(path)


def test_missing_corrupt_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Codec.from_pretrained(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        Codec.from_pretrained(corrupt)
    with pytest.raises(CheckpointError, match="no codec weights"):
        Codec.from_pretrained(tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["seanet"].__setitem__("causal", False), r"seanet\.causal=False is not supported"),
    (lambda c: c["transformer"].__setitem__("gating", "silu"), r"transformer\.gating='silu' is not supported"),
    (lambda c: c["quantizer"].__setitem__("wobble", 1), r"unknown key 'wobble'"),
    (lambda c: c.pop("quantizer"), "lacks the 'quantizer' section"),
    (lambda c: c.__setitem__("frame_rate", 13.0), "frame_rate 13.0 must divide"),
])
def test_bad_configs_are_explained(saved, tmp_path, edit, match):
    config = json.loads(saved.with_suffix(".json").read_text())
    edit(config)
    path = tmp_path / "cfg.safetensors"
    path.write_bytes(saved.read_bytes())
    path.with_suffix(".json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        Codec.from_pretrained(path)
    path.with_suffix(".json").write_text("{oops")
    with pytest.raises(CheckpointError, match="cannot read codec config"):
        Codec.from_pretrained(path)


def test_kyutai_config_round_trip():
    assert CodecConfig.from_kyutai(CodecConfig().to_kyutai()) == CodecConfig()
    assert CodecConfig.from_kyutai(TINY.to_kyutai()) == TINY


def test_hub_repo_id_loads_through_the_hub_cache(saved, tmp_path, monkeypatch):
    """The real huggingface_hub download path, served offline from a cache laid out as the hub's."""
    snapshot = tmp_path / "hub" / "models--kyutai--tiny-test" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / MIMI_FILENAME).write_bytes(saved.read_bytes())
    (snapshot / Path(MIMI_FILENAME).with_suffix(".json")).write_bytes(saved.with_suffix(".json").read_bytes())
    refs = tmp_path / "hub" / "models--kyutai--tiny-test" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    codec = Codec.from_pretrained("kyutai/tiny-test")
    assert codec.config == TINY
    with pytest.raises(CheckpointError, match="kyutai/absent"):
        Codec.from_pretrained("kyutai/absent")
