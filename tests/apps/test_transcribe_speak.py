"""`antiphon transcribe` and `antiphon speak`: in local mode, through tiny models saved with their codec and
tokenizer in one directory (greedy sampling: the output is deterministic); with --url, through scripted Kyutai
STT/TTS servers (tests.streaming.test_kyutai_client) on a thread of their own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from antiphon.audio_io import read_audio, write_wav
from antiphon.apps.cli import main
from antiphon.streaming.kyutai_protocol import Eos, Error, Marker, Text, Voice, build
from tests.codec.tiny import make_tiny_codec
from tests.lm.test_checkpoint import _train_tokenizer
from tests.lm.tiny import SPEAKER_DIM, STT, TTS_CROSS, make_tiny_lm
from tests.streaming.test_kyutai_client import SCRIPT, query, scripted, stt_script, tts_script

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
    assert main(["speak", "hello", "-o", out, "--model", model, "--voice", voice, "--cfg-coef", "2"]) == 2
    assert "CFG distillation" in _error(capsys)  # the tiny TTS has a cfg conditioner


# ---------------------------------------------------------------------------------------- --url: through a server
@contextlib.contextmanager
def server_thread(handler, api_key: str | None = None):
    """A scripted Kyutai STT/TTS server (tests.streaming.test_kyutai_client.scripted) on its own thread and
    event loop, so that the CLI's asyncio.run can talk to it; yields (url, log)."""
    loop, ready, box = asyncio.new_event_loop(), threading.Event(), {}

    async def serve_until_stopped():
        box["stop"] = asyncio.Event()
        async with scripted(handler, api_key) as (url, log):
            box.update(url=url, log=log)
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_until_stopped(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box["url"], box["log"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        loop.close()


def test_transcribe_through_a_server(capsys, monkeypatch, speech):
    with server_thread(stt_script, api_key="sesame") as (url, log):
        assert main(["transcribe", speech, "--url", url, "--api-key", "sesame", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        sent = np.concatenate([m.pcm for m in log["in"][:[type(m) for m in log["in"]].index(Marker)]])
        log["in"].clear()
        with open(speech, "rb") as f:  # "-": the file's bytes on standard input
            monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(f.read())))
        assert main(["transcribe", "-", "--url", url, "--api-key", "sesame"]) == 0
        text = capsys.readouterr().out
    assert np.array_equal(sent, read_audio(speech, 24000, mono=True)[0])  # the whole file went to the server
    assert result == {"text": " ".join(w for w, _, _ in SCRIPT), "duration": 1.5,
                      "words": [{"text": w, "start": a, "stop": b} for w, a, b in SCRIPT]}  # as in local mode
    assert text == result["text"] + "\n"


def test_speak_through_a_server(capsys, tmp_path):
    out, voice = tmp_path / "out.wav", tmp_path / "voice.safetensors"
    embedding = torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(0))
    save_file({"speaker_wavs": embedding}, str(voice))
    with server_thread(tts_script("OggOpusMessagePack")) as (url, log):
        assert main(["-v", "speak", "hello big world", "-o", str(out), "--url", url, "--voice", "expresso/a.wav",
                     "--temp", "0.5"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert query(log) == {"format": "OggOpusMessagePack", "voice": "expresso/a.wav", "temperature": "0.5"}
        assert log["in"] == [Text("hello"), Text("big"), Text("world"), Eos()]
        log["in"].clear()
        assert main(["speak", "hello", "-o", str(tmp_path / "two.wav"), "--url", url, "--voice", str(voice)]) == 0
        capsys.readouterr()
        assert query(log) == {"format": "OggOpusMessagePack"}  # a local voice file goes as a Voice message
        assert log["in"] == [Voice(embedding.numpy().ravel(), (1, 8, 3)), Text("hello"), Eos()]
    assert [line.split()[2] for line in lines[:-1]] == ["hello", "big", "world"]  # -v: the server's word times
    assert lines[-1].startswith("spoke 3 words in ") and lines[-1].endswith(str(out))
    pcm = read_audio(out)
    assert pcm.shape[0] == 1 and pcm.shape[1] > 0


def test_url_mode_errors(capsys, tmp_path, speech):
    out = str(tmp_path / "out.wav")
    assert main(["transcribe", speech, "--url", "ws://127.0.0.1:9", "--model", "x"]) == 2
    assert "not both" in _error(capsys)
    assert main(["speak", "hi", "-o", out, "--api-key", "k"]) == 2
    assert "--api-key goes with --url" in _error(capsys)
    assert main(["speak", "hi", "-o", out, "--url", "ws://127.0.0.1:9", "--cfg-coef", "2"]) == 2
    assert "--cfg-coef applies to a local model" in _error(capsys)
    with server_thread(stt_script, api_key="sesame") as (url, _):
        assert main(["transcribe", speech, "--url", url]) == 2
        assert "HTTP 401" in _error(capsys)
    assert main(["transcribe", speech, "--url", url]) == 2  # nothing listens there any more
    assert "cannot connect" in _error(capsys)

    async def busy(ws, log):
        await ws.send(build(Error("no free channels")))

    with server_thread(busy) as (url, _):
        assert main(["speak", "hi", "-o", out, "--url", url]) == 2
        assert "server error: no free channels" in _error(capsys)
