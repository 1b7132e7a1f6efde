"""The embedded default models: present, within the size budget, loadable by name, and what every
command uses when --model is left out."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import torch

from antiphon.apps.cli import main
from antiphon.audio_io import read_audio
from antiphon.codec import Codec
from antiphon.embedded import MODELS, NAMES, embedded, resolve
from antiphon.errors import CheckpointError
from antiphon.lm import LM

BUDGET_BYTES = 30 * 1024 * 1024  # issue 5: 30 MB at most in all
SAMPLE = "demos/sample.wav"


def test_the_models_fit_the_size_budget():
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert 0 < total <= BUDGET_BYTES


def test_embedded_names_resolve_and_unknown_ones_are_clear_errors():
    assert resolve("embedded:stt") == embedded("stt") == str(MODELS / "stt")
    assert resolve("kyutai/stt-1b-en_fr") == "kyutai/stt-1b-en_fr"
    with pytest.raises(CheckpointError, match="no embedded model 'moshi'"):
        resolve("embedded:moshi")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "codec"])
def test_each_lm_loads_with_its_codec_and_tokenizer(name):
    lm = LM.from_pretrained(f"embedded:{name}")
    assert lm.config.model_type == {"translation": "hibiki", "dialogue": "moshi"}.get(name, name)
    assert lm.tokenizer.vocab_size() == lm.config.text_card
    assert lm.codec.cardinality == lm.config.card


def test_codec_roundtrip_uses_the_embedded_codec(tmp_path, capsys):
    assert main(["codec", "roundtrip", SAMPLE, str(tmp_path / "out.wav")]) == 0
    assert "1100 bit/s" in capsys.readouterr().out.replace(",", "")
    assert read_audio(tmp_path / "out.wav").shape[-1] == read_audio(SAMPLE).shape[-1]
    assert Codec.from_pretrained("embedded:codec").num_codebooks == 8


def test_transcribe_and_speak_use_the_embedded_models(tmp_path, capsys):
    assert main(["speak", "What is the capital of Italy?", "-o", str(tmp_path / "q.wav")]) == 0
    assert read_audio(tmp_path / "q.wav").shape[-1] > 24000 * 0.5
    capsys.readouterr()
    assert main(["transcribe", str(tmp_path / "q.wav")]) == 0
    assert capsys.readouterr().out.strip()  # words: how many are right is MODELS.md's business


def test_translate_uses_the_embedded_model(tmp_path, capsys):
    assert main(["translate", SAMPLE, "-o", str(tmp_path / "out.wav"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert read_audio(tmp_path / "out.wav").shape[-1] == round(result["duration"] * 24000) > 0


def test_the_dialogue_model_is_low_rank_adapters_on_the_translation_models_weights():
    config = json.loads((MODELS / "dialogue" / "config.json").read_text())
    assert config["lora"] is True and config["moshi_name"] == "../translation/model.safetensors"
    dialogue, translation = LM.from_pretrained("embedded:dialogue"), LM.from_pretrained("embedded:translation")
    ours, base = dialogue.state_dict(), translation.state_dict()
    changed = {k for k in base if not torch.equal(base[k], ours[k])}
    # the translation model's loader reads EOS as PAD (row 2 of the text table); dialogue has no EOS
    assert changed - {"text_emb.weight"} and all(k.startswith("transformer.") for k in changed - {"text_emb.weight"})
    assert torch.equal(ours["text_emb.weight"][3:], base["text_emb.weight"][3:])


def test_talk_with_the_embedded_dialogue_model_through_the_server():
    from antiphon.apps.talk_cmd import BLOCK, talk
    from tests.apps.test_talk import FakeMic, FakeSpeaker
    from tests.streaming.test_server_chat import running

    lm = LM.from_pretrained("embedded:dialogue")
    frames, mic, speaker = 8, FakeMic(8), FakeSpeaker()

    async def main():
        async with running((lm, lm.codec), slots=1, tokenizer=lm.tokenizer) as (_, url):
            return await talk(url, mic, speaker, out=io.StringIO())

    result = asyncio.run(asyncio.wait_for(main(), 120))
    assert result.frames_sent == frames and result.samples_played == frames * BLOCK  # it answers every frame
    assert all(np.isfinite(c).all() for c in speaker.chunks)
