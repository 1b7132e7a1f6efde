"""The codes file format: a round trip, and a clear InputError for every way a file can be wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from antiphon.codec.codes_file import CodesFile, load_codes, save_codes
from antiphon.errors import InputError

META = dict(sample_rate=24000, frame_rate=12.5, frame_size=1920, num_samples=24000, codec_name="kyutai/test")


def _codes(k: int = 8, frames: int = 13, high: int = 2048) -> torch.Tensor:
    return torch.randint(0, high, (k, frames), generator=torch.Generator().manual_seed(0))


def _good_meta(**changes: str) -> dict[str, str]:
    meta = {"format": "antiphon-codes", "version": "1", "sample_rate": "24000", "frame_rate": "12.5",
            "frame_size": "1920", "num_codebooks": "8", "num_samples": "24000", "codec": "kyutai/test"}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _write(path, tensors: dict, meta: dict | None) -> str:
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def test_round_trip(tmp_path):
    codes = _codes()
    path = tmp_path / "x.codes"
    save_codes(path, codes, **META)
    loaded = load_codes(path)
    assert isinstance(loaded, CodesFile)
    assert torch.equal(loaded.codes, codes) and loaded.codes.dtype == torch.int64
    assert (loaded.sample_rate, loaded.frame_rate, loaded.frame_size) == (24000, 12.5, 1920)
    assert (loaded.num_codebooks, loaded.num_frames, loaded.num_samples) == (8, 13, 24000)
    assert loaded.codec_name == "kyutai/test" and loaded.duration == 1.0
    with pytest.raises(AttributeError):
        loaded.num_samples = 1  # frozen


def test_on_disk_layout(tmp_path):
    path = tmp_path / "x.codes"
    save_codes(path, _codes().numpy(), **META)  # numpy in, too
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["codes"]
        assert f.get_tensor("codes").dtype == torch.int16
        assert f.metadata() == _good_meta()


def test_partial_last_frame(tmp_path):
    save_codes(tmp_path / "x.codes", _codes(frames=2), **{**META, "num_samples": 1921})
    assert load_codes(tmp_path / "x.codes").num_samples == 1921


@pytest.mark.parametrize("change, message", [
    ({"format": None}, "format tag is None"),
    ({"format": "something-else"}, "format tag is 'something-else'"),
    ({"version": "2"}, "version '2'"),
    ({"num_samples": None}, "lacks num_samples"),
    ({"sample_rate": "fast"}, "sample_rate='fast' must be a positive int"),
    ({"frame_rate": "nan"}, "frame_rate='nan'"),
    ({"num_samples": "0"}, "num_samples='0'"),
    ({"frame_size": "1000"}, "frame_size 1000 != sample_rate"),
    ({"num_codebooks": "4"}, "8 codebooks, metadata says 4"),
    ({"num_samples": "48000"}, "make 25 frames of 1920, but the codes have 13"),
])
def test_bad_metadata(tmp_path, change, message):
    path = _write(tmp_path / "x.codes", {"codes": _codes().to(torch.int16)}, _good_meta(**change))
    with pytest.raises(InputError, match=message):
        load_codes(path)


@pytest.mark.parametrize("tensor, message", [
    (_codes().to(torch.int32), "must be int16, got torch.int32"),
    (_codes()[None].to(torch.int16), r"must be \[K, F\]"),
    (torch.cat([_codes(frames=12), torch.full((8, 1), 2048)], 1).to(torch.int16), r"in \[0, 2048\), got values in \[\d+, 2048\]"),
    (torch.cat([_codes(frames=12), torch.full((8, 1), -1)], 1).to(torch.int16), r"got values in \[-1, "),
])
def test_bad_tensor(tmp_path, tensor, message):
    path = _write(tmp_path / "x.codes", {"codes": tensor}, _good_meta())
    with pytest.raises(InputError, match=message):
        load_codes(path)


def test_no_codes_tensor(tmp_path):
    path = _write(tmp_path / "x.codes", {"other": _codes().to(torch.int16)}, _good_meta())
    with pytest.raises(InputError, match="no 'codes' tensor"):
        load_codes(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=f"codes file not found: {tmp_path / 'nope.codes'}"):
        load_codes(tmp_path / "nope.codes")
    with pytest.raises(InputError, match="is not a file"):
        load_codes(tmp_path)


@pytest.mark.parametrize("content", [b"", b"RIFF....WAVEfmt garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "x.codes"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a codes file"):
        load_codes(path)


@pytest.mark.parametrize("codes, changes, message", [
    (_codes().float(), {}, "must be integers"),
    (_codes()[None], {}, r"must be \[K, F\]"),
    (_codes() + 2048, {}, r"must be in \[0, 2048\)"),
    (_codes(), {"num_samples": 1}, "make 1 frames"),
    (_codes(), {"frame_size": 960}, "frame_size 960 != sample_rate"),
])
def test_save_rejects(tmp_path, codes, changes, message):
    with pytest.raises(InputError, match=message):
        save_codes(tmp_path / "x.codes", codes, **{**META, **changes})
    assert not (tmp_path / "x.codes").exists()


def test_save_to_missing_folder(tmp_path):
    with pytest.raises(InputError, match="cannot write codes file"):
        save_codes(tmp_path / "no" / "x.codes", _codes(), **META)
