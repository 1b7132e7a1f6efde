"""A small espeak-ng dataset shared by the trainer tests (espeak-ng is always installed for them)."""

from __future__ import annotations

import pytest

from antiphon.train.shards import write_dataset


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tts"
    write_dataset(out, "tts", count=6, seed=3, backends=("espeak-ng",), progress=False)
    return str(out)


@pytest.fixture(scope="session")
def dialogue_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dialogue"
    write_dataset(out, "dialogue", count=3, seed=3, backends=("espeak-ng",), progress=False)
    return str(out)


@pytest.fixture(scope="session")
def translation_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "translation"
    write_dataset(out, "translation", count=3, seed=3, backends=("espeak-ng",), progress=False)
    return str(out)
