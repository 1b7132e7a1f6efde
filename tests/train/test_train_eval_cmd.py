"""`antiphon train eval`: a run's end-of-run evaluation on any model, the embedded ones by default."""

from __future__ import annotations

import json

import pytest

from antiphon.apps.cli import main
from antiphon.train.evaluate import word_error_rate


def test_stt_eval_of_the_embedded_model_prints_and_writes_its_word_error_rate(speech_dir, tmp_path, capsys):
    out = tmp_path / "stt.json"
    assert main(["train", "eval", "stt", "--eval", speech_dir, "--eval-count", "2", "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["model"] == "embedded:stt"
    result = printed[speech_dir]
    assert result["examples"] == 2
    pairs = [(s["ref"], s["hyp"]) for s in result["samples"]]  # both examples: the WER is theirs
    assert result["wer"] == round(word_error_rate(pairs), 4)


def test_codec_eval_uses_the_codebooks_asked_for(speech_dir, capsys):
    assert main(["train", "eval", "codec", "embedded:codec", "--eval", speech_dir, "--eval-count", "1",
                 "--num-codebooks", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_codebooks"] == 4 and printed["kbps"] == pytest.approx(0.55)
    assert printed[speech_dir]["examples"] == 1 and 0 < printed[speech_dir]["stoi"] <= 1


@pytest.mark.parametrize("argv,message", [
    (["stt", "--eval", "/nonexistent/dataset"], "not a dataset directory"),
    (["translation", "--eval", "{speech}"], "holds tts examples; a translation evaluation reads translation"),
    (["dialogue", "--eval", "{speech}"], "reads dialogue datasets"),
    (["stt", "--eval", "{speech}", "--stt-model", "embedded:stt"], "--stt-model applies to a tts evaluation"),
    (["stt", "--eval", "{speech}", "--num-codebooks", "4"], "--num-codebooks applies to a codec"),
    (["codec", "--eval", "{speech}", "--num-codebooks", "99"], "num_codebooks must be in 1..8"),
    (["stt", "--eval", "{speech}", "--eval-count", "0"], "--eval-count must be at least 1"),
    (["stt", "--eval", "{speech}", "--json", "{tmp}/no/such/dir/x.json"], "--json: no directory"),
    (["stt", "{tmp}/no-model", "--eval", "{speech}"], "no-model"),
])
def test_errors_exit_2_with_a_message(speech_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{speech}", speech_dir).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["train", "eval", *argv]) == 2
    err = capsys.readouterr().err
    assert "antiphon: error:" in err and message in err
