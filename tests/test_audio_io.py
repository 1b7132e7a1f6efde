"""Reading and writing audio: resampling keeps length and timing, errors name the file."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from antiphon.audio_io import read_audio, read_audio_native, resample, write_wav
from antiphon.errors import InputError


@pytest.mark.parametrize("src", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("length_s", [0.01, 0.7, 2.0])
def test_resample_keeps_length_and_timing(src, length_s):
    length = int(src * length_s)
    pcm = np.zeros((2, length), np.float32)
    click = length // 2
    pcm[:, click] = 0.9
    out = resample(pcm, src, 24000)
    assert out.shape == (2, round(length * 24000 / src)) and out.dtype == np.float32
    if length_s > 0.1:  # the click lands where it belongs, to within one sample
        assert abs(int(np.argmax(np.abs(out[0]))) - click * 24000 / src) <= 1


def test_resample_keeps_the_tail():
    """sphn alone cuts up to its delay off the end; the last click must survive."""
    pcm = np.zeros((1, 8000), np.float32)
    pcm[0, 7990] = 0.9
    out = resample(pcm, 8000, 24000)
    assert abs(int(np.argmax(np.abs(out[0]))) - 7990 * 3) <= 1


def test_read_write_mono_and_native(tmp_path):
    t = np.arange(16000) / 16000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 200 * t), 0.25 * np.sin(2 * np.pi * 300 * t)]).astype(np.float32)
    write_wav(tmp_path / "s.wav", stereo, 16000)
    native, rate = read_audio_native(tmp_path / "s.wav")
    assert rate == 16000 and native.shape == (2, 16000)
    np.testing.assert_allclose(native, stereo, atol=2 / 32768)
    assert read_audio(tmp_path / "s.wav", 24000).shape == (2, 24000)
    mono = read_audio(tmp_path / "s.wav", 16000, mono=True)
    np.testing.assert_allclose(mono[0], stereo.mean(0), atol=2 / 32768)


def test_write_clips(tmp_path):
    write_wav(tmp_path / "c.wav", np.array([2.0, -2.0, 0.5], np.float32), 24000)
    pcm, _ = read_audio_native(tmp_path / "c.wav")
    assert pcm.max() <= 1.0 and pcm.min() >= -1.0


def test_stdin(tmp_path, monkeypatch):
    write_wav(tmp_path / "a.wav", np.full(480, 0.5, np.float32), 24000)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((tmp_path / "a.wav").read_bytes())))
    assert read_audio("-").shape == (1, 480)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(InputError, match="no audio data on standard input"):
        read_audio("-")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"garbage" * 20)))
    with pytest.raises(InputError, match="cannot decode audio file <stdin>"):
        read_audio("-")


def test_errors(tmp_path):
    with pytest.raises(InputError, match=f"audio file not found: {tmp_path / 'x.wav'}"):
        read_audio(tmp_path / "x.wav")
    with pytest.raises(InputError, match="is a directory"):
        read_audio(tmp_path)
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(InputError, match="not a wav, flac, ogg or mp3 file"):
        read_audio(tmp_path / "text.wav")
    write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 24000)
    with pytest.raises(InputError, match="holds no samples"):
        read_audio(tmp_path / "empty.wav")
    with pytest.raises(InputError, match="cannot write"):
        write_wav(tmp_path / "no" / "x.wav", np.zeros(10, np.float32), 24000)
    with pytest.raises(InputError, match=r"\[C, T\] or \[T\]"):
        write_wav(tmp_path / "x.wav", np.zeros((1, 1, 10), np.float32), 24000)
