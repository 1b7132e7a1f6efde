"""Reading, writing and resampling audio files (the commands, the server and the data generator use it).

`read_audio` decodes wav, flac, ogg (vorbis) and mp3 through sphn, or a file piped on standard input
when the path is "-", and returns float32 PCM [C, T] at the asked sample rate. Resampling goes
through `sphn.resample`, whose output starts late by a rate-dependent delay (5 to 64 ms at the
usual rates) and loses up to that much of the tail; `resample` pads the input, removes the delay and
trims, so that T input samples become round(T * dst / src) output samples, aligned with the input
to within one sample.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import sphn

from antiphon.errors import InputError

STDIN = "-"


def read_audio(path: str | os.PathLike, sample_rate: int = 24000, *, mono: bool = False) -> np.ndarray:
    """Decode an audio file (or "-": standard input) to float32 PCM [C, T] at `sample_rate`.

    With `mono=True` the channels are averaged into one: [1, T]. Raises InputError when the file is
    missing, cannot be decoded, or holds no samples.
    """
    pcm, file_rate = read_audio_native(path)
    if mono:
        pcm = pcm.mean(axis=0, keepdims=True)
    return resample(pcm, file_rate, sample_rate)


def read_audio_native(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file (or "-") at its own sample rate: (float32 PCM [C, T], sample_rate)."""
    if str(path) == STDIN:
        return _read_stdin()
    path = Path(path)
    if not path.exists():
        raise InputError(f"audio file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an audio file")
    return _decode(path, str(path))


def write_wav(path: str | os.PathLike, pcm: np.ndarray, sample_rate: int) -> None:
    """Write float32 PCM [C, T] or [T] (values in [-1, 1], clipped) as a 16-bit wav file."""
    pcm = np.ascontiguousarray(np.asarray(pcm, dtype=np.float32))
    if pcm.ndim not in (1, 2):
        raise InputError(f"PCM must be [C, T] or [T], got shape {list(pcm.shape)}")
    try:
        sphn.write_wav(str(path), pcm, int(sample_rate))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot write {path}: {_reason(e)}") from None


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample float32 PCM [C, T] from `src_rate` to `dst_rate`: [C, round(T * dst / src)]."""
    if src_rate == dst_rate:
        return pcm
    if src_rate <= 0 or dst_rate <= 0:
        raise InputError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    channels, length = pcm.shape
    out_len = round(length * dst_rate / src_rate)
    delay = _resampler_delay(src_rate, dst_rate)
    # Enough zeros after the signal for its tail to come out of the resampler past the delay.
    pad = math.ceil((delay + 1) * src_rate / dst_rate) + 1024
    padded = np.pad(pcm, ((0, 0), (0, pad)))
    out = sphn.resample(np.ascontiguousarray(padded, dtype=np.float32), src_rate, dst_rate)
    out = np.asarray(out, dtype=np.float32).reshape(channels, -1)[:, delay:delay + out_len]
    if out.shape[-1] < out_len:  # never seen; keeps the length promise if sphn changes
        out = np.pad(out, ((0, 0), (0, out_len - out.shape[-1])))
    return np.ascontiguousarray(out)


@functools.lru_cache(maxsize=None)
def _resampler_delay(src_rate: int, dst_rate: int) -> int:
    """The output delay of `sphn.resample` for one rate pair, in output samples (where an impulse
    at input sample 0 comes out)."""
    impulse = np.zeros(src_rate, dtype=np.float32)
    impulse[0] = 1.0
    out = sphn.resample(impulse, src_rate, dst_rate)
    return int(np.argmax(np.abs(out)))


def _decode(path: Path, name: str) -> tuple[np.ndarray, int]:
    try:
        pcm, sample_rate = sphn.read(str(path))
    except (OSError, ValueError) as e:
        reason = _reason(e)
        if "no suitable format reader" in reason:
            reason = "not a wav, flac, ogg or mp3 file, or a corrupt one"
        raise InputError(f"cannot decode audio file {name}: {reason}") from None
    pcm = np.ascontiguousarray(pcm, dtype=np.float32)
    if pcm.ndim != 2 or pcm.shape[-1] == 0:
        raise InputError(f"audio file {name} holds no samples")
    return pcm, int(sample_rate)


def _read_stdin() -> tuple[np.ndarray, int]:
    data = sys.stdin.buffer.read()
    if not data:
        raise InputError("no audio data on standard input")
    fd, tmp = tempfile.mkstemp(prefix="antiphon-stdin-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return _decode(Path(tmp), "<stdin>")
    finally:
        os.unlink(tmp)


def _reason(e: Exception) -> str:
    """sphn's messages start with the quoted file name; keep what follows."""
    msg = str(e)
    if msg.startswith('"') and '": ' in msg:
        msg = msg.split('": ', 1)[1]
    return msg
