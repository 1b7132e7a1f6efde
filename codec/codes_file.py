"""The on-disk format of codec codes (`.codes` files).

A codes file is a safetensors file holding one tensor and string metadata:

    tensor   codes          int16 [K, F]: K codebooks by F frames, every value in [0, 2048)
    metadata format         "antiphon-codes"
             version        "1"
             sample_rate    audio samples per second, e.g. "24000"
             frame_rate     code frames per second, e.g. "12.5"
             frame_size     audio samples per frame, e.g. "1920" (= sample_rate / frame_rate)
             num_codebooks  K, e.g. "8"
             num_samples    length of the encoded audio in samples; F = ceil(num_samples / frame_size)
                            and decoding trims its output to this length
             codec          where the codec came from (repo id or path), e.g. "kyutai/moshiko-pytorch-bf16"

One file holds one mono stream. Any safetensors reader opens it (`safetensors.safe_open`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from antiphon.errors import InputError

FORMAT = "antiphon-codes"
VERSION = "1"
MAX_CODEBOOK_SIZE = 2048
_KEYS = ("sample_rate", "frame_rate", "frame_size", "num_codebooks", "num_samples", "codec")


@dataclasses.dataclass(frozen=True)
class CodesFile:
    codes: torch.Tensor  # int64 [K, F]
    sample_rate: int  # Hz
    frame_rate: float  # frames per second
    frame_size: int  # samples per frame
    num_samples: int  # samples of the encoded audio
    codec_name: str

    @property
    def num_codebooks(self) -> int:
        return self.codes.shape[0]

    @property
    def num_frames(self) -> int:
        return self.codes.shape[1]

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.num_samples / self.sample_rate


def save_codes(path: str | os.PathLike, codes: torch.Tensor | np.ndarray, *, sample_rate: int,
               frame_rate: float, frame_size: int, num_samples: int, codec_name: str) -> None:
    """Write integer codes [K, F] with their metadata; see the module docstring for the format."""
    codes = torch.as_tensor(codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise InputError(f"codes must be integers, got {codes.dtype}")
    if codes.dim() != 2:
        raise InputError(f"codes must be [K, F] (codebooks, frames), got shape {list(codes.shape)}")
    meta = {"format": FORMAT, "version": VERSION, "sample_rate": str(int(sample_rate)),
            "frame_rate": repr(float(frame_rate)), "frame_size": str(int(frame_size)),
            "num_codebooks": str(codes.shape[0]),
            "num_samples": str(int(num_samples)), "codec": str(codec_name)}
    _check(codes, _parse(meta, str(path)), str(path))
    try:
        save_file({"codes": codes.to(torch.int16).contiguous().cpu()}, str(path), metadata=meta)
    except (OSError, SafetensorError) as e:
        raise InputError(f"cannot write codes file {path}: {e}") from None


def load_codes(path: str | os.PathLike) -> CodesFile:
    """Read and check a codes file; InputError names what is wrong."""
    name = str(path)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"codes file not found: {name}" if not path.exists() else f"{name} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputError(f"{name} is not a codes file: its format tag is {meta.get('format')!r}, "
                                 f"expected {FORMAT!r}")
            if meta.get("version") != VERSION:
                raise InputError(f"{name} is codes format version {meta.get('version')!r}; "
                                 f"this antiphon reads version {VERSION}")
            if "codes" not in f.keys():
                raise InputError(f"{name} holds no 'codes' tensor")
            codes = f.get_tensor("codes")
    except (OSError, SafetensorError) as e:
        raise InputError(f"{name} is not a codes file (not a readable safetensors file: {e})") from None
    if codes.dtype != torch.int16:
        raise InputError(f"{name}: codes must be int16, got {codes.dtype}")
    fields = _parse(meta, name)
    _check(codes, fields, name)
    return CodesFile(codes=codes.long(), sample_rate=fields["sample_rate"], frame_rate=fields["frame_rate"],
                     frame_size=fields["frame_size"], num_samples=fields["num_samples"],
                     codec_name=fields["codec"])


def _parse(meta: dict[str, str], name: str) -> dict:
    missing = [k for k in _KEYS if k not in meta]
    if missing:
        raise InputError(f"{name}: codes metadata lacks {', '.join(missing)}")
    out: dict = {"codec": meta["codec"]}
    for key, kind in (("sample_rate", int), ("frame_rate", float), ("frame_size", int),
                      ("num_codebooks", int), ("num_samples", int)):
        try:
            value = kind(meta[key])
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise InputError(f"{name}: codes metadata {key}={meta[key]!r} must be a positive {kind.__name__}")
        out[key] = value
    if abs(out["sample_rate"] / out["frame_rate"] - out["frame_size"]) > 1e-6:
        raise InputError(f"{name}: frame_size {out['frame_size']} != sample_rate {out['sample_rate']} "
                         f"/ frame_rate {out['frame_rate']}")
    return out


def _check(codes: torch.Tensor, fields: dict, name: str) -> None:
    if codes.dim() != 2:
        raise InputError(f"{name}: codes must be [K, F] (codebooks, frames), got shape {list(codes.shape)}")
    if codes.shape[0] != fields["num_codebooks"]:
        raise InputError(f"{name}: codes have {codes.shape[0]} codebooks, metadata says {fields['num_codebooks']}")
    frames = math.ceil(fields["num_samples"] / fields["frame_size"])
    if codes.shape[1] != frames:
        raise InputError(f"{name}: {fields['num_samples']} samples make {frames} frames of "
                         f"{fields['frame_size']}, but the codes have {codes.shape[1]}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= MAX_CODEBOOK_SIZE:
        raise InputError(f"{name}: codes must be in [0, {MAX_CODEBOOK_SIZE}), got values in [{low}, {high}]")
