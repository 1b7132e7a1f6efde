"""`antiphon transcribe` and `antiphon speak` in local mode, through tiny models saved with their codec and
tokenizer in one directory (greedy sampling: the output is deterministic)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from antiphon.apps.audio_io import read_audio, write_wav
from antiphon.apps.cli import main
from tests.codec.tiny import make_tiny_codec
from tests.lm.test_checkpoint import _train_tokenizer
from tests.lm.tiny import SPEAKER_DIM, STT, TTS_CROSS, make_tiny_lm

CODEC_FILES = {"mimi_name": "codec.safetensors", "mimi_config_name": "codec.json"}
STT_PAIR = dataclasses.replace(STT, card=64, tokenizer_name="tok.model", stt_config={"audio_delay_seconds": 0.24},
                               **CODEC_FILES)


def save_model(directory: Path, config, seed: int = 0) -> str:
    """LM + codec (giving the LM's codebook count) + a sentencepiece tokenizer of its text_card, in one directory."""
    make_tiny_lm(config, seed).save_pretrained(directory)
    weights = make_tiny_codec(num_codebooks=config.codec_num_codebooks).save_pretrained(directory / "codec-tmp")
    weights.with_suffix(".json").rename(directory / CODEC_FILES["mimi_config_name"])
    weights.rename(directory / CODEC_FILES["mimi_name"])
    _train_tokenizer(directory, config.text_card)
    return str(directory)


@pytest.fixture(scope="module")
def stt_dir(tmp_path_factory) -> str:
    return save_model(tmp_path_factory.mktemp("tiny-stt"), STT_PAIR)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    t = np.arange(int(1.5 * 24000)) / 24000
    g = np.random.default_rng(0)
    write_wav(path, (0.3 * np.sin(2 * np.pi * 180 * t * (1 + t)) + 0.05 * g.standard_normal(t.size)).astype(np.float32), 24000)
    return str(path)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("antiphon: error: "), err
    return err


# ---------------------------------------------------------------------------------------- transcribe
def test_transcribe_text_and_json(capsys, stt_dir, speech):
    assert main(["transcribe", speech, "--model", stt_dir]) == 0
    text = capsys.readouterr().out
    assert main(["transcribe", speech, "--model", stt_dir]) == 0
    assert capsys.readouterr().out == text  # greedy: deterministic
    assert main(["transcribe", speech, "--model", stt_dir, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"text", "duration", "words"} and result["duration"] == 1.5
    assert result["text"] == text.strip() == " ".join(w["text"] for w in result["words"])
    assert result["words"], "the tiny random model should say something"
    for word in result["words"]:
        assert set(word) == {"text", "start", "stop"} and word["text"]
        assert 0 <= word["start"] < word["stop"]
    starts = [w["start"] for w in result["words"]]
    assert starts == sorted(starts)


def test_transcribe_errors(capsys, tmp_path, stt_dir, speech):
    assert main(["transcribe", str(tmp_path / "missing.wav"), "--model", stt_dir]) == 2
    assert "audio file not found" in _error(capsys)
    moshi = save_model(tmp_path / "moshi", dataclasses.replace(STT_PAIR, n_q=4, dep_q=2, delays=(0, 0, 1, 0, 1),
                                                               extra_heads_num_heads=0, model_type="moshi"))
    assert main(["transcribe", speech, "--model", moshi]) == 2
    assert "not a speech-to-text model" in _error(capsys)
    assert main(["transcribe", speech, "--model", str(tmp_path / "nowhere")]) == 2
    _error(capsys)


# ---------------------------------------------------------------------------------------- speak
TTS_PAIR = dataclasses.replace(TTS_CROSS, card=64, tokenizer_name="tok.model", **CODEC_FILES)


@pytest.fixture(scope="module")
def tts_dir(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tiny-tts")
    save_file({"speaker_wavs": torch.randn(1, SPEAKER_DIM, 4, generator=torch.Generator().manual_seed(0))},
              str(directory / "voice.safetensors"))
    return save_model(directory, TTS_PAIR, seed=3), str(directory / "voice.safetensors")


def test_speak_writes_a_wav_with_word_times(capsys, tmp_path, tts_dir):
    model, voice = tts_dir
    (tmp_path / "text.txt").write_text("hello world the model speaks\n")
    out = tmp_path / "out.wav"
    assert main(["-v", "speak", str(tmp_path / "text.txt"), "-o", str(out), "--model", model, "--voice", voice]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("spoke 5 words in ") and lines[-1].endswith(str(out))
    times = [line.split() for line in lines[:-1]]
    assert [t[2] for t in times] == ["hello", "world", "the", "model", "speaks"]
    assert all(float(a[1]) <= float(b[0]) for a, b in zip(times, times[1:]))
    pcm = read_audio(out)
    assert pcm.shape[0] == 1 and pcm.shape[1] % 1920 == 0 and pcm.shape[1] >= 5 * 1920
    again = tmp_path / "again.wav"
    assert main(["speak", "hello world the model speaks", "-o", str(again), "--model", model, "--voice", voice]) == 0
    assert np.array_equal(read_audio(again), pcm)  # same seed, same audio


def test_speak_errors(capsys, tmp_path, tts_dir, stt_dir):
    model, voice = tts_dir
    out = str(tmp_path / "out.wav")
    assert main(["speak", "hello", "-o", out, "--model", model]) == 2
    assert "pass --voice FILE" in _error(capsys)
    assert main(["speak", "hello", "-o", out, "--model", model, "--voice", str(tmp_path / "none")]) == 2
    assert "voice file not found" in _error(capsys)
    assert main(["speak", "hello", "-o", out, "--model", stt_dir]) == 2
    assert "not a text-to-speech model" in _error(capsys)
    assert main(["speak", "  ", "-o", out, "--model", model, "--voice", voice]) == 2
    assert "nothing to speak" in _error(capsys)
    assert main(["speak", "hello", "-o", str(tmp_path / "no" / "out.wav"), "--model", model]) == 2
    assert "does not exist" in _error(capsys)
