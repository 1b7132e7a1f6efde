"""`antiphon translate`: in local mode through a tiny Hibiki saved with its codec and tokenizer (greedy: the
output is deterministic), its end at the model's EOS, its errors; with --url through a real antiphon
server on a thread of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest
import torch

from antiphon.apps.cli import main
from antiphon.apps.translate_cmd import TAIL_SECONDS, speech_end, translate
from antiphon.audio_io import read_audio, write_wav
from antiphon.lm import LM
from tests.apps.test_transcribe_speak import CODEC_FILES, STT_PAIR, save_model
from tests.lm.tiny import HIBIKI
from tests.streaming.server_thread import server_thread
from tests.streaming.test_server_tasks import AlwaysEos, running

HIBIKI_PAIR = dataclasses.replace(HIBIKI, card=64, tokenizer_name="tok.model", **CODEC_FILES)
FRAME = 1920


@pytest.fixture(scope="module")
def hibiki_dir(tmp_path_factory) -> str:
    return save_model(tmp_path_factory.mktemp("tiny-hibiki"), HIBIKI_PAIR)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    t = np.arange(int(1.2 * 24000)) / 24000
    write_wav(path, (0.3 * np.sin(2 * np.pi * 200 * t * (1 + t))).astype(np.float32), 24000)
    return str(path)


def test_translate_writes_the_speech_and_its_timed_words(capsys, tmp_path, hibiki_dir, speech):
    out = tmp_path / "out.wav"
    assert main(["translate", speech, "--model", hibiki_dir, "--temp", "0", "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"text", "duration", "words"}
    pcm = read_audio(out, 24000)[0]
    assert pcm.size % FRAME == 0 and result["duration"] == pcm.size / 24000 > 0
    assert result["text"] == " ".join(w["text"] for w in result["words"])
    starts = [w["start"] for w in result["words"]]
    assert starts == sorted(starts) and all(0 <= w["start"] < w["stop"] <= result["duration"] + 0.08
                                            for w in result["words"])
    assert main(["translate", speech, "--model", hibiki_dir, "--temp", "0"]) == 0
    assert capsys.readouterr().out.strip() == result["text"]  # greedy: deterministic


class NeverEos(torch.nn.Module):
    """The model's text head with EOS (id 2) ruled out."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        logits[..., 2] = -float("inf")
        return logits


def test_the_translation_ends_at_the_models_eos_once_the_source_has(hibiki_dir, speech):
    lm = LM.from_pretrained(hibiki_dir)
    pcm = read_audio(speech, 24000, mono=True)[0]
    source_frames = 1 + -(-pcm.size // FRAME)  # one frame of silence first
    head = lm.text_linear
    lm.text_linear = NeverEos(head)
    never_ends, _ = translate(lm, pcm, temp=0.0)
    # the source, its end frame and the whole tail, less the steps before the first output
    max_delay = max(lm.config.delays)
    assert never_ends.size == (source_frames + 1 + round(TAIL_SECONDS / 0.08) - max_delay) * FRAME
    lm.text_linear = AlwaysEos(head.weight.shape[0])
    speech_out, words = translate(lm, pcm, temp=0.0)
    assert words == []  # EOS is not a word
    assert speech_out.size == (source_frames - max_delay) * FRAME  # ends on the end-of-input frame's step
    trailing = np.concatenate([pcm, np.zeros(3 * 24000, np.float32)])
    # 3 s of silence after the speech: the source ends 0.24 s (3 frames) after the speech instead
    assert translate(lm, trailing, temp=0.0)[0].size == speech_out.size + 3 * FRAME


def test_speech_end_cuts_trailing_silence_to_where_training_ends_a_source():
    g = np.random.default_rng(0)
    tone = 0.3 * np.sin(np.arange(24000) / 24000 * 2 * np.pi * 220).astype(np.float32)
    quiet = 1e-3 * g.standard_normal(2 * 24000).astype(np.float32)  # -50 dB: silence
    assert speech_end(np.concatenate([tone, quiet]), FRAME) == 24000 + FRAME // 2 + round(0.24 * 24000)
    assert speech_end(np.concatenate([quiet, tone]), FRAME) == 3 * 24000  # ends in speech: all of it
    assert speech_end(np.concatenate([tone, 0.1 * quiet[:3000]]), FRAME) == 27000  # less silence than the lag
    assert speech_end(np.zeros(5000, np.float32), FRAME) == 5000


def test_translate_errors(capsys, tmp_path, hibiki_dir, speech):
    (tmp_path / "stt").mkdir()
    stt_dir = save_model(tmp_path / "stt", STT_PAIR)
    assert main(["translate", speech, "--model", stt_dir]) == 2
    assert "not a translation model" in capsys.readouterr().err
    assert main(["translate", str(tmp_path / "missing.wav"), "--model", hibiki_dir]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["translate", speech, "--model", hibiki_dir, "-o", str(tmp_path / "no" / "out.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["translate", speech, "--model", hibiki_dir, "--url", "ws://127.0.0.1:9"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["translate", speech, "--url", "ws://127.0.0.1:9", "--cfg-coef", "3"]) == 2
    assert "local model" in capsys.readouterr().err
    assert main(["translate", speech, "--url", "ws://127.0.0.1:9", "--seed", "1"]) == 2
    assert "local model" in capsys.readouterr().err
    assert main(["translate", speech, "--url", "http://127.0.0.1:9"]) == 2
    assert "bad server URL" in capsys.readouterr().err


def translation_server(always_eos: bool):
    """A tiny translation server on its own thread and loop (server_thread); yields its port."""
    def prepare(server):
        if always_eos:
            server.engine.lm.text_linear = AlwaysEos(server.engine.lm.text_linear.weight.shape[0])

    return server_thread(running("translation"), prepare)


def test_translate_through_a_server_ends_when_the_server_closes(capsys, tmp_path, speech):
    with translation_server(always_eos=True) as port:
        out = tmp_path / "out.wav"
        assert main(["translate", speech, "--url", f"ws://127.0.0.1:{port}", "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == "" and result["duration"] > 0  # EOS says nothing; the server sent speech
    assert read_audio(out, 24000)[0].size == round(result["duration"] * 24000)


def test_a_busy_server_is_a_clear_error(capsys, speech):
    async def hold_both_slots(port):
        from antiphon.streaming.client import ChatClient, TRANSLATE_PATH

        url = f"ws://127.0.0.1:{port}"
        return [await ChatClient.connect(url, path=TRANSLATE_PATH) for _ in range(2)]

    with translation_server(always_eos=False) as port:
        loop = asyncio.new_event_loop()
        held = loop.run_until_complete(hold_both_slots(port))
        try:
            assert main(["translate", speech, "--url", f"ws://127.0.0.1:{port}"]) == 2
            assert "no free channels" in capsys.readouterr().err
        finally:
            for client in held:
                loop.run_until_complete(client.close())
            loop.close()

