"""The `antiphon` command: help, version, errors, and real codec runs through a tiny saved codec."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from antiphon import __version__
from antiphon.apps import codec_cmd
from antiphon.audio_io import read_audio, write_wav
from antiphon.apps.cli import main
from antiphon.codec import Codec
from antiphon.codec.codes_file import load_codes, save_codes
from tests.codec.tiny import make_tiny_codec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tiny-codec")
    make_tiny_codec().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def codec(model_dir) -> Codec:
    return Codec.from_pretrained(model_dir, num_codebooks=4)


def _tone(path: Path, seconds: float, sample_rate: int = 24000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pcm = [0.3 * np.sin(2 * np.pi * (150 + 100 * c) * t * (1 + t)) for c in range(channels)]
    write_wav(path, np.stack(pcm).astype(np.float32), sample_rate)
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("antiphon: error: ") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------- help and version
@pytest.mark.parametrize("argv, expected", [
    (["--help"], ["commands:", "codec", "examples:", "antiphon codec roundtrip"]),
    (["codec", "--help"], ["24 kHz mono audio", "encode", "decode", "roundtrip", "embedded:codec"]),
    (["codec", "encode", "--help"], ["--num-codebooks", "--model SOURCE", "--device", "standard input", "example:"]),
    (["codec", "decode", "--help"], ["the codec named in the codes file", "original length"]),
    (["codec", "roundtrip", "--help"], ["real-time factor", "SNR", "example:"]),
])
def test_help(capsys, argv, expected):
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal
    for text in expected:
        assert text in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"antiphon {__version__}"


@pytest.mark.parametrize("argv", [[], ["codec"], ["nope"], ["codec", "encode", "only-one-arg"]])
def test_usage_errors_exit_2(capsys, argv):
    assert main(argv) == 2
    assert "usage: antiphon" in capsys.readouterr().err


# ---------------------------------------------------------------------- input errors
def test_missing_input(capsys, tmp_path, model_dir):
    missing = tmp_path / "missing.wav"
    assert main(["codec", "encode", str(missing), str(tmp_path / "x.codes"), "--model", model_dir]) == 2
    assert f"audio file not found: {missing}" in _error(capsys)


@pytest.mark.parametrize("content, message", [
    (b"this is not audio at all" * 10, "not a wav, flac, ogg or mp3 file"),
    (b"RIFF\x24\x7d\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "cannot decode audio file"),
])
def test_corrupt_audio(capsys, tmp_path, model_dir, content, message):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    assert main(["codec", "roundtrip", str(bad), str(tmp_path / "out.wav"), "--model", model_dir]) == 2
    err = _error(capsys)
    assert message in err and str(bad) in err


def test_empty_audio(capsys, tmp_path, model_dir):
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32), 24000)
    assert main(["codec", "encode", str(empty), str(tmp_path / "x.codes"), "--model", model_dir]) == 2
    assert "holds no samples" in _error(capsys)


@pytest.mark.parametrize("kind", ["wav", "safetensors without tag", "missing"])
def test_decode_rejects_non_codes_files(capsys, tmp_path, model_dir, kind):
    path = tmp_path / "in.codes"
    if kind == "wav":
        _tone(path, 0.5)
    elif kind == "safetensors without tag":
        save_file({"codes": torch.zeros(4, 7, dtype=torch.int16)}, str(path))
    assert main(["codec", "decode", str(path), str(tmp_path / "out.wav"), "--model", model_dir]) == 2
    err = _error(capsys)
    assert str(path) in err
    assert ("not found" if kind == "missing" else "is not a codes file") in err


def test_bad_model_and_options(capsys, tmp_path, model_dir):
    wav = str(_tone(tmp_path / "in.wav", 0.2))
    out = str(tmp_path / "x.codes")
    assert main(["codec", "encode", wav, out, "--model", str(tmp_path / "no-model")]) == 2
    assert "codec checkpoint not found" in _error(capsys)
    assert main(["codec", "encode", wav, out, "--model", model_dir, "--num-codebooks", "33"]) == 2
    assert "num_codebooks must be in 1..32" in _error(capsys)
    assert main(["codec", "encode", wav, out, "--model", model_dir, "--device", "bogus"]) == 2
    assert "bad --device" in _error(capsys)
    assert main(["codec", "encode", wav, str(tmp_path / "no" / "x.codes"), "--model", model_dir]) == 2
    assert "does not exist" in _error(capsys)


def test_keyboard_interrupt_exits_130(capsys, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec_cmd, "_load_codec", interrupted)
    assert main(["codec", "encode", str(_tone(tmp_path / "in.wav", 0.2)), str(tmp_path / "x.codes")]) == 130
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------------- real runs
def test_encode_decode(capsys, tmp_path, model_dir, codec, monkeypatch):
    monkeypatch.setattr(codec_cmd, "CHUNK_FRAMES", 3)  # several streaming calls and a short last one
    wav = _tone(tmp_path / "in.wav", 1.3, sample_rate=16000, channels=2)  # resampled and downmixed
    codes_path, out = tmp_path / "in.codes", tmp_path / "out.wav"
    assert main(["-v", "codec", "encode", str(wav), str(codes_path), "--model", model_dir, "--num-codebooks", "4"]) == 0
    captured = capsys.readouterr()
    assert "encoded 1.30 s into 4 x 17 codes" in captured.out and "loaded codec" in captured.err

    codes = load_codes(codes_path)
    num_samples = round(1.3 * 16000 * 24000 / 16000)
    assert codes.codes.shape == (4, 17) and codes.num_samples == num_samples
    assert (codes.sample_rate, codes.frame_rate, codes.frame_size, codes.codec_name) == (24000, 12.5, 1920, model_dir)
    pcm = read_audio(wav, 24000, mono=True)
    assert torch.equal(codes.codes, codec.encode(torch.from_numpy(pcm)[None])[0]), "streamed chunks == offline"

    assert main(["codec", "decode", str(codes_path), str(out)]) == 0  # model: the one named in the file
    assert "decoded 4 x 17 codes into 1.30 s" in capsys.readouterr().out
    decoded = read_audio(out, 24000)
    assert decoded.shape == (1, num_samples)
    offline = codec.decode(codes.codes[None])[0, :, :num_samples].clamp(-1, 1).numpy()
    np.testing.assert_allclose(decoded, offline, atol=2 / 32768)


def test_roundtrip(capsys, tmp_path, model_dir):
    wav = _tone(tmp_path / "in.wav", 0.9)
    out = tmp_path / "out.wav"
    assert main(["codec", "roundtrip", str(wav), str(out), "--model", model_dir, "--num-codebooks", "8"]) == 0
    report = capsys.readouterr().out
    for text in ("0.90 s at 24000 Hz", "8 codebooks x 12 frames, 600 bit/s", "real-time factor", "SNR", " dB"):
        assert text in report
    assert read_audio(out, 24000).shape == read_audio(wav, 24000).shape == (1, 21600)


def test_encode_from_stdin(capsys, tmp_path, model_dir, monkeypatch):
    data = _tone(tmp_path / "in.wav", 0.5).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["codec", "encode", "-", str(tmp_path / "x.codes"), "--model", model_dir]) == 0
    assert load_codes(tmp_path / "x.codes").num_samples == 12000


def test_decode_checks_codec_against_file(capsys, tmp_path, model_dir):
    path = tmp_path / "x.codes"
    save_codes(path, torch.zeros(4, 7, dtype=torch.long), sample_rate=16000, frame_rate=12.5, frame_size=1280,
               num_samples=8000, codec_name=model_dir)
    assert main(["codec", "decode", str(path), str(tmp_path / "out.wav")]) == 2
    assert "was made at 16000 Hz" in _error(capsys)


# ---------------------------------------------------------------------- the installed entry points
def test_python_dash_m_smoke(tmp_path):
    run = [sys.executable, "-m", "antiphon"]
    done = subprocess.run([*run, "--version"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"antiphon {__version__}"
    missing = tmp_path / "missing.wav"
    done = subprocess.run([sys.executable, "-m", "antiphon.apps.cli", "codec", "encode", str(missing),
                           str(tmp_path / "x.codes")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"antiphon: error: audio file not found: {missing}\n"
