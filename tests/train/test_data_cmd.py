"""`antiphon data`: voices, generate and show through the command line, and its errors."""

from __future__ import annotations

import json

import pytest

from antiphon.apps.cli import main


def test_voices_lists_espeak_in_both_languages(capsys):
    assert main(["data", "voices"]) == 0
    out = capsys.readouterr().out
    assert "espeak-ng en:" in out and "espeak-ng fr:" in out and "eval)" in out


def test_generate_then_show(tmp_path, capsys):
    out_dir = tmp_path / "t"
    args = ["data", "generate", "--kind", "translation", "--out", str(out_dir), "--count", "2",
            "--seed", "3", "--backends", "espeak-ng"]
    assert main(args) == 0
    assert "wrote 2 translation examples" in capsys.readouterr().out
    assert main(["data", "show", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 translation examples" in out and "seed 3" in out and "espeak-ng" in out
    assert main(args) == 2  # the directory is not empty any more
    assert "antiphon: error:" in capsys.readouterr().err


def test_generate_word_lists_records_the_share(tmp_path, capsys):
    out_dir = tmp_path / "w"
    assert main(["data", "generate", "--kind", "tts", "--out", str(out_dir), "--count", "2", "--backends",
                 "espeak-ng", "--word-lists", "1"]) == 0
    assert json.loads((out_dir / "manifest.json").read_text())["word_lists"] == 1.0
    rows = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    assert all(3 <= len(r["channels"][0]["words"]) <= 8 for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["data", "show", "/nonexistent/dataset"], "not a dataset directory"),
    (["data", "generate", "--kind", "asr", "--out", "{tmp}/x", "--backends", "sam"], "unknown backends"),
    (["data", "generate", "--kind", "dialogue", "--out", "{tmp}/x", "--word-lists", "0.3"], "asr and tts"),
])
def test_errors_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "antiphon: error:" in err and message in err
    assert not (tmp_path / "x").exists()  # arguments are checked before anything is written


def test_help_names_the_actions(capsys):
    assert main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(action in out for action in ("voices", "generate", "show"))
