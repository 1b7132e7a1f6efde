"""train/make_models.sh wires its runs together: every model a step reads was made by an earlier step,
and the embedded models are the last of each line (run with a stub in place of `antiphon`)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "train" / "make_models.sh"

STUB = """#!/usr/bin/env bash
echo "$*" >> "$LOG"
out=""; prev=""
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
case "$1 $2" in
  "data generate") mkdir -p "$out" && touch "$out/manifest.json" ;;
  "train codec"|"train lm") mkdir -p "$out/model" ;;
esac
"""


def _run_script(tmp_path: Path) -> list[str]:
    stub = tmp_path / "antiphon"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "log"
    env = os.environ | {"ANTIPHON": str(stub), "LOG": str(log)}
    subprocess.run(["bash", str(SCRIPT), str(tmp_path / "data"), str(tmp_path / "runs")], env=env, check=True,
                   capture_output=True, timeout=60)
    return log.read_text().splitlines()


def test_every_model_a_step_reads_was_made_before_it(tmp_path):
    made = set()
    commands = _run_script(tmp_path)
    for command in commands:
        words = command.split()
        reads = [w for flag, w in zip(words, words[1:]) if flag in ("--init", "--codec", "--stt-model", "--from-stt")]
        if words[:2] == ["train", "embed"]:
            reads.append(words[3])
        for model in reads:
            assert model in made, f"{command!r} reads {model}, which no earlier step made"
        if "--out" in words and words[0] == "train":
            made.add(words[words.index("--out") + 1] + "/model")
        if words[:2] == ["train", "embed"]:
            made.add(f"embedded:{words[2]}")
    embedded = {w[2]: w[3] for w in (c.split() for c in commands) if w[:2] == ["train", "embed"]}
    runs = str(tmp_path / "runs")
    assert embedded == {"codec": f"{runs}/codec-dec/model", "stt": f"{runs}/stt7/model", "tts": f"{runs}/tts2/model",
                        "translation": f"{runs}/translation/model", "dialogue": f"{runs}/dialogue/model"}
    translation = next(c for c in commands if "--task translation" in c)
    assert f"--from-stt {runs}/stt2/model" in translation  # it starts from the STT's second stage (MODELS.md)
    int8 = {c.split()[2] for c in commands if c.startswith("train embed") and c.endswith(" --int8")}
    assert int8 == {"tts", "translation"}  # the budget holds the models so (MODELS.md)
    dialogue = next(c for c in commands if "--task dialogue" in c)
    assert "--init embedded:translation --lora-rank" in dialogue  # adapters on the embedded translation model
    assert commands[-1] == f"train embed dialogue {runs}/dialogue/model --lora-of translation"


def test_the_language_models_read_the_codec_whose_decoder_is_embedded(tmp_path):
    commands = _run_script(tmp_path)
    decoder = next(c for c in commands if "--trainable decoder" in c)
    base = re.search(r"--init (\S+)", decoder).group(1)
    assert {re.search(r"--codec (\S+)", c).group(1) for c in commands if "--codec" in c} == {base}


def test_a_finished_dataset_is_not_made_again(tmp_path):
    first = [c for c in _run_script(tmp_path) if c.startswith("data generate")]
    assert len(first) == sum(line.startswith("dataset ") for line in SCRIPT.read_text().splitlines())
    (tmp_path / "log").unlink()
    assert [c for c in _run_script(tmp_path) if c.startswith("data generate")] == []
